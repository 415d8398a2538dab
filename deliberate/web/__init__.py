"""The web layer: blueprints, login, error pages, template helpers."""

from __future__ import annotations

from flask import Flask, redirect, url_for
from flask_login import current_user

from ..extensions import db, login_manager
from ..models import User
from .errors import init_error_handlers
from .rendering import init_template_helpers


@login_manager.user_loader
def _load_user(session_id: str) -> User | None:
    """Load the user from 'id:auth_version'; a stale version (password changed) logs out."""
    try:
        user_id, version = (int(part) for part in session_id.split(":", 1))
    except (ValueError, AttributeError):
        return None
    user = db.session.get(User, user_id)
    if user is None or user.auth_version != version or not user.is_active:
        return None
    return user


def init_web(app: Flask) -> None:
    from . import api, auth, facilitate, member, people

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    app.register_blueprint(auth.bp)
    app.register_blueprint(member.bp)
    app.register_blueprint(facilitate.bp, url_prefix="/facilitate")
    app.register_blueprint(people.bp, url_prefix="/facilitate/people")
    app.register_blueprint(api.bp, url_prefix="/api")

    @app.get("/")
    def index():
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login"))
        if current_user.is_facilitator:
            return redirect(url_for("facilitate.rounds"))
        return redirect(url_for("member.rounds"))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    init_error_handlers(app)
    init_template_helpers(app)
