"""deliberate: a consensus-building deliberation platform for coalitions."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    """Create the Flask app: configuration, extensions, blueprints, CLI."""
    from .config import build_config
    from .database import configure_sqlite
    from .extensions import csrf, db, limiter, login_manager, migrate
    from .security import init_security_headers
    from .web import init_web

    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    instance_path = Path((config or {}).get("INSTANCE_PATH") or app.instance_path)
    app.instance_path = str(instance_path)
    app.config.from_mapping(build_config(instance_path, config))
    instance_path.mkdir(parents=True, exist_ok=True)

    if not str(app.config["SQLALCHEMY_DATABASE_URI"]).startswith("sqlite"):
        # A server may close pooled connections (restart, idle timeout): test each on checkout.
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("pool_pre_ping", True)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True)
    csrf.init_app(app)
    if str(app.config.get("RATELIMIT_STORAGE_URI", "")).startswith("database:"):
        app.config.setdefault(
            "RATELIMIT_STORAGE_OPTIONS", {"sync_seconds": app.config["RATELIMIT_SYNC_SECONDS"]}
        )
    limiter.init_app(app)
    login_manager.init_app(app)
    with app.app_context():
        configure_sqlite(db.engine)

    from .web.fast_vote import install as install_fast_vote_path

    install_fast_vote_path(app)  # before ProxyFix wraps the app (init_security_headers)
    init_security_headers(app)
    init_web(app)

    from .cli import register_cli

    register_cli(app)

    from .worker import init_worker

    init_worker(app)
    return app
