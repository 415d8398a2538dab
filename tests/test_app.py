"""The app factory, configuration and security headers."""

from __future__ import annotations

import pytest

from deliberate import create_app
from deliberate.config import ConfigError
from tests.conftest import only_postgres, only_sqlite


def test_production_requires_secret_key(tmp_path, monkeypatch):
    monkeypatch.delenv("DELIBERATE_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="DELIBERATE_SECRET_KEY"):
        create_app({"DELIBERATE_ENV": "production", "INSTANCE_PATH": str(tmp_path)})


def test_development_generates_a_secret_key_into_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("DELIBERATE_SECRET_KEY", raising=False)
    first = create_app(
        {"DELIBERATE_ENV": "development", "INSTANCE_PATH": str(tmp_path), "ANALYSIS_WORKER": "off"}
    )
    second = create_app(
        {"DELIBERATE_ENV": "development", "INSTANCE_PATH": str(tmp_path), "ANALYSIS_WORKER": "off"}
    )
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert len(first.config["SECRET_KEY"]) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_security_headers_on_every_response(client):
    response = client.get("/healthz")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_unknown_page_is_a_clear_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "no page at this address" in response.get_data(as_text=True)


@only_sqlite
def test_sqlite_pragmas(app, db):
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15000


@only_postgres
def test_postgres_schema_and_session(app, db):
    """On PostgreSQL: UTF-8, foreign keys enforced, timestamps stored as timestamptz in UTC."""
    from datetime import UTC, datetime, timedelta, timezone

    import sqlalchemy as sa

    from deliberate.models import Organisation

    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW server_encoding").scalar() == "UTF8"
        naive = (
            conn.exec_driver_sql(
                "SELECT table_name || '.' || column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type = 'timestamp without time zone'"
            )
            .scalars()
            .all()
        )
        assert naive == []
        fks = conn.exec_driver_sql(
            "SELECT count(*) FROM information_schema.table_constraints "
            "WHERE constraint_type = 'FOREIGN KEY' AND table_schema = 'public'"
        ).scalar()
        assert fks > 0
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users (email, name, role, organisation_id, created_at) "
            "VALUES ('x@example.org', 'X', 'member', 2147483000, now())"
        )
    # An aware time in another zone comes back as the same instant, tagged UTC, whatever
    # the session's time zone.
    when = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5)))
    org = Organisation(name="Zone test", created_at=when)
    db.session.add(org)
    db.session.commit()
    db.session.execute(sa.text("SET TIME ZONE 'America/New_York'"))
    db.session.expire_all()
    assert org.created_at == when and org.created_at.tzinfo == UTC
    db.session.rollback()


def test_migrations_match_the_models(app, db):
    """The committed migrations create exactly the schema the models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


def test_ids_beyond_the_database_range_are_not_found(client):
    """An id too large for the database is a 404 on every route, never an overflow error."""
    from flask import current_app

    huge = 10**20
    rules = [r for r in current_app.url_map.iter_rules() if "<int:" in r.rule]
    assert rules, "expected routes with integer ids"
    for rule in rules:
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<int:{name}>", str(huge))
        if "<" in path:
            continue  # other kinds of arguments: covered by their own tests
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method)
            assert response.status_code == 404, (method, path, response.status_code)


def test_ids_just_beyond_32_bits_are_refused_cleanly(client, db, factory, login_as):
    """2**31 fits SQLite's integers but not PostgreSQL's: form, JSON and query ids are 4xx."""
    from deliberate.models import Role, Vote

    too_big = 2**31
    org = factory.organisation()
    facilitator = factory.user(Role.FACILITATOR, organisation=org)
    member = factory.user(Role.MEMBER, organisation=org)
    round_ = factory.round(statements=["One statement"])

    login_as(member)
    json_vote = client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": too_big, "value": 1}
    )
    assert json_vote.status_code == 404, json_vote.get_data(as_text=True)[:300]
    form_vote = client.post(
        f"/rounds/{round_.id}/vote", data={"statement_id": str(too_big), "value": "1"}
    )
    assert form_vote.status_code == 303
    assert db.session.query(Vote).count() == 0

    login_as(facilitator)
    people = client.get(f"/facilitate/people/?organisation={too_big}")
    assert people.status_code == 200
    audit = client.get(f"/facilitate/audit?round={too_big}&before={too_big}")
    assert audit.status_code == 200
