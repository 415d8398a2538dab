"""Web: log in and out, invitations, resets, the account page, rate limits and CSRF."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import update

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import Invitation, Role, User, utcnow
from deliberate.services import invitations
from deliberate.services.invitations import InvitationRow
from deliberate.services.passwords import verify_password
from deliberate.web.auth import safe_next
from tests.conftest import PASSWORD, RequestIsolatedClient

NEW_PASSWORD = "a fresh passphrase"


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def logged_in(client) -> bool:
    response = client.get("/account")
    return response.status_code == 200


def invite_link(email="amy@example.org", round_id=None) -> str:
    issued = invitations.invite_members(
        None,
        [InvitationRow(name="Amy", email=email, organisation="North")],
        round_id=round_id,
        base_url="http://localhost",
    )
    return issued[0].link.removeprefix("http://localhost")


# --- login and logout ----------------------------------------------------------------------


def test_login_page_renders(client):
    response = client.get("/login")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html
    assert 'autocomplete="current-password"' in html


def test_login_logout(client, factory):
    user = factory.user(email="ana@example.org")
    response = client.post("/login", data={"email": "ANA@example.org", "password": PASSWORD})
    assert response.status_code == 303 and response.location == "/"
    assert logged_in(client)
    assert _db.session.get(User, user.id).last_login_at is not None
    response = client.post("/logout")
    assert response.status_code == 303 and response.location == "/login"
    assert not logged_in(client)


def test_wrong_password_and_unknown_email_get_the_same_message(client, factory):
    factory.user(email="ana@example.org")
    for email, password in [("ana@example.org", "wrong passphrase"), ("who@example.org", PASSWORD)]:
        response = client.post("/login", data={"email": email, "password": password})
        assert response.status_code == 400
        assert "Email or password is incorrect." in response.get_data(as_text=True)
        assert not logged_in(client)


def test_missing_fields_are_a_clear_400(client):
    response = client.post("/login", data={})
    assert response.status_code == 400
    assert "Enter your email address." in response.get_data(as_text=True)


def test_inactive_user_cannot_log_in_and_is_logged_out(client, factory, login_as, db):
    user = factory.user(email="ana@example.org")
    login_as(user)
    user.active = False
    db.session.commit()
    assert not logged_in(client)
    response = client.post("/login", data={"email": "ana@example.org", "password": PASSWORD})
    assert response.status_code == 400
    assert "Email or password is incorrect." in response.get_data(as_text=True)


def test_invited_user_without_password_cannot_log_in(client, factory):
    factory.user(email="ana@example.org", password=False)
    response = client.post("/login", data={"email": "ana@example.org", "password": ""})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/rounds/3?x=1", "/rounds/3?x=1"),
        ("/account", "/account"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("rounds", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
    ],
)
def test_next_is_followed_only_when_it_is_a_local_path(client, factory, target, expected):
    factory.user(email="ana@example.org")
    response = client.post(
        "/login", data={"email": "ana@example.org", "password": PASSWORD, "next": target}
    )
    assert response.status_code == 303
    assert response.location == expected


def test_safe_next_helper():
    assert safe_next("/a/b") == "/a/b"
    assert safe_next(None) is None
    assert safe_next("http:/evil") is None
    assert safe_next("/" + "a" * 3000) is None


def test_login_required_pages_send_back_to_login_with_next(client):
    response = client.get("/account")
    assert response.status_code == 302
    assert response.location.startswith("/login?next=")


# --- invitations ---------------------------------------------------------------------------


def test_accept_invitation_sets_password_logs_in_and_goes_to_the_round(client, factory, db):
    round_ = factory.round()
    path = invite_link(round_id=round_.id)
    page = client.get(path)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "amy@example.org" in html and "North" in html and 'value="Amy"' in html
    response = client.post(
        path, data={"name": "Amy Jones", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert response.status_code == 303
    assert response.location.endswith(f"/rounds/{round_.id}")
    assert logged_in(client)
    user = db.session.query(User).filter_by(email="amy@example.org").one()
    assert user.name == "Amy Jones" and verify_password(user.password_hash, NEW_PASSWORD)


def test_invitation_is_single_use(client, db):
    path = invite_link()
    data = {"name": "Amy", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    assert client.post(path, data=data).status_code == 303
    client.post("/logout")
    for response in (client.get(path), client.post(path, data=data)):
        assert response.status_code == 400
        assert "This link is invalid, used or expired." in response.get_data(as_text=True)


def test_expired_invitation_is_refused(client, db):
    path = invite_link()
    db.session.execute(update(Invitation).values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    response = client.get(path)
    assert response.status_code == 400
    assert "invalid, used or expired" in response.get_data(as_text=True)


def test_invitation_form_errors_keep_the_link_usable(client, db):
    path = invite_link()
    mismatch = client.post(
        path, data={"name": "Amy", "password": NEW_PASSWORD, "confirm": "something else!"}
    )
    assert mismatch.status_code == 400
    assert "The two passwords are not the same." in mismatch.get_data(as_text=True)
    short = client.post(path, data={"name": "Amy", "password": "short", "confirm": "short"})
    assert short.status_code == 400
    assert not logged_in(client)
    ok = client.post(path, data={"name": "Amy", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert ok.status_code == 303


def test_invitation_race_through_the_web(client, app, db, monkeypatch):
    """Both requests passed the lookup: one UPDATE ... WHERE used_at IS NULL decides."""
    path = invite_link()
    token = path.rsplit("/", 1)[1]
    invitation = invitations.find_invitation(token, "invite")
    db.session.execute(update(Invitation).values(used_at=utcnow()))
    db.session.commit()
    monkeypatch.setattr(invitations, "find_invitation", lambda t, p: invitation)
    response = client.post(
        path, data={"name": "Amy", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert response.status_code == 400
    assert db.session.query(User).filter_by(email="amy@example.org").one().password_hash is None


# --- resets --------------------------------------------------------------------------------


def test_reset_link_sets_a_new_password_and_ends_old_sessions(app, client, factory, db):
    user = factory.user(email="ana@example.org")
    other = app.test_client()
    assert other.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 303
    link = invitations.issue_password_reset(None, user.id, "http://localhost")
    path = link.removeprefix("http://localhost")
    assert client.get(path).status_code == 200
    response = client.post(path, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert response.status_code == 303
    assert logged_in(client)
    assert not logged_in(other)
    assert (
        client.post(path, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}).status_code
        == 400
    )


# --- account -------------------------------------------------------------------------------


def test_change_password_keeps_this_session_and_kills_the_others(app, client, factory, login_as):
    user = factory.user(email="ana@example.org")
    login_as(user)
    other = app.test_client()
    assert other.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 303
    assert logged_in(other)
    response = client.post(
        "/account",
        data={"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert response.status_code == 303
    page = client.get(response.location)
    assert page.status_code == 200
    assert "Your password is changed." in page.get_data(as_text=True)
    assert not logged_in(other)


def test_change_password_with_a_wrong_current_password(client, factory, login_as):
    login_as(factory.user())
    response = client.post(
        "/account",
        data={"current": "not my password", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert response.status_code == 400
    assert "Your current password is not right." in response.get_data(as_text=True)


def test_logout_everywhere(app, client, factory, login_as):
    user = factory.user(email="ana@example.org")
    login_as(user)
    other = app.test_client()
    other.post("/login", data={"email": user.email, "password": PASSWORD})
    response = client.post("/account/logout-everywhere")
    assert response.status_code == 303 and response.location == "/login"
    assert not logged_in(client) and not logged_in(other)


# --- rate limits and CSRF ------------------------------------------------------------------


def test_login_is_rate_limited_per_address(tmp_path, app_config):
    app_config["RATELIMIT_ENABLED"] = True
    app_config["RATELIMIT_LOGIN_PER_ADDRESS"] = "10 per minute"
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        client = app.test_client()
        statuses = [
            client.post("/login", data={"email": f"u{i}@example.org", "password": ""}).status_code
            for i in range(11)
        ]
        assert statuses[:10] == [400] * 10
        assert statuses[10] == 429
        response = client.post("/login", data={"email": "z@example.org", "password": "x"})
        assert response.status_code == 429
        assert "Too many requests" in response.get_data(as_text=True)
        assert client.get("/login").status_code == 200  # only POSTs count
        _db.session.remove()
        _db.engine.dispose()


def test_login_is_rate_limited_per_account(app_config):
    app_config["RATELIMIT_ENABLED"] = True
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        statuses = []
        for i in range(11):
            client = app.test_client()
            response = client.post(
                "/login",
                data={
                    "email": "Victim@example.org" if i % 2 else "victim@EXAMPLE.org ",
                    "password": "",
                },
                environ_base={"REMOTE_ADDR": f"10.0.0.{i}"},
            )
            statuses.append(response.status_code)
        assert statuses[:10] == [400] * 10 and statuses[10] == 429
        other = app.test_client().post(
            "/login",
            data={"email": "someone@example.org", "password": ""},
            environ_base={"REMOTE_ADDR": "10.0.1.1"},
        )
        assert other.status_code == 400
        _db.session.remove()
        _db.engine.dispose()


def test_invitation_posts_are_rate_limited(app_config):
    app_config["RATELIMIT_ENABLED"] = True
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        client = app.test_client()
        statuses = [
            client.post("/invite/nonsense", data={"password": "x"}).status_code for _ in range(11)
        ]
        assert statuses[:10] == [400] * 10 and statuses[10] == 429
        statuses = [
            client.post("/reset/nonsense", data={"password": "x"}).status_code for _ in range(11)
        ]
        assert statuses[-1] == 429
        _db.session.remove()
        _db.engine.dispose()


def test_login_needs_the_csrf_token(app_config):
    app_config["WTF_CSRF_ENABLED"] = True
    app = create_app(app_config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        from deliberate.services.passwords import hash_password

        _db.session.add(
            User(
                email="ana@example.org",
                name="Ana",
                role=Role.MEMBER.value,
                password_hash=hash_password(PASSWORD),
            )
        )
        _db.session.commit()
        client = app.test_client()
        data = {"email": "ana@example.org", "password": PASSWORD}
        refused = client.post("/login", data=data)
        assert refused.status_code == 400
        assert "security token" in refused.get_data(as_text=True)
        token = csrf_from(client.get("/login").get_data(as_text=True))
        accepted = client.post("/login", data=data | {"csrf_token": token})
        assert accepted.status_code == 303
        # Logging out needs the token too.
        assert client.post("/logout").status_code == 400
        token = csrf_from(client.get("/account").get_data(as_text=True))
        assert client.post("/logout", data={"csrf_token": token}).status_code == 303
        _db.session.remove()
        _db.engine.dispose()


# --- password rules and session ends (security hardening) ------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("Password123!", "first that people trying to break in would guess"),
        ("qwertyuiop", "first that people trying to break in would guess"),
        ("1234567890", "first that people trying to break in would guess"),
        ("aaaaaaaaaaaa", "first that people trying to break in would guess"),
        ("Welcome2024!", "first that people trying to break in would guess"),
        ("ana.silva forever", "must not contain your name or email address"),
        ("Silvastrasse 12", "must not contain your name or email address"),
        ("12345678910", "first that people trying to break in would guess"),
    ],
)
def test_weak_passwords_are_refused_with_a_reason(client, factory, login_as, password, message):
    user = factory.user(email="ana.silva@example.org", name="Ana Silva")
    login_as(user)
    response = client.post(
        "/account", data={"current": PASSWORD, "password": password, "confirm": password}
    )
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    _db.session.rollback()
    assert verify_password(_db.session.get(User, user.id).password_hash, PASSWORD)


def test_invitation_refuses_a_password_made_of_the_new_name(client, db):
    link = invite_link("amy.north@example.org")
    data = {"name": "Amelia Northcote", "password": "northcote rules", "confirm": "northcote rules"}
    response = client.post(link, data=data)
    assert response.status_code == 400
    assert "must not contain your name" in response.get_data(as_text=True)
    assert (
        db.session.query(User).filter_by(email="amy.north@example.org").one().password_hash is None
    )


def test_a_copied_session_cookie_stops_working_after_logout_everywhere(app, factory, login_as):
    user = factory.user(email="ana@example.org")
    browser = login_as(user)
    stolen = browser.get_cookie("session").value
    thief = app.test_client()
    thief.set_cookie("session", stolen)
    assert logged_in(thief)  # the copy works while the session lives
    assert browser.post("/account/logout-everywhere").status_code == 303
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    assert not logged_in(replay)
    assert replay.get("/rounds").status_code == 302  # sent to the login page


def test_a_copied_session_cookie_stops_working_after_a_password_change(app, client, factory):
    user = factory.user(email="ana@example.org")
    other = app.test_client()
    assert other.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 303
    stolen = other.get_cookie("session").value
    assert (
        client.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 303
    )
    response = client.post(
        "/account", data={"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert response.status_code == 303
    assert logged_in(client)  # this browser stays logged in under the new password
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    assert not logged_in(replay)
    # The old password no longer logs in; the new one does.
    fresh = app.test_client()
    assert fresh.post("/login", data={"email": user.email, "password": PASSWORD}).status_code == 400
    assert (
        fresh.post("/login", data={"email": user.email, "password": NEW_PASSWORD}).status_code
        == 303
    )


def test_an_invitation_opened_while_someone_else_is_logged_in_says_it_switches(client, factory, db):
    factory.user(email="ben@example.org")
    assert client.post("/login", data={"email": "ben@example.org", "password": PASSWORD})
    path = invite_link()
    html = client.get(path).get_data(as_text=True)
    assert 'id="switch-account"' in html
    assert "logged in as\n<strong>ben@example.org</strong>" in html
    assert "in as\n<strong>amy@example.org</strong>" in html
    data = {"name": "Amy", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    response = client.post(path, data=data, follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "You are now logged in as amy@example.org, not ben@example.org." in page
    assert client.get("/account").get_data(as_text=True).count("amy@example.org") >= 1
    assert "ben@example.org" not in client.get("/account").get_data(as_text=True)


def test_a_reset_link_opened_while_someone_else_is_logged_in_says_it_switches(client, factory, db):
    amy = factory.user(email="amy@example.org")
    factory.user(email="ben@example.org")
    link = invitations.issue_password_reset(None, amy.id, "http://localhost")
    path = link.removeprefix("http://localhost")
    assert client.post("/login", data={"email": "ben@example.org", "password": PASSWORD})
    assert 'id="switch-account"' in client.get(path).get_data(as_text=True)
    data = {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    page = client.post(path, data=data, follow_redirects=True).get_data(as_text=True)
    assert "You are now logged in as amy@example.org, not ben@example.org." in page


def test_an_invitation_opened_by_no_one_or_its_own_user_says_nothing_of_switching(client, db):
    path = invite_link()
    assert 'id="switch-account"' not in client.get(path).get_data(as_text=True)
