"""The JSON API at /api/v1: token and session authentication, the same rules as the pages,
JSON errors for every failure, pagination, and the OpenAPI document that describes it."""

from __future__ import annotations

import json
import re
from itertools import count

import pytest
from openapi_spec_validator import validate as validate_openapi
from sqlalchemy import func, select

from deliberate.models import (
    ModerationMode,
    ResultsVisibility,
    Role,
    RoundState,
    Statement,
    Vote,
    VoteEvent,
)
from deliberate.services import api_tokens, report, voting
from deliberate.services.snapshots import refresh_snapshot
from deliberate.web.openapi import openapi_document
from tests.conftest import login
from tests.web.robustness import csrf_token_of


@pytest.fixture
def world(db, factory):
    org_a, org_b = factory.organisation("Org A"), factory.organisation("Org B")
    member = factory.user(Role.MEMBER, organisation=org_a)
    other = factory.user(Role.MEMBER, organisation=org_b)
    facilitator = factory.user(Role.FACILITATOR)
    round_ = factory.round(statements=[f"Seed statement {i}" for i in range(1, 4)])
    round_.organisations = [org_a]
    draft = factory.round(state=RoundState.DRAFT, statements=["Draft seed"])
    db.session.commit()
    return {
        "org_a": org_a,
        "member": member,
        "other": other,
        "facilitator": facilitator,
        "round": round_,
        "draft": draft,
        "seeds": [s.id for s in round_.statements],
    }


_names = count(1)


def bearer(user) -> dict:
    """The Authorization header with a new token of the user."""
    secret = api_tokens.create_token(user, f"test token {next(_names)}").secret
    return {"Authorization": f"Bearer {secret}"}


def _count(db, model, *where) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["status"] == status and error["title"] and error["message"]
    return error


# --- authentication -----------------------------------------------------------------------------


def test_a_token_authenticates_as_its_user_on_the_api_only(client, world):
    headers = bearer(world["member"])
    response = client.get("/api/v1/me", headers=headers)
    assert response.status_code == 200
    assert response.get_json()["id"] == world["member"].id
    assert response.get_json()["authenticated_by"] == "token"
    assert "Set-Cookie" not in response.headers  # a token never starts a session
    assert response.headers["Cache-Control"] == "no-store"
    assert "Authorization" in response.headers["Vary"]
    # Not a login for the pages.
    page = client.get("/rounds", headers=headers)
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    assert client.get("/api/rounds/1/next", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer dlb_" + "x" * 43,  # well formed, unknown
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "bearer   ",
        "Bearer <script>alert(1)</script>",
        "Bearer " + "dlb_" + "a" * 5000,
    ],
)
def test_bad_authorization_headers_are_401_json(client, world, header):
    response = client.get("/api/v1/rounds", headers={"Authorization": header})
    assert_json_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "<script" not in response.get_data(as_text=True)


def test_anonymous_requests_are_401_json(client, world):
    for url in ("/api/v1/me", "/api/v1/rounds", f"/api/v1/rounds/{world['round'].id}/results"):
        assert_json_error(client.get(url), 401)
    response = client.post(
        f"/api/v1/rounds/{world['round'].id}/votes",
        json={"statement_id": world["seeds"][0], "value": 1},
    )
    assert_json_error(response, 401)


