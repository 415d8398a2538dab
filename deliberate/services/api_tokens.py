"""Personal API tokens: created, listed and revoked by their user; they act as that user.

A token is "dlb_" followed by 43 URL-safe random characters (32 bytes). Only its SHA-256 hash is
stored, so a token is found by hashing what the client sent and looking the hash up (an index
lookup, never a comparison of secrets in Python). The token itself is shown once, at creation.

A token authenticates as its user for the JSON API (/api/v1) only, and only while it is not
revoked, not expired, and its user is active and not erased. Tokens are credentials of their
own: changing the password or "log out everywhere" ends browser sessions but leaves tokens
working (they are listed on the tokens page and revoked there one by one). Deactivating an
account stops its tokens at once (checked on every request); erasing an account revokes them
(`revoke_all`, called by the erasure service).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError

from ..database import write_intent
from ..extensions import db
from ..models import ApiToken, User, utcnow
from . import audit
from .authz import require_user
from .errors import Conflict, NotFound, ValidationError

TOKEN_PREFIX = "dlb_"  # noqa: S105 - a public marker, not a secret
# secrets.token_urlsafe(32) gives 43 characters; allow some slack, refuse anything absurd.
_TOKEN_RE = re.compile(r"dlb_[A-Za-z0-9_-]{20,100}")
PREFIX_LENGTH = 12  # "dlb_" and 8 random characters: enough to tell tokens apart
NAME_MAX = 80
MAX_ACTIVE_TOKENS = 25
EXPIRY_MAX_DAYS = 3650
# last_used_at is written at most this often per token, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: the row, and the secret to show the user once."""

    token: ApiToken
    secret: str


def hash_token(secret: str) -> str:
    """Return the SHA-256 hex digest stored for a token."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_status(token: ApiToken, now: datetime | None = None) -> str:
    """Describe a token: "active", "expired" or "revoked"."""
    now = now or utcnow()
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def _clean_name(name: object) -> str:
    text = " ".join(str(name or "").split()) if isinstance(name, str) else ""
    if not text:
        raise ValidationError("Give the token a name, such as the tool that will use it.")
    if len(text) > NAME_MAX:
        raise ValidationError(
            f"A token's name can be at most {NAME_MAX} characters (yours has {len(text)})."
        )
    return text


def _active_filter(now: datetime):
    return (
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
    )


def create_token(
    actor: User | None,
    name: str,
    expires_in_days: int | None = None,
    *,
    now: datetime | None = None,
) -> IssuedToken:
    """Create a personal API token for the acting user; the secret is returned only here."""
    user = require_user(actor)
    if user.erased_at is not None:
        raise ValidationError("This account was erased.")
    now = now or utcnow()
    name = _clean_name(name)
    expires_at = None
    if expires_in_days is not None:
        if type(expires_in_days) is not int or not 1 <= expires_in_days <= EXPIRY_MAX_DAYS:
            raise ValidationError(f"A token expires after 1 to {EXPIRY_MAX_DAYS} days, or never.")
        expires_at = now + timedelta(days=expires_in_days)
    active = list(
        db.session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, *_active_filter(now))
        )
    )
    if any(t.name.casefold() == name.casefold() for t in active):
        raise Conflict(f"You already have a token called “{name}”: choose another name.")
    if len(active) >= MAX_ACTIVE_TOKENS:
        raise Conflict(
            f"You have {MAX_ACTIVE_TOKENS} tokens already: revoke one you no longer use first."
        )
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[:PREFIX_LENGTH],
        created_at=now,
        expires_at=expires_at,
    )
    db.session.add(token)
    db.session.flush()
    audit.record(
        user,
        "api_token.create",
        target_type="api_token",
        target_id=token.id,
        name=name,
        prefix=token.prefix,
        expires_at=expires_at.isoformat() if expires_at else None,
    )
    db.session.commit()
    return IssuedToken(token=token, secret=secret)


def list_tokens(actor: User | None) -> list[ApiToken]:
    """Return the acting user's tokens, newest first (revoked and expired ones included)."""
    user = require_user(actor)
    return tokens_of(user)


def revoke_token(actor: User | None, token_id: int, *, now: datetime | None = None) -> ApiToken:
    """Revoke one of the acting user's tokens; it stops working at once."""
    user = require_user(actor)
    token = db.session.get(ApiToken, token_id) if _valid_id(token_id) else None
    if token is None or token.user_id != user.id:
        raise NotFound("No such token.")
    if token.revoked_at is not None:
        raise Conflict("This token is already revoked.")
    token.revoked_at = now or utcnow()
    audit.record(
        user,
        "api_token.revoke",
        target_type="api_token",
        target_id=token.id,
        name=token.name,
        prefix=token.prefix,
    )
    db.session.commit()
    return token


def _valid_id(value: object) -> bool:
    from ..models import is_valid_id

    return is_valid_id(value)


def authenticate(secret: object, *, now: datetime | None = None) -> User | None:
    """Return the user a presented token acts for, or None for any token that does not work.

    Refused: malformed, unknown, revoked or expired tokens, and tokens of deactivated or erased
    users. Records when the token was last used, at most once a minute.
    """
    if not isinstance(secret, str) or not _TOKEN_RE.fullmatch(secret):
        return None
    now = now or utcnow()
    token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or token_status(token, now) != "active":
        return None
    user = token.user
    if user is None or not user.is_active or user.erased_at is not None:
        return None
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        _touch(token.id, now)
        user = db.session.get(User, token.user_id)
    return user


def _touch(token_id: int, now: datetime) -> None:
    """Record the token's use in a short write transaction of its own (best effort).

    The reading transaction ends first, so that on SQLite the UPDATE begins its own
    transaction with the write lock (BEGIN IMMEDIATE) rather than upgrading a read.
    """
    db.session.commit()
    try:
        with write_intent(True):
            db.session.execute(
                update(ApiToken)
                .where(
                    ApiToken.id == token_id,
                    or_(
                        ApiToken.last_used_at.is_(None),
                        ApiToken.last_used_at < now - LAST_USED_RESOLUTION,
                    ),
                )
                .values(last_used_at=now)
            )
            db.session.commit()
    except OperationalError:  # a busy database: the request matters more than the timestamp
        db.session.rollback()


def tokens_of(user: User) -> list[ApiToken]:
    """Return every token of the user, newest first (for their data download; no checks)."""
    return list(
        db.session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id)
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def revoke_all(user: User, *, now: datetime | None = None) -> int:
    """Revoke every unrevoked token of the user in the current transaction; the caller commits.

    For account erasure and deactivation. Returns how many tokens were revoked.
    """
    result = db.session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount or 0)


__all__ = [
    "TOKEN_PREFIX",
    "IssuedToken",
    "authenticate",
    "create_token",
    "hash_token",
    "list_tokens",
    "revoke_all",
    "revoke_token",
    "token_status",
    "tokens_of",
]
