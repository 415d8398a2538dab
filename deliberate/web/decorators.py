"""View decorators and helpers."""

from __future__ import annotations

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from ..database import set_write_intent
from ..models import User

__all__ = ["actor", "login_required", "reads_first", "roles_required"]


def actor() -> User | None:
    """The acting user for services (None when anonymous)."""
    return current_user._get_current_object() if current_user.is_authenticated else None


def roles_required(*roles: str):
    """Log-in required, then 403 unless the user has one of the roles (admins always pass).

    A convenience for views; the services check authorisation again.
    """

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if current_user.role != "admin" and current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def reads_first(view):
    """Begin the request's transactions as reads (on SQLite a plain BEGIN, no write lock).

    For views whose service takes the write lock itself, for its write only (the vote; the
    password services, which hash while nothing is held): loading the user and other reads
    then never wait for it, nor hold it.
    """

    @wraps(view)
    def wrapped(*args, **kwargs):
        set_write_intent(False)  # web/__init__.py resets it after the request
        return view(*args, **kwargs)

    return wrapped