def test_a_revoked_token_stops_at_once_and_a_bad_token_beats_a_good_session(client, world, db):
    issued = api_tokens.create_token(world["member"], "soon revoked")
    headers = {"Authorization": f"Bearer {issued.secret}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    api_tokens.revoke_token(world["member"], issued.token.id)
    assert_json_error(client.get("/api/v1/me", headers=headers), 401)
    login(client, world["member"])
    assert client.get("/api/v1/me").status_code == 200  # the session works on its own
    assert_json_error(client.get("/api/v1/me", headers=headers), 401)


def test_deactivating_a_user_stops_their_token(client, world, db):
    headers = bearer(world["member"])
    world["member"].active = False
    db.session.commit()
    assert_json_error(client.get("/api/v1/me", headers=headers), 401)


class TestCsrf:
    @pytest.fixture
    def app_config(self, app_config):
        app_config["WTF_CSRF_ENABLED"] = True
        return app_config

    def test_session_writes_need_the_csrf_header_token_writes_do_not(self, app, db, world):
        url = f"/api/v1/rounds/{world['round'].id}/votes"
        vote = {"statement_id": world["seeds"][0], "value": 1}
        browser = app.test_client()
        token = csrf_token_of(browser, "/login")
        response = browser.post(
            "/login",
            data={
                "email": world["member"].email,
                "password": "correct horse battery",
                "csrf_token": token,
            },
        )
        assert response.status_code == 303
        assert browser.get("/api/v1/me").status_code == 200  # reading needs no CSRF token
        error = assert_json_error(browser.post(url, json=vote), 400)
        assert "X-CSRFToken" in error["message"]
        assert_json_error(browser.post(url, json=vote, headers={"X-CSRFToken": "forged"}), 400)
        assert _count(db, Vote) == 0
        token = csrf_token_of(browser, "/account")
        assert browser.post(url, json=vote, headers={"X-CSRFToken": token}).status_code == 200
        assert _count(db, Vote) == 1

        # A token needs no CSRF token: a cross-site page cannot send the Authorization header.
        api = app.test_client()
        vote2 = {"statement_id": world["seeds"][1], "value": -1}
        assert api.post(url, json=vote2, headers=bearer(world["member"])).status_code == 200
        assert _count(db, Vote) == 2

    def test_token_pages_need_the_form_token(self, app, db, world):
        browser = app.test_client()
        token = csrf_token_of(browser, "/login")
        browser.post(
            "/login",
            data={
                "email": world["member"].email,
                "password": "correct horse battery",
                "csrf_token": token,
            },
        )
        response = browser.post("/account/api-tokens", data={"name": "x", "expires": "30"})
        assert response.status_code == 400
        assert api_tokens.tokens_of(world["member"]) == []


# --- reading ------------------------------------------------------------------------------------


def test_rounds_are_listed_as_the_pages_show_them(client, world, factory):
    member_view = client.get("/api/v1/rounds", headers=bearer(world["member"])).get_json()
    assert [r["id"] for r in member_view["items"]] == [world["round"].id]  # no draft
    first = member_view["items"][0]
    assert first["accepting_votes"] is True and first["can_participate"] is True
    assert first["settings"]["moderation"] == "pre"
    other_view = client.get("/api/v1/rounds", headers=bearer(world["other"])).get_json()
    assert other_view["items"] == [] and other_view["total"] == 0
    staff_view = client.get("/api/v1/rounds", headers=bearer(world["facilitator"])).get_json()
    assert {r["id"] for r in staff_view["items"]} == {world["round"].id, world["draft"].id}


def test_lists_are_paginated(client, world, factory):
    for i in range(4):
        factory.round(statements=[f"Another round's seed {i}"])
    headers = bearer(world["member"])
    seen, page = [], 1
    while page is not None:
        body = client.get(f"/api/v1/rounds?per_page=2&page={page}", headers=headers).get_json()
        assert len(body["items"]) <= 2 and body["total"] == 5 and body["per_page"] == 2
        seen += [r["id"] for r in body["items"]]
        page = body["next_page"]
    assert len(seen) == len(set(seen)) == 5
    statements = client.get(
        f"/api/v1/rounds/{world['round'].id}/statements?per_page=1&page=3", headers=headers
    ).get_json()
    assert [s["id"] for s in statements["items"]] == [world["seeds"][2]]
    assert statements["next_page"] is None and statements["total"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=-1",
        "page=abc",
        "per_page=0",
        "per_page=201",
        "page=1.5",
        "per_page=%EF%BC%91",
        "page=99999999999999999999",
    ],
)
def test_bad_paging_is_a_400(client, world, query):
    error = assert_json_error(
        client.get(f"/api/v1/rounds?{query}", headers=bearer(world["member"])), 400
    )
    assert "whole number" in error["message"]


def test_a_round_someone_may_not_see_is_not_found(client, world):
    rid = world["round"].id
    for url in (
        f"/api/v1/rounds/{rid}",
        f"/api/v1/rounds/{rid}/statements",
        f"/api/v1/rounds/{rid}/votes",
        f"/api/v1/rounds/{rid}/results",
    ):
        assert_json_error(client.get(url, headers=bearer(world["other"])), 404)
    assert_json_error(
        client.get(f"/api/v1/rounds/{world['draft'].id}", headers=bearer(world["member"])), 404
    )
    assert_json_error(client.get("/api/v1/rounds/2147483648", headers=bearer(world["member"])), 404)


