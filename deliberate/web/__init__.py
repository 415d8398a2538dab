"""The web layer: blueprints, login, error pages, template helpers."""

from __future__ import annotations

from flask import Flask, redirect, request, url_for
from flask_login import current_user
from werkzeug.routing import IntegerConverter

from ..database import set_write_intent
from ..extensions import db, login_manager
from ..models import MAX_ID, User
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


class IdConverter(IntegerConverter):
    """Integer URL parts limited to the database's id range: a larger one is a 404, not a 500."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def init_web(app: Flask) -> None:
    from . import api, auth, exports, facilitate, member, people, report, rounds_over_time

    # Before any blueprint registers its rules: every <int:...> in a route is bounded.
    app.url_map.converters["int"] = IdConverter

    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"

    app.register_blueprint(auth.bp)
    app.register_blueprint(member.bp)
    app.register_blueprint(facilitate.bp, url_prefix="/facilitate")
    app.register_blueprint(people.bp, url_prefix="/facilitate/people")
    app.register_blueprint(api.bp, url_prefix="/api")
    app.register_blueprint(report.bp)
    app.register_blueprint(rounds_over_time.bp)  # url_prefix /facilitate
    app.register_blueprint(exports.bp)

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

    @app.before_request
    def _declare_write_intent():
        # Safe methods only read: on SQLite they then never wait for, or hold, the write lock.
        set_write_intent(request.method not in ("GET", "HEAD", "OPTIONS"))

    @app.teardown_request
    def _reset_write_intent(_exc):
        set_write_intent(True)

    init_error_handlers(app)
    init_template_helpers(app)
