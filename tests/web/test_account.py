"""The account data pages: download, erasure (own and by an admin), and the retention setting."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from deliberate.models import AuditEvent, Role, Round, RoundState, Statement, User
from deliberate.services import voting
from tests.conftest import PASSWORD, login, only_sqlite
from tests.lock_probe import WriteLockProbe

XSS_NAME = '<script>alert("x")</script> Zoë'
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@pytest.fixture
def member(factory):
    org = factory.organisation("Welcome Group")
    return factory.user(Role.MEMBER, organisation=org, name=XSS_NAME, email="zoe@example.org")


def _erased(db, user_id: int) -> bool:
    db.session.expire_all()
    return db.session.get(User, user_id).erased_at is not None


# --- download ------------------------------------------------------------------------------


def test_data_page_explains_and_links_the_download(client, member, login_as):
    assert client.get("/account/data").status_code == 302  # anonymous: to the login page
    login_as(member)
    page = client.get("/account/data")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert 'href="/account/data/download"' in body and "JSON" in body
    assert 'href="/account/data"' in client.get("/account").get_data(as_text=True)


def test_download_is_an_uncached_json_attachment(client, db, factory, member, login_as):
    round_ = factory.round(statements=["<b>Bold</b> statement text"])
    voting.cast_vote(member, round_.statements[0].id, -1)
    login_as(member)
    response = client.get("/account/data/download")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert ".json" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    data = json.loads(response.get_data(as_text=True))
    assert data["account"]["email"] == "zoe@example.org"
    assert data["account"]["name"] == XSS_NAME  # data, in a file that is never rendered
    [entry] = data["rounds"]
    assert entry["votes"][0]["statement"] == "<b>Bold</b> statement text"
    assert entry["votes"][0]["value"] == -1


# --- erasing one's own account -------------------------------------------------------------


def test_erasing_own_account_needs_password_and_confirmation(client, db, member, login_as):
    login_as(member)
    page = client.get("/account/erase").get_data(as_text=True)
    assert "cannot be undone" in page and XSS_NAME not in page
    for data in (
        {"password": "not my password", "confirm": "yes"},
        {"password": PASSWORD},
        {"password": PASSWORD, "confirm": "on"},
        {"confirm": "yes"},
        {"password": "x" * 100_000, "confirm": "yes"},
    ):
        response = client.post("/account/erase", data=data)
        assert response.status_code == 400, data
        assert "<main" in response.get_data(as_text=True)
        assert not _erased(db, member.id)
    assert client.get("/account").status_code == 200  # still logged in


def test_erasing_own_account(client, db, member, login_as):
    login_as(member)
    response = client.post("/account/erase", data={"password": PASSWORD, "confirm": "yes"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    assert _erased(db, member.id)
    assert client.get("/account").status_code == 302  # logged out
    again = login(client, member)
    assert again.status_code == 400  # the old email and password no longer work
    user = db.session.get(User, member.id)
    assert user.email.endswith("@erased.invalid") and user.name == "Erased member"


@only_sqlite
def test_erasing_checks_the_password_without_holding_the_write_lock(
    client, db, member, login_as, monkeypatch
):
    """The erase form is a POST: its password check (scrypt, tens of milliseconds) must not
    hold SQLite's write lock, which every vote needs; the anonymisation takes it after."""
    from deliberate.services import personal_data

    login_as(member)
    member_id = member.id
    db.session.commit()
    probe = WriteLockProbe(db.engine.url.database, personal_data.verify_password)
    monkeypatch.setattr(personal_data, "verify_password", probe)
    response = client.post("/account/erase", data={"password": PASSWORD, "confirm": "yes"})
    assert response.status_code == 303
    assert probe.free == [True]
    assert _erased(db, member_id)


def test_erasing_ends_the_persons_other_sessions(app, db, member):
    other_browser = app.test_client()
    assert login(other_browser, member).status_code in (302, 303)
    this_browser = app.test_client()
    login(this_browser, member)
    this_browser.post("/account/erase", data={"password": PASSWORD, "confirm": "yes"})
    assert other_browser.get("/account").status_code == 302


def test_erase_form_works_with_csrf_on(app_config, tmp_path):
    from deliberate import create_app
    from deliberate.extensions import db as _db
    from tests.conftest import RequestIsolatedClient

    app_config["WTF_CSRF_ENABLED"] = True
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        from deliberate.services.passwords import hash_password

        user = User(
            email="csrf@example.org", name="Csrf Person", password_hash=hash_password(PASSWORD)
        )
        _db.session.add(user)
        _db.session.commit()
        client = app.test_client()
        token = CSRF_META.search(client.get("/login").get_data(as_text=True)).group(1)
        client.post("/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token})
        response = client.post("/account/erase", data={"password": PASSWORD, "confirm": "yes"})
        assert response.status_code == 400 and "security token" in response.get_data(as_text=True)
        token = CSRF_META.search(client.get("/account/erase").get_data(as_text=True)).group(1)
        response = client.post(
            "/account/erase", data={"password": PASSWORD, "confirm": "yes", "csrf_token": token}
        )
        assert response.status_code == 303
        _db.session.expire_all()
        assert _db.session.get(User, user.id).erased_at is not None
        _db.session.remove()
        _db.engine.dispose()


# --- an admin erasing someone --------------------------------------------------------------


def test_admin_erases_a_member_from_the_people_page(client, db, factory, member, login_as):
    admin = factory.user(Role.ADMIN)
    login_as(admin)
    people = client.get("/facilitate/people/").get_data(as_text=True)
    assert f'href="/facilitate/people/{member.id}/erase"' in people
    page = client.get(f"/facilitate/people/{member.id}/erase")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and "zoe@example.org" in body
    assert XSS_NAME not in body and "&lt;script&gt;" in body  # escaped
    response = client.post(f"/facilitate/people/{member.id}/erase", data={})
    assert response.status_code == 400 and not _erased(db, member.id)
    response = client.post(f"/facilitate/people/{member.id}/erase", data={"confirm": "yes"})
    assert response.status_code == 303 and _erased(db, member.id)
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "account.erase"))
    assert (event.actor_id, event.target_id) == (admin.id, member.id)
    people = client.get("/facilitate/people/").get_data(as_text=True)
    assert "Erased member" in people and "zoe@example.org" not in people
    assert "Erased</span>" in people
    assert f"/facilitate/people/{member.id}/active" not in people  # no "Reactivate"
    response = client.post(f"/facilitate/people/{member.id}/erase", data={"confirm": "yes"})
    assert response.status_code == 409