def test_statements_are_the_visible_ones_with_the_readers_votes(client, db, world, factory):
    member, round_ = world["member"], world["round"]
    headers = bearer(member)
    # Pre-moderation: the member's own pending statement is not listed yet.
    response = client.post(
        f"/api/v1/rounds/{round_.id}/statements",
        json={"text": "  Cheaper   buses  "},
        headers=headers,
    )
    assert response.status_code == 201
    created = response.get_json()["statement"]
    assert created["text"] == "Cheaper buses" and created["visible"] is False
    assert created["moderation_state"] == "pending"
    voting.cast_vote(member, world["seeds"][1], -1, round_id=round_.id)
    body = client.get(f"/api/v1/rounds/{round_.id}/statements", headers=headers).get_json()
    assert [s["id"] for s in body["items"]] == world["seeds"]
    assert [s["your_vote"] for s in body["items"]] == [None, -1, None]
    assert not any(s["yours"] for s in body["items"])

    # Post-moderation: shown at once, marked as the member's own.
    round_.moderation = ModerationMode.POST.value
    db.session.commit()
    body = client.get(f"/api/v1/rounds/{round_.id}/statements", headers=headers).get_json()
    mine = [s for s in body["items"] if s["yours"]]
    assert [s["id"] for s in mine] == [created["id"]]


def test_the_round_shows_progress_and_whether_results_are_readable(client, world):
    rid = world["round"].id
    body = client.get(f"/api/v1/rounds/{rid}", headers=bearer(world["member"])).get_json()
    assert body["progress"] == {"voted": 0, "total": 3}
    assert body["results_available"] is False
    assert body["links"]["votes"] == f"/api/v1/rounds/{rid}/votes"
    staff = client.get(f"/api/v1/rounds/{rid}", headers=bearer(world["facilitator"])).get_json()
    assert staff["results_available"] is True


# --- writing ------------------------------------------------------------------------------------


def test_casting_and_changing_a_vote(client, db, world):
    rid, sid = world["round"].id, world["seeds"][0]
    headers = bearer(world["member"])
    url = f"/api/v1/rounds/{rid}/votes"
    first = client.post(url, json={"statement_id": sid, "value": 1}, headers=headers).get_json()
    assert first["status"] == "new" and first["previous_value"] is None
    assert first["progress"] == {"voted": 1, "total": 3}
    assert first["next"]["id"] in world["seeds"][1:]
    changed = client.post(url, json={"statement_id": sid, "value": -1}, headers=headers).get_json()
    assert changed["status"] == "changed" and changed["previous_value"] == 1
    same = client.post(url, json={"statement_id": sid, "value": -1}, headers=headers).get_json()
    assert same["status"] == "unchanged"
    assert _count(db, Vote) == 1 and _count(db, VoteEvent) == 2
    votes = client.get(url, headers=headers).get_json()
    assert votes["items"] == [{"statement_id": sid, "text": "Seed statement 1", "value": -1}]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"statement_id": "1", "value": 1}, 400),
        ({"statement_id": 1, "value": 2}, 400),
        ({"statement_id": 1, "value": True}, 400),
        ({"statement_id": 1, "value": 1.0}, 400),
        ({"statement_id": 1}, 400),
        ({"statement_id": 1, "value": 1, "extra": "<script>alert(1)</script>"}, 400),
        ([1, 1], 400),
        ({"statement_id": 2**40, "value": 1}, 400),
        ({"statement_id": 999_999, "value": 1}, 404),
    ],
)
def test_bad_votes_are_refused_without_a_write(client, db, world, body, status):
    if isinstance(body, dict) and body.get("statement_id") == 1:
        body["statement_id"] = world["seeds"][0]
    response = client.post(
        f"/api/v1/rounds/{world['round'].id}/votes", json=body, headers=bearer(world["member"])
    )
    assert_json_error(response, status)
    assert "<script" not in response.get_data(as_text=True)
    assert _count(db, Vote) == 0 and _count(db, VoteEvent) == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        ('{"statement_id": 1, "value": 1}', "text/plain"),
        ('{"statement_id": 1, "value": 1}', "application/x-www-form-urlencoded"),
        ("{", "application/json"),
        ("", "application/json"),
        ("null", "application/json"),
        ("[" * 100_000 + "]" * 100_000, "application/json"),
        ('{"statement_id": NaN, "value": 1}', "application/json"),
    ],
)
def test_malformed_bodies_are_400_json(client, db, world, raw, content_type):
    response = client.post(
        f"/api/v1/rounds/{world['round'].id}/votes",
        data=raw,
        content_type=content_type,
        headers=bearer(world["member"]),
    )
    assert_json_error(response, 400)
    assert _count(db, Vote) == 0


