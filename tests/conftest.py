"""Shared fixtures: a real database per test, created through the app factory and migrations.

By default each test gets its own SQLite file (a copy of a template migrated once per worker).
When DELIBERATE_TEST_DATABASE_URL is a PostgreSQL URL (``postgresql+psycopg://user:pw@host/db``;
the role needs CREATEDB), each test gets its own PostgreSQL database instead: a template
database is migrated once per xdist worker and every test's database is created from it with
``CREATE DATABASE ... TEMPLATE`` and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
from flask import g, has_app_context
from flask.testing import FlaskClient

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import Organisation, Role, Round, RoundState, Statement, User, utcnow
from deliberate.services.passwords import hash_password
from deliberate.services.statements import normalise_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()
PASSWORD = "correct horse battery"

TEST_DATABASE_URL = os.environ.get("DELIBERATE_TEST_DATABASE_URL", "").strip()
if TEST_DATABASE_URL.startswith(("postgresql://", "postgres://")):
    TEST_DATABASE_URL = "postgresql+psycopg://" + TEST_DATABASE_URL.split("://", 1)[1]
if TEST_DATABASE_URL and not TEST_DATABASE_URL.startswith("postgresql+psycopg://"):
    raise pytest.UsageError(
        "DELIBERATE_TEST_DATABASE_URL must be a postgresql+psycopg:// URL (or unset for SQLite)"
    )
ON_POSTGRES = bool(TEST_DATABASE_URL)
DATABASE_KIND = "postgresql" if ON_POSTGRES else "sqlite"
only_sqlite = pytest.mark.skipif(ON_POSTGRES, reason="SQLite-specific (running on PostgreSQL)")
only_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL-specific (running on SQLite)"
)


def pytest_report_header(config) -> str:
    if not ON_POSTGRES:
        return "database: SQLite (a file per test)"
    from sqlalchemy.engine import make_url

    url = make_url(TEST_DATABASE_URL)
    return (
        f"database: PostgreSQL at {url.host}:{url.port or 5432} (a database per test; "
        "the e2e browser tests always use their own SQLite file)"
    )


def make_config(tmp_path: Path, db_file: Path | str, **overrides) -> dict:
    """The test configuration; `db_file` is a SQLite file or a database URL."""
    uri = db_file if isinstance(db_file, str) and "://" in db_file else f"sqlite:///{db_file}"
    config = {
        "DELIBERATE_ENV": "testing",
        "SECRET_KEY": "test-secret-key",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SQLALCHEMY_DATABASE_URI": uri,
        "WTF_CSRF_ENABLED": False,
        "RATELIMIT_ENABLED": False,
        "ANALYSIS_WORKER": "off",
        "TESTING": True,
    }
    config.update(overrides)
    return config


class PostgresDatabases:
    """Creates and drops this worker's PostgreSQL test databases through an admin connection.

    CREATE DATABASE takes a good fraction of a second, so the next test's database is copied
    from the template in a background thread while the current test runs, and used databases
    are dropped in that thread too.
    """

    def __init__(self, url: str, worker: str):
        from concurrent.futures import ThreadPoolExecutor

        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self.url = make_url(url)
        self.worker = worker
        self.template = f"deliberate_tmpl_{worker}"
        self._n = count(1)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db")
        self._next = None  # a future: (name, url) of a database copied from the template
        self._pending_drops: list = []
        with self.admin.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version_num").scalar()
        # FILE_COPY (PostgreSQL 15+) copies a small template faster than the default WAL_LOG.
        self._strategy = " STRATEGY FILE_COPY" if int(version) >= 150000 else ""

    def url_for(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def _run(self, *statements: tuple[str, dict]) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            for sql, params in statements:
                conn.execute(text(sql), params)

    def drop(self, name: str) -> None:
        """Drop a database, ending its connections first."""
        self._run(
            (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND usename = current_user AND pid <> pg_backend_pid()",
                {"name": name},
            ),
            (f'DROP DATABASE IF EXISTS "{name}"', {}),
        )

    def drop_later(self, name: str) -> None:
        """Drop a database in the background thread."""
        self._pending_drops.append(self._background.submit(self.drop, name))

    def create(self, name: str, template: str | None = None) -> str:
        """Create an empty database (or a copy of `template`) and return its URL."""
        self.drop(name)  # a leftover of an interrupted run
        suffix = f' TEMPLATE "{template}"{self._strategy}' if template else ""
        self._run((f'CREATE DATABASE "{name}"{suffix}', {}))
        return self.url_for(name)

    def _copy(self) -> tuple[str, str]:
        name = f"deliberate_t_{self.worker}_{next(self._n)}"
        return name, self.create(name, self.template)

    def fresh(self) -> tuple[str, str]:
        """Return (name, url) of a new database copied from the migrated template."""
        ready = self._next or self._background.submit(self._copy)
        self._next = self._background.submit(self._copy)
        return ready.result()

    def close(self) -> None:
        """Drop every database this worker made, the template last."""
        leftover = self._next
        self._next = None
        if leftover is not None:
            self.drop(leftover.result()[0])
        for future in self._pending_drops:
            future.result()
        self._background.shutdown(wait=True)
        self.drop(self.template)
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> PostgresDatabases | None:
    """This worker's PostgreSQL database maker, or None when the tests run on SQLite."""
    if not ON_POSTGRES:
        yield None
        return
    # Unique per run as well as per worker, so that two runs against one server never drop
    # each other's databases (xdist gives every worker of a run the same run id).
    run = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"{os.getpid():x}")[:8]
    worker = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{run}"
    databases = PostgresDatabases(TEST_DATABASE_URL, worker)
    yield databases
    databases.close()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory, postgres_databases) -> Path | str:
    """A database migrated to head once per test worker, copied for each test.

    SQLite: the template file's path. PostgreSQL: the template database's name.
    """
    from flask_migrate import upgrade

    tmp = tmp_path_factory.mktemp("template")
    if postgres_databases is not None:
        target: Path | str = postgres_databases.create(postgres_databases.template)
        result: Path | str = postgres_databases.template
    else:
        target = result = tmp / "template.db"
    app = create_app(make_config(tmp, target))
    with app.app_context():
        upgrade()
        _db.engine.dispose()
    return result