def test_only_admins_erase_others(client, db, factory, member, login_as):
    login_as(factory.user(Role.FACILITATOR))
    assert client.get(f"/facilitate/people/{member.id}/erase").status_code == 403
    response = client.post(f"/facilitate/people/{member.id}/erase", data={"confirm": "yes"})
    assert response.status_code == 403 and not _erased(db, member.id)


def test_admin_erasing_themselves_goes_through_the_password_form(client, factory, login_as):
    admin = factory.user(Role.ADMIN)
    login_as(admin)
    response = client.get(f"/facilitate/people/{admin.id}/erase")
    assert response.status_code == 303 and response.headers["Location"].endswith("/account/erase")
    response = client.post("/account/erase", data={"password": PASSWORD, "confirm": "yes"})
    assert response.status_code == 409  # the last admin
    assert "last admin" in response.get_data(as_text=True)


def test_erased_author_shows_as_before_to_voters(client, db, factory, member, login_as):
    round_ = factory.round(author_display="organisation", statements=["A seed for the round"])
    statement = Statement(
        round_id=round_.id,
        text="Written by the member",
        normalised_text="written by the member",
        author_id=member.id,
        origin="member",
        moderation_state="accepted",
    )
    db.session.add(statement)
    db.session.commit()
    before = voting.author_label(statement)
    from deliberate.services import personal_data

    personal_data.erase_account(None, member.id)
    db.session.expire_all()
    assert voting.author_label(db.session.get(Statement, statement.id)) == before
    assert "Welcome Group" in before


# --- the retention setting -----------------------------------------------------------------


def _form(**extra) -> dict:
    return {
        "question": "How should we meet next year?",
        "context": "",
        "allow_member_statements": "y",
        "moderation": "pre",
        "statement_max_length": "280",
        "results_visibility": "after_voting",
        "author_display": "anonymous",
        **extra,
    }


def test_round_form_sets_and_validates_the_retention_period(client, db, factory, login_as):
    login_as(factory.user(Role.FACILITATOR))
    assert "retention_days" in client.get("/facilitate/rounds/new").get_data(as_text=True)
    for bad in ("0", "36501", "-1", "abc", "1.5", "9" * 30):
        response = client.post("/facilitate/rounds/new", data=_form(retention_days=bad))
        assert response.status_code == 400, bad
        assert db.session.scalar(select(func.count()).select_from(Round)) == 0
    response = client.post("/facilitate/rounds/new", data=_form(retention_days="90"))
    assert response.status_code == 303
    round_ = db.session.scalar(select(Round))
    assert round_.retention_days == 90
    page = client.get(f"/facilitate/rounds/{round_.id}").get_data(as_text=True)
    assert "90 days after the round closes" in page
    response = client.post(f"/facilitate/rounds/{round_.id}/edit", data=_form(retention_days=""))
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(Round, round_.id).retention_days is None
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "round.update")).one()
    assert event.details["changed"]["retention_days"] == {"from": 90, "to": None}


def test_published_round_may_still_change_its_retention(client, db, factory, login_as):
    login_as(factory.user(Role.FACILITATOR))
    round_ = factory.round(state=RoundState.PUBLISHED, question="How should we meet next year?")
    page = client.get(f"/facilitate/rounds/{round_.id}").get_data(as_text=True)
    assert "Change the retention period" in page
    response = client.post(f"/facilitate/rounds/{round_.id}/edit", data=_form(retention_days="30"))
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(Round, round_.id).retention_days == 30
    response = client.post(
        f"/facilitate/rounds/{round_.id}/edit", data=_form(context="Changed", retention_days="30")
    )
    assert response.status_code == 409


def test_password_guessing_through_the_erase_form_is_rate_limited(app_config):
    from deliberate import create_app
    from deliberate.extensions import db as _db
    from deliberate.services.passwords import hash_password
    from tests.conftest import RequestIsolatedClient

    app_config.update(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://")
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        user = User(email="guess@example.org", name="Guess", password_hash=hash_password(PASSWORD))
        _db.session.add(user)
        _db.session.commit()
        client = app.test_client()
        assert login(client, user).status_code in (302, 303)
        statuses = [
            client.post("/account/erase", data={"password": f"guess {n}", "confirm": "yes"})
            for n in range(11)
        ]
        assert [r.status_code for r in statuses[:10]] == [400] * 10
        assert statuses[10].status_code == 429
        assert "Too many requests" in statuses[10].get_data(as_text=True)
        _db.session.expire_all()
        assert _db.session.get(User, user.id).erased_at is None
        _db.session.remove()
        _db.engine.dispose()