def test_the_rules_of_the_pages_apply_to_votes(client, db, world, factory):
    rid = world["round"].id
    url = f"/api/v1/rounds/{rid}/votes"
    vote = {"statement_id": world["seeds"][0], "value": 1}
    # Staff see the round but are not in its audience: 403, as on the pages.
    assert_json_error(client.post(url, json=vote, headers=bearer(world["facilitator"])), 403)
    assert_json_error(client.post(url, json=vote, headers=bearer(world["other"])), 404)
    world["round"].state = RoundState.CLOSED.value
    db.session.commit()
    assert_json_error(client.post(url, json=vote, headers=bearer(world["member"])), 409)
    assert _count(db, Vote) == 0


def test_the_rules_of_the_pages_apply_to_statements(client, db, world):
    rid = world["round"].id
    url = f"/api/v1/rounds/{rid}/statements"
    headers = bearer(world["member"])
    assert client.post(url, json={"text": "A fair point"}, headers=headers).status_code == 201
    assert_json_error(client.post(url, json={"text": "a  FAIR point"}, headers=headers), 409)
    assert_json_error(client.post(url, json={"text": "x" * 281}, headers=headers), 400)
    assert_json_error(client.post(url, json={"text": ""}, headers=headers), 400)
    assert_json_error(client.post(url, json={"text": 5}, headers=headers), 400)
    assert_json_error(client.post(url, json={"words": "hi"}, headers=headers), 400)
    world["round"].allow_member_statements = False
    db.session.commit()
    assert_json_error(client.post(url, json={"text": "Another one"}, headers=headers), 403)
    assert _count(db, Statement, Statement.origin == "member") == 1


# --- results ------------------------------------------------------------------------------------


@pytest.fixture
def analysed(app, db, factory, world):
    """A round with two camps of members voting, and its analysis."""
    app.config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 8}
    org = world["org_a"]
    round_ = factory.round(
        statements=[f"Policy {i}" for i in range(8)],
        results_visibility=ResultsVisibility.AFTER_VOTING.value,
    )
    round_.organisations = [org]
    db.session.commit()
    sids = [s.id for s in round_.statements]
    people = [factory.user(Role.MEMBER, organisation=org) for _ in range(12)]
    for n, person in enumerate(people):
        camp = 1 if n % 2 else -1
        for k, sid in enumerate(sids):
            value = 1 if k < 2 else camp * (1 if k % 2 else -1)
            voting.cast_vote(person, sid, value, round_id=round_.id)
    refresh_snapshot(round_.id, force=True)
    return round_, people


def test_results_follow_the_report_and_never_show_small_cells(client, world, analysed):
    round_, people = analysed
    url = f"/api/v1/rounds/{round_.id}/results"
    body = client.get(url, headers=bearer(world["facilitator"])).get_json()
    assert body["analysed"] is True and body["min_cell"] == 3
    rep = report.build_report(world["facilitator"], round_.id, with_map=False)
    assert [c["statement_id"] for c in body["consensus"]] == [c.statement.id for c in rep.consensus]
    assert [g["id"] for g in body["groups"]] == [g.group.id for g in rep.group_summaries]
    assert len(body["statements"]) == 8 and body["headline"]["participants"] == 12

    def shares(body):
        for f in body["statements"]:
            yield f["overall"]
            yield from f["by_group"]

    for s in shares(body):
        if s["seen"] is None:
            assert s["agree"] is s["disagree"] is s["pass"] is None
        else:
            assert s["seen"] >= 3
    for group in body["groups"]:
        assert (group["size"] is None) == (group["size_text"] == "fewer than 3")
        assert group["size"] is None or group["size"] >= 3

    # A member who voted reads them too (the round shares results after voting); with a
    # sort the service does not know: a 400 that does not echo the input.
    member_body = client.get(url, headers=bearer(people[0])).get_json()
    assert member_body["consensus"] == body["consensus"]
    response = client.get(f"{url}?sort=<script>", headers=bearer(people[0]))
    assert_json_error(response, 400)
    assert "<script" not in response.get_data(as_text=True)


