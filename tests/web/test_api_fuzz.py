"""Fuzzing the JSON API from its own OpenAPI document (schemathesis, in-process over WSGI).

Requests are generated from /api/openapi.json by schemathesis's hypothesis strategies, both
valid ones (positive) and ones that break the schema (negative: wrong types, values out of
range, missing and extra fields), sometimes aimed at the sample round and its statements so
that they reach the services and not only the 404 of an unknown id. Each goes to the Flask app
in-process with a valid API token. For every response:

- no 5xx;
- the response conforms to the document (status code documented, JSON content type, body
  valid against the response schema) and carries nosniff;
- a refused request (4xx) wrote nothing: every table is as it was, row for row;
- no markup reflected: an error never contains "<script" or other markup sent in.

Hypothesis is derandomised with a bounded number of examples, so CI sees the same requests
every run; it takes a few seconds.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deliberate.models import ModerationMode, ResultsVisibility, Role
from deliberate.services import api_tokens, voting
from deliberate.services.snapshots import refresh_snapshot
from deliberate.web.openapi import openapi_document
from tests.web.robustness import db_state

MAX_EXAMPLES = 150
MARKUP = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "<svg/onload=alert(1)>"]


@pytest.fixture
def world(app, db, factory):
    """A member with a token, an open round with statements, votes and an analysis."""
    app.config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 4}
    org = factory.organisation("Fuzz org")
    member = factory.user(Role.MEMBER, organisation=org)
    round_ = factory.round(
        statements=[f"Fuzz statement {i}" for i in range(6)],
        moderation=ModerationMode.POST.value,
        results_visibility=ResultsVisibility.AFTER_VOTING.value,
    )
    round_.organisations = [org]
    db.session.commit()
    sids = [s.id for s in round_.statements]
    for n in range(6):
        voter = factory.user(Role.MEMBER, organisation=org)
        for k, sid in enumerate(sids):
            voting.cast_vote(voter, sid, 1 if (n + k) % 3 else -1, round_id=round_.id)
    for sid in sids[:4]:
        voting.cast_vote(member, sid, 1, round_id=round_.id)
    refresh_snapshot(round_.id, force=True)
    secret = api_tokens.create_token(member, "fuzzing").secret
    return {"round": round_.id, "statements": sids, "token": secret}


def _comparable(state: dict) -> dict:
    """The database state, less the token's last-used time (a request may record it)."""
    state = dict(state)
    state.pop("api_tokens", None)
    return state


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.xdist_group("api_fuzz")
def test_fuzz_every_api_operation_from_the_openapi_document(app, db, world):
    schema = schemathesis.openapi.from_dict(openapi_document())
    rid = world["round"]
    auth = {"Authorization": f"Bearer {world['token']}"}
    client = app.test_client()
    assert client.get("/api/v1/me", headers=auth).status_code == 200  # records "last used" now

    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters={"round_id": rid}),
        schema.as_strategy(GenerationMode.NEGATIVE, path_parameters={"round_id": rid}),
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
    )
    seen: dict[str, set[int]] = {}

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        case = data.draw(cases)
        body = case.body
        if isinstance(body, dict) and "statement_id" in body and data.draw(st.booleans()):
            body["statement_id"] = data.draw(st.sampled_from(world["statements"]))
        if isinstance(body, dict) and "text" in body and data.draw(st.booleans()):
            body["text"] = data.draw(st.sampled_from(MARKUP))
        before = _comparable(db_state(db))
        response = case.call(app=app, headers=auth)
        after = _comparable(db_state(db))
        case.validate_response(response, checks=CHECKS)
        label = f"{case.method} {case.formatted_path}"
        seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
        assert response.headers.get("x-content-type-options") == ["nosniff"], label
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/json"), (label, content_type)
        if response.status_code >= 400:
            changed = [name for name in before if before[name] != after[name]]
            assert changed == [], f"{label} refused ({response.status_code}) but changed {changed}"
            text = response.content.decode("utf-8", "replace")
            assert "<script" not in text and "<img" not in text and "<svg" not in text, text
        elif case.method == "GET":
            assert before == after, f"{label} changed the database"

    run()
    # Every operation was exercised, and some requests got past validation to the services.
    operations = {
        f"{m.upper()} {p}" for p, item in openapi_document()["paths"].items() for m in item
    }
    assert set(seen) == operations, sorted(operations - set(seen))
    assert any(200 <= s < 300 for s in seen["POST /api/v1/rounds/{round_id}/votes"])
    assert any(200 <= s < 300 for s in seen["POST /api/v1/rounds/{round_id}/statements"])
    assert any(200 <= s < 300 for s in seen["GET /api/v1/rounds/{round_id}/results"])


@pytest.mark.parametrize("payload", MARKUP)
def test_markup_in_every_parameter_is_never_reflected(client, db, world, payload):
    """Markup sent in the query, the path and every body field comes back in no error."""
    auth = {"Authorization": f"Bearer {world['token']}"}
    rid = world["round"]
    before = _comparable(db_state(db))
    responses = [
        client.get(f"/api/v1/rounds?page={payload}", headers=auth),
        client.get(f"/api/v1/rounds/{rid}/statements?per_page={payload}", headers=auth),
        client.get(f"/api/v1/rounds/{rid}/results?sort={payload}", headers=auth),
        client.get(f"/api/v1/rounds/{payload}", headers=auth),
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {payload}"}),
        client.post(
            f"/api/v1/rounds/{rid}/votes", json={"statement_id": payload, "value": 1}, headers=auth
        ),
        client.post(
            f"/api/v1/rounds/{rid}/votes",
            json={"statement_id": world["statements"][0], "value": payload},
            headers=auth,
        ),
        client.post(f"/api/v1/rounds/{rid}/votes", json={payload: 1}, headers=auth),
        client.post(f"/api/v1/rounds/{rid}/statements", json={"text": [payload]}, headers=auth),
        client.post(
            f"/api/v1/rounds/{rid}/statements",
            data=payload,
            headers=auth,
            content_type="application/json",
        ),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.status_code
        assert response.mimetype == "application/json"
        assert "<" not in response.get_json()["error"]["message"].replace("<token>", "")
    assert _comparable(db_state(db)) == before
