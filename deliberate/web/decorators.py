"""View decorators and helpers."""

from __future__ import annotations

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from ..models import User

__all__ = ["actor", "login_required", "roles_required"]


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
