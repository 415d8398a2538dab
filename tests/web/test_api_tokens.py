"""The API tokens page: create a token (shown once), list, revoke; links to it and the API docs."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from deliberate.models import ApiToken, Role
from deliberate.services import api_tokens

SECRET = re.compile(r'id="token-secret"[^>]*value="(dlb_[A-Za-z0-9_-]+)"')


@pytest.fixture
def member(factory):
    return factory.user(Role.MEMBER, organisation=factory.organisation())


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get("/account/api-tokens")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_new_token_is_shown_once_and_works(client, db, login_as, member):
    login_as(member)
    response = client.post("/account/api-tokens", data={"name": "Budget sheet", "expires": "30"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    secret = SECRET.search(page).group(1)
    assert "shown only this once" in page
    row = db.session.scalar(select(ApiToken))
    assert row.token_hash == api_tokens.hash_token(secret) and row.expires_at is not None

    listing = client.get("/account/api-tokens").get_data(as_text=True)
    assert "Budget sheet" in listing and row.prefix in listing
    assert secret not in listing  # never again

    api = client.application.test_client()
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200 and me.get_json()["id"] == member.id
    db.session.expire_all()
    assert db.session.get(ApiToken, row.id).last_used_at is not None


def test_a_token_without_expiry(client, db, login_as, member):
    login_as(member)
    client.post("/account/api-tokens", data={"name": "Forever", "expires": "never"})
    assert db.session.scalar(select(ApiToken)).expires_at is None


@pytest.mark.parametrize(
    "data",
    [
        {"name": "", "expires": "30"},
        {"name": "x" * 81, "expires": "30"},
        {"name": "ok", "expires": "7"},
        {"name": "ok", "expires": ""},
    ],
)
def test_bad_forms_are_refused_with_the_form_again(client, db, login_as, member, data):
    login_as(member)
    response = client.post("/account/api-tokens", data=data)
    assert response.status_code == 400
    assert 'class="error"' in response.get_data(as_text=True)
    assert db.session.scalar(select(ApiToken)) is None


def test_a_duplicate_name_is_a_clear_refusal(client, db, login_as, member):
    login_as(member)
    client.post("/account/api-tokens", data={"name": "Sheet", "expires": "30"})
    response = client.post("/account/api-tokens", data={"name": "sheet", "expires": "30"})
    assert response.status_code == 409
    assert "already have a token" in response.get_data(as_text=True)


def test_revoking_is_post_redirect_get_and_only_for_the_owner(client, db, factory, member):
    other = factory.user(Role.MEMBER)
    mine = api_tokens.create_token(member, "mine")
    theirs = api_tokens.create_token(other, "theirs")
    from tests.conftest import login

    login(client, member)
    response = client.post(f"/account/api-tokens/{theirs.token.id}/revoke")
    assert response.status_code == 404
    assert api_tokens.authenticate(theirs.secret) is not None

    response = client.post(f"/account/api-tokens/{mine.token.id}/revoke")
    assert response.status_code == 303 and response.headers["Location"].endswith(
        "/account/api-tokens"
    )
    assert api_tokens.authenticate(mine.secret) is None
    page = client.get("/account/api-tokens").get_data(as_text=True)
    assert "is revoked" in page and "Revoked" in page
    again = client.post(f"/account/api-tokens/{mine.token.id}/revoke", follow_redirects=True)
    assert again.status_code == 200 and "already revoked" in again.get_data(as_text=True)


def test_token_names_are_escaped(client, login_as, member):
    login_as(member)
    client.post("/account/api-tokens", data={"name": "<script>alert(1)</script>", "expires": "30"})
    page = client.get("/account/api-tokens").get_data(as_text=True)
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_the_account_page_links_to_tokens_and_every_page_to_the_api_reference(
    client, login_as, member
):
    login_as(member)
    account = client.get("/account").get_data(as_text=True)
    assert 'href="/account/api-tokens"' in account
    assert 'href="/api/docs"' in account
    login_page = client.application.test_client().get("/login").get_data(as_text=True)
    assert 'href="/api/docs"' in login_page
