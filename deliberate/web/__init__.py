"""The web layer: blueprints, login, error pages, template helpers."""

from __future__ import annotations

from flask import Flask, redirect, request, url_for
from flask_login import current_user
from sqlalchemy import bindparam, inspect, select
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from werkzeug.routing import IntegerConverter

from ..database import set_write_intent
from ..extensions import db, login_manager
from ..models import MAX_ID, User
from ..ratelimit import add_counted_limit_headers
from .errors import init_error_handlers
from .rendering import init_template_helpers

_USER_ATTRIBUTES = [(prop.key, prop.columns[0]) for prop in inspect(User).column_attrs]
_USER_KEYS = tuple(key for key, _ in _USER_ATTRIBUTES)
_USER_ROW = select(*(column for _, column in _USER_ATTRIBUTES)).where(
    inspect(User).primary_key[0] == bindparam("user_id")
)
_new_user = inspect(User).class_manager.new_instance


def _user_from_row(row) -> User:
    """Put a loaded users row into the session as a User, without the ORM query machinery
    (the user is loaded on every request: this costs a fraction of session.get)."""
    user = _new_user()
    # Into the instance's dict, as the ORM's loader does (no attribute events: nothing is
    # "changed"); make_transient_to_detached then marks every column loaded and committed.
    user.__dict__.update(zip(_USER_KEYS, row, strict=True))
    make_transient_to_detached(user)  # as if just loaded: no pending changes
    db.session.add(user)
    return user


@login_manager.user_loader
def _load_user(session_id: str) -> User | None:
    """Load the user from 'id:auth_version'; a stale version (password changed) logs out."""
    try:
        user_id, version = (int(part) for part in session_id.split(":", 1))
    except (ValueError, AttributeError):
        return None
    if not 0 < user_id <= MAX_ID:
        return None
    if identity_key(User, user_id) in db.session.identity_map:
        user = db.session.get(User, user_id)  # already in this session (tests, CLI)
    else:
        row = db.session.connection().execute(_USER_ROW, {"user_id": user_id}).first()
        user = None if row is None else _user_from_row(row)
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
    # The JSON API for integrations, its OpenAPI document and reference page, API tokens.
    from . import api_v1, openapi, tokens

    app.register_blueprint(api_v1.bp, url_prefix="/api/v1")
    app.register_blueprint(openapi.bp, url_prefix="/api")
    app.register_blueprint(tokens.bp)
    from . import account

    app.register_blueprint(account.bp)  # /account/data, /account/erase, people/<id>/erase

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

    # A vote the fast path counted and then handed to the view (web/fast_vote.py).
    app.after_request(add_counted_limit_headers)

    @app.teardown_request
    def _reset_write_intent(_exc):
        set_write_intent(True)

    init_error_handlers(app)
    init_template_helpers(app)
