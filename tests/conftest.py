"""Shared fixtures: a real SQLite file per test, created through the app factory and migrations."""

from __future__ import annotations

import shutil
from itertools import count
from pathlib import Path

import pytest
from flask import g, has_app_context
from flask.testing import FlaskClient

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import Organisation, Role, Round, RoundState, Statement, User
from deliberate.services.passwords import hash_password

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()
PASSWORD = "correct horse battery"


def make_config(tmp_path: Path, db_file: Path, **overrides) -> dict:
    config = {
        "DELIBERATE_ENV": "testing",
        "SECRET_KEY": "test-secret-key",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_file}",
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "ANALYSIS_WORKER": "off",
        "TESTING": True,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """A database file migrated to head once per test worker, copied for each test."""
    from flask_migrate import upgrade

    tmp = tmp_path_factory.mktemp("template")
    db_file = tmp / "template.db"
    app = create_app(make_config(tmp, db_file))
    with app.app_context():
        upgrade()
        _db.engine.dispose()
    return db_file


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def app_config(tmp_path, template_db) -> dict:
    """The config of the test's app; a test may change it before asking for `app`."""
    db_file = tmp_path / "test.db"
    shutil.copyfile(template_db, db_file)
    return make_config(tmp_path, db_file)


class RequestIsolatedClient(FlaskClient):
    """A test client whose requests never see the user logged in by an earlier request.

    The `app` fixture keeps one app context open for the whole test and Flask reuses it for
    requests, so `g` (where Flask-Login caches the current user) would otherwise carry the
    logged-in user over from one request, or one client, to the next.
    """

    def open(self, *args, **kwargs):
        if has_app_context():
            g.pop("_login_user", None)
        try:
            return super().open(*args, **kwargs)
        finally:
            if has_app_context():
                g.pop("_login_user", None)


@pytest.fixture
def app(app_config):
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        yield app
        _db.session.remove()
        _db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return _db


class Factory:
    """Makes rows for tests with sensible defaults."""

    def __init__(self, db, password_hash: str):
        self.db = db
        self.password_hash = password_hash
        self._n = count(1)

    def organisation(self, name: str | None = None) -> Organisation:
        org = Organisation(name=name or f"Organisation {next(self._n)}")
        self.db.session.add(org)
        self.db.session.commit()
        return org

    def user(
        self,
        role: Role | str = Role.MEMBER,
        *,
        organisation: Organisation | None = None,
        email: str | None = None,
        name: str | None = None,
        password: bool = True,
    ) -> User:
        n = next(self._n)
        user = User(
            email=email or f"user{n}@example.org",
            name=name or f"User {n}",
            role=str(role),
            organisation_id=organisation.id if organisation else None,
            password_hash=self.password_hash if password else None,
        )
        self.db.session.add(user)
        self.db.session.commit()
        return user

    def round(self, *, state: RoundState | str = RoundState.OPEN, statements=(), **fields) -> Round:
        round_ = Round(question=fields.pop("question", f"Question {next(self._n)}?"), state=str(state),
                       **fields)
        self.db.session.add(round_)
        self.db.session.flush()
        for text in statements:
            self.db.session.add(
                Statement(round_id=round_.id, text=text, normalised_text=" ".join(text.lower().split()),
                          origin="seed", moderation_state="accepted")
            )
        self.db.session.commit()
        return round_


@pytest.fixture
def factory(db, password_hash) -> Factory:
    return Factory(db, password_hash)


def login(client, user: User, password: str = PASSWORD):
    """Log in through the real login form (CSRF off unless the test turned it on)."""
    return client.post(
        "/login", data={"email": user.email, "password": password}, follow_redirects=False
    )


@pytest.fixture
def login_as(client):
    def _login(user: User):
        response = login(client, user)
        assert response.status_code in (302, 303), response.get_data(as_text=True)[:500]
        return client

    return _login