@pytest.fixture
def new_database_url(tmp_path, template_db, postgres_databases):
    """Make fresh migrated databases of the run's kind: `new_database_url()` returns a URL.

    Each is a copy of the template (a file under tmp_path, or a PostgreSQL database created
    from the template database) and is dropped after the test.
    """
    made: list[str] = []
    numbers = count(1)

    def _new() -> str:
        if postgres_databases is None:
            n = next(numbers)
            db_file = tmp_path / ("test.db" if n == 1 else f"test{n}.db")
            shutil.copyfile(template_db, db_file)
            return f"sqlite:///{db_file}"
        name, url = postgres_databases.fresh()
        made.append(name)
        return url

    yield _new
    for name in made:
        postgres_databases.drop_later(name)


@pytest.fixture
def database_url(new_database_url) -> str:
    """The URL of this test's own fresh, migrated database (SQLite file or PostgreSQL)."""
    return new_database_url()


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def app_config(tmp_path, database_url) -> dict:
    """The config of the test's app; a test may change it before asking for `app`."""
    return make_config(tmp_path, database_url)


class RequestIsolatedClient(FlaskClient):
    """A test client whose requests never see the user logged in by an earlier request.

    The `app` fixture keeps one app context open for the whole test and Flask reuses it for
    requests, so `g` (where Flask-Login caches the current user) would otherwise carry the
    logged-in user over from one request, or one client, to the next.
    """

    # Flask-Login caches the user in g._login_user; Flask-WTF caches the session's signed CSRF
    # token in g.csrf_token (so another client would be handed a token of the wrong session).
    PER_REQUEST_G = ("_login_user", "csrf_token")

    def open(self, *args, **kwargs):
        if has_app_context():
            for name in self.PER_REQUEST_G:
                g.pop(name, None)
        try:
            return super().open(*args, **kwargs)
        finally:
            if has_app_context():
                for name in self.PER_REQUEST_G:
                    g.pop(name, None)


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
        question = fields.pop("question", f"Question {next(self._n)}?")
        round_ = Round(question=question, state=str(state), **fields)
        self.db.session.add(round_)
        self.db.session.flush()
        for text in statements:
            self.db.session.add(
                Statement(
                    round_id=round_.id,
                    text=text,
                    normalised_text=" ".join(text.lower().split()),
                    origin="seed",
                    moderation_state="accepted",
                )
            )
        self.db.session.commit()
        return round_


def add_statements_in_order(
    db, round_: Round, texts, *, state: str = "pending", start: datetime | None = None
) -> list[Statement]:
    """Members' statements in `round_`, in `state`, written one second apart from `start`
    (default: now), so that their order by time is known (for pages of long lists)."""
    start = start or utcnow()
    made = [
        Statement(
            round_id=round_.id,
            text=text,
            normalised_text=normalise_text(text),
            origin="member",
            moderation_state=state,
            created_at=start + timedelta(seconds=i),
        )
        for i, text in enumerate(texts)
    ]
    db.session.add_all(made)
    db.session.commit()
    return made


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