def test_results_are_refused_as_the_report_is(client, db, world, analysed):
    round_, _people = analysed
    url = f"/api/v1/rounds/{round_.id}/results"
    error = assert_json_error(client.get(url, headers=bearer(world["member"])), 403)
    assert "voted" in error["message"]
    round_.results_visibility = ResultsVisibility.NEVER.value
    db.session.commit()
    assert_json_error(client.get(url, headers=bearer(world["member"])), 403)


def test_results_before_any_analysis(client, world):
    body = client.get(
        f"/api/v1/rounds/{world['round'].id}/results", headers=bearer(world["facilitator"])
    ).get_json()
    assert body["analysed"] is False and body["message"] and body["statements"] == []


# --- errors -------------------------------------------------------------------------------------


def test_unknown_paths_and_methods_are_json(client, world):
    headers = bearer(world["member"])
    assert_json_error(client.get("/api/v1/nothing-here", headers=headers), 404)
    assert_json_error(client.delete("/api/v1/rounds", headers=headers), 405)
    assert_json_error(client.put(f"/api/v1/rounds/{world['round'].id}/votes", headers=headers), 405)


class TestLimits:
    @pytest.fixture
    def app_config(self, app_config):
        app_config["MAX_CONTENT_LENGTH"] = 2048
        app_config["RATELIMIT_ENABLED"] = True
        app_config["RATELIMIT_STATEMENT"] = "3 per hour"
        return app_config

    def test_an_oversized_body_is_413_json(self, client, db, world):
        response = client.post(
            f"/api/v1/rounds/{world['round'].id}/statements",
            data=json.dumps({"text": "x" * 5000}),
            content_type="application/json",
            headers=bearer(world["member"]),
        )
        assert_json_error(response, 413)
        assert _count(db, Statement, Statement.origin == "member") == 0

    def test_statements_are_rate_limited_per_user_with_a_json_429(self, client, world):
        headers = bearer(world["member"])
        url = f"/api/v1/rounds/{world['round'].id}/statements"
        allowed = 3
        statuses = [
            client.post(url, json={"text": f"Statement number {i}"}, headers=headers).status_code
            for i in range(allowed + 1)
        ]
        assert statuses[:allowed] == [201] * allowed
        assert_json_error(client.post(url, json={"text": "One more"}, headers=headers), 429)

    def test_refused_writes_count_towards_the_limit_too(self, client, world):
        # The token look-up ends its transaction before the limit is counted, so a refused
        # request (rolled back) keeps its count: refusals are no way around the limit.
        headers = bearer(world["member"])
        url = f"/api/v1/rounds/{world['round'].id}/statements"
        for _ in range(3):
            assert_json_error(client.post(url, json={"text": ""}, headers=headers), 400)
        assert_json_error(client.post(url, json={"text": "A fine statement"}, headers=headers), 429)


# --- the OpenAPI document and the reference page ------------------------------------------------


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_the_openapi_document_is_valid_and_describes_exactly_the_api(app, client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.get_json()
    validate_openapi(doc)
    assert doc == openapi_document()
    routes = {
        (method.lower(), _flask_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert routes == described
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "401" in op["responses"] and "400" in op["responses"], (method, path)
            assert op["operationId"] and op["summary"]
            if method == "post":
                assert {"413", "429"} <= set(op["responses"]), path
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_reference_page_renders_every_operation_without_script(client):
    response = client.get("/api/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert f'id="{op["operationId"]}"' in page
            assert f"{method.upper()} {path}" in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "<script" not in page and " style=" not in page
    assert "/api/openapi.json" in page
