"""Configuration: defaults, DELIBERATE_* environment variables and the instance folder."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from .ratelimit import limits_from_environment

ENVIRONMENTS = ("development", "production", "testing")


class ConfigError(RuntimeError):
    """The configuration cannot be used (for example no SECRET_KEY in production)."""


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_json_object(name: str) -> dict | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f'{name} must be a JSON object, such as {{"bootstrap_replicates": 0}}')
    return value


def _dev_secret_key(instance_path: Path) -> str:
    """Return the development secret key, generating it into instance/ on first use."""
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # Created readable by the owner only: the key signs sessions and CSRF tokens.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def build_config(instance_path: Path, overrides: dict | None = None) -> dict:
    """Build the app configuration from defaults, the environment and explicit overrides."""
    overrides = dict(overrides or {})
    env = overrides.get("DELIBERATE_ENV") or os.environ.get("DELIBERATE_ENV", "production")
    if env not in ENVIRONMENTS:
        raise ConfigError(f"DELIBERATE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}")
    production = env == "production"
    database_url = os.environ.get(
        "DELIBERATE_DATABASE_URL", f"sqlite:///{instance_path / 'deliberate.db'}"
    )
    config: dict = {
        "DELIBERATE_ENV": env,
        "SQLALCHEMY_DATABASE_URI": database_url,
        # pool_pre_ping is added for server databases by create_app (an SQLite file cannot
        # drop a pooled connection, so pinging it would only cost a statement per request).
        "SQLALCHEMY_ENGINE_OPTIONS": {},
        # Sessions: HttpOnly and SameSite always; Secure whenever we are not in development.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": _env_bool("DELIBERATE_SECURE_COOKIES", production),
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": _env_bool("DELIBERATE_SECURE_COOKIES", production),
        "PERMANENT_SESSION_LIFETIME": 60 * 60 * 12,
        # Bodies larger than this are refused with 413 before any view runs.
        "MAX_CONTENT_LENGTH": int(os.environ.get("DELIBERATE_MAX_CONTENT_LENGTH", 2 * 1024 * 1024)),
        "WTF_CSRF_ENABLED": True,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "RATELIMIT_ENABLED": _env_bool("DELIBERATE_RATELIMIT_ENABLED", True),
        # Ordinary votes answered in front of the Flask stack (deliberate/web/fast_vote.py);
        # off: every vote goes through the view (same answers, about three times the CPU).
        "FAST_VOTE_PATH": _env_bool("DELIBERATE_FAST_VOTE", True),
        # Rate-limit counters: by default in the app's database, shared by every process
        # ("database://"); or "redis://host:6379/0", or "memory://" (per process). The limit
        # values (RATELIMIT_LOGIN, RATELIMIT_VOTE_PER_ADDRESS, ...) come from
        # DELIBERATE_RATELIMIT_* variables; see deliberate/ratelimit.py and docs/security.md.
        "RATELIMIT_STORAGE_URI": os.environ.get("DELIBERATE_RATELIMIT_STORAGE_URI")
        or "database://",
        "RATELIMIT_HEADERS_ENABLED": True,
        # With database:// counters: a process writes its counts every this many seconds
        # (write-behind; 0 writes each count at once). See DatabaseStorage in ratelimit.py.
        "RATELIMIT_SYNC_SECONDS": float(
            os.environ.get("DELIBERATE_RATELIMIT_SYNC_SECONDS") or 0.25
        ),
        **limits_from_environment(os.environ),
        # Behind N reverse proxies that set X-Forwarded-For/-Proto, trust the last N hops for
        # the client's address (per-address limits) and the scheme (HSTS, secure cookies).
        "PROXY_FIX": int(os.environ.get("DELIBERATE_PROXY_FIX") or 0),
        "INVITATION_TTL_HOURS": int(os.environ.get("DELIBERATE_INVITATION_TTL_HOURS", 24 * 14)),
        "RESET_TTL_HOURS": int(os.environ.get("DELIBERATE_RESET_TTL_HOURS", 24)),
        "BASE_URL": os.environ.get("DELIBERATE_BASE_URL", "http://127.0.0.1:5000"),
        # Erasures listed outside the database, re-applied after a restore (None: the instance
        # folder's erasures.jsonl); see docs/data-protection.md.
        "ERASURE_LEDGER": os.environ.get("DELIBERATE_ERASURE_LEDGER") or None,
        # The analysis worker: "thread" runs inside the app process; "off" leaves it to
        # `deliberate worker` processes (or to nobody, in tests that drive it by hand).
        "ANALYSIS_WORKER": os.environ.get("DELIBERATE_ANALYSIS_WORKER", "thread"),
        "ANALYSIS_DEBOUNCE_SECONDS": float(os.environ.get("DELIBERATE_ANALYSIS_DEBOUNCE", 3.0)),
        # How long a worker's claim on a round holds unless renewed: a killed worker's round
        # is taken over after at most this (docs/operations.md).
        "ANALYSIS_LEASE_SECONDS": float(os.environ.get("DELIBERATE_ANALYSIS_LEASE", 30.0)),
        # Overrides of the analysis parameters, a JSON object (e.g. {"bootstrap_replicates": 0}).
        "ANALYSIS_PARAMS": _env_json_object("DELIBERATE_ANALYSIS_PARAMS"),
    }
    secret = os.environ.get("DELIBERATE_SECRET_KEY")
    if secret:
        config["SECRET_KEY"] = secret
    config.update(overrides)
    if not config.get("SECRET_KEY"):
        if config["DELIBERATE_ENV"] == "production":
            raise ConfigError(
                "DELIBERATE_SECRET_KEY must be set in production "
                "(or set DELIBERATE_ENV=development to generate one into instance/)"
            )
        config["SECRET_KEY"] = _dev_secret_key(instance_path)
    return config
