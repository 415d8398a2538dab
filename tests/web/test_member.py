"""Member pages and the JSON vote API: the no-JavaScript flow, bad input, CSRF, escaping."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from deliberate.models import Role, Statement, Vote, VoteEvent
from tests.conftest import PASSWORD

SEEDS = ["Housing first", "More legal aid", "Joint press line", "Shared training fund"]


def count(db, model) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model))


def text_of(response) -> str:
    return response.get_data(as_text=True)


def current_statement_id(html: str) -> int:
    match = re.search(r'name="statement_id" value="(\d+)"', html)
    assert match, "no statement on the page"
    return int(match.group(1))


def csrf_from_meta(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match
    return match.group(1)


@pytest.fixture
def org(factory):
    return factory.organisation("Welcome Leeds")


@pytest.fixture
def member(factory, org):
    return factory.user(Role.MEMBER, organisation=org)


@pytest.fixture
def round_(factory):
    return factory.round(
        question="What should the coalition campaign for?",
        context="Read the **briefing** first.",
        statements=SEEDS,
    )


@pytest.fixture
def member_client(login_as, member):
    return login_as(member)


# --- pages -----------------------------------------------------------------------------


def test_anonymous_member_pages_redirect_to_login(client, round_):
    for path in ("/rounds", f"/rounds/{round_.id}", f"/rounds/{round_.id}/votes"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    response = client.post(f"/rounds/{round_.id}/vote", data={"statement_id": 1, "value": 1})
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_rounds_list_shows_open_rounds_first_with_progress(db, factory, member_client, round_):
    factory.round(question="Last year's priorities?", state="closed", statements=["Old"])
    factory.round(question="A draft nobody sees?", state="draft")
    html = text_of(member_client.get("/rounds"))
    assert html.index("What should the coalition campaign for?") < html.index(
        "Last year&#39;s priorities?"
    )
    assert "You have voted on 0 of 4 statements." in html
    assert "A draft nobody sees?" not in html
    assert html.count("<h1") == 1


def test_round_page_offers_one_statement_with_three_labelled_buttons(member_client, round_):
    response = member_client.get(f"/rounds/{round_.id}")
    assert response.status_code == 200
    html = text_of(response)
    assert html.count("<h1") == 1
    assert "<strong>briefing</strong>" in html  # context rendered as Markdown
    assert re.search(
        r"<span data-progress-voted>0</span> of <span data-progress-total>4</span>", html
    )
    for label, value in (("Agree", "1"), ("Disagree", "-1"), ("Pass", "0")):
        assert re.search(
            rf'<button type="submit" name="value" value="{value}"[^>]*>{label}</button>', html
        )
    assert f'action="/rounds/{round_.id}/vote"' in html
    assert current_statement_id(html) in {s.id for s in round_.statements}
    assert 'aria-live="polite"' in html
    assert "Keyboard shortcuts" in html and "<kbd>A</kbd>" in html
    assert f'href="/rounds/{round_.id}/votes"' in html
    # Scripts only from files: the CSP forbids inline script.
    assert re.search(r'<script src="/static/js/vote.js" defer></script>', html)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "onclick" not in html and "style=" not in html
    assert '="None"' not in html  # no attribute rendered from a Python None
    # The statement form with the round's length limit.
    assert 'maxlength="280"' in html and 'for="text"' in html


def test_no_javascript_flow_votes_through_every_statement(db, member_client, member, round_):
    seen = []
    for step in range(len(SEEDS)):
        html = text_of(member_client.get(f"/rounds/{round_.id}"))
        statement_id = current_statement_id(html)
        assert statement_id not in seen
        seen.append(statement_id)
        response = member_client.post(
            f"/rounds/{round_.id}/vote", data={"statement_id": statement_id, "value": "-1"}
        )
        assert response.status_code == 303
        assert response.headers["Location"].endswith(f"/rounds/{round_.id}")
        html = text_of(member_client.get(response.headers["Location"]))
        assert "Vote recorded." in html
        assert f"<span data-progress-voted>{step + 1}</span>" in html
    assert "You have voted on every statement" in html
    assert 'id="vote-area" hidden' in html
    assert count(db, Vote) == len(SEEDS)


def test_changing_a_vote_on_the_votes_page(db, member_client, member, round_):
    statement = round_.statements[0]
    member_client.post(
        f"/rounds/{round_.id}/vote", data={"statement_id": statement.id, "value": "1"}
    )
    html = text_of(member_client.get(f"/rounds/{round_.id}/votes"))
    assert html.count("<h1") == 1
    assert 'aria-pressed="true"' in html and "(your vote)" in html
    pressed = re.search(r'value="(-?\d)"[^>]*aria-pressed="true"', html)
    assert pressed.group(1) == "1"

    response = member_client.post(
        f"/rounds/{round_.id}/vote",
        data={"statement_id": statement.id, "value": "0", "next": "votes"},
    )
    assert response.status_code == 303
    assert f"/rounds/{round_.id}/votes#statement-{statement.id}" in response.headers["Location"]
    html = text_of(member_client.get(f"/rounds/{round_.id}/votes"))
    assert "Vote changed." in html
    assert re.search(r'value="(-?\d)"[^>]*aria-pressed="true"', html).group(1) == "0"
    assert count(db, Vote) == 1 and count(db, VoteEvent) == 2


def test_next_parameter_is_not_an_open_redirect(member_client, round_):
    response = member_client.post(
        f"/rounds/{round_.id}/vote",
        data={
            "statement_id": round_.statements[0].id,
            "value": "1",
            "next": "https://evil.example",
        },
    )
    assert response.headers["Location"].endswith(f"/rounds/{round_.id}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"value": "1"}, "Choose a statement to vote on."),
        ({"statement_id": "abc", "value": "1"}, "Choose a statement to vote on."),
        (
            {"statement_id": "{sid}", "value": "2"},
            "A vote is agree (1), pass (0) or disagree (-1).",
        ),
        (
            {"statement_id": "{sid}", "value": "yes"},
            "A vote is agree (1), pass (0) or disagree (-1).",
        ),
        ({"statement_id": "{sid}"}, "A vote is agree (1), pass (0) or disagree (-1)."),
        ({"statement_id": "999999", "value": "1"}, "No such statement."),
        ({"statement_id": "9" * 30, "value": "1"}, "No such statement."),
    ],
)
def test_bad_form_votes_are_flashed_and_nothing_is_written(
    db, member_client, round_, data, message
):
    data = {k: v.replace("{sid}", str(round_.statements[0].id)) for k, v in data.items()}
    response = member_client.post(f"/rounds/{round_.id}/vote", data=data)
    assert response.status_code == 303
    html = text_of(member_client.get(response.headers["Location"]))
    assert message in html and "flash-error" in html
    assert count(db, Vote) == 0


def test_closed_round_shows_no_vote_form_and_refuses_votes(db, factory, member_client):
    round_ = factory.round(state="closed", statements=["Old idea"])
    html = text_of(member_client.get(f"/rounds/{round_.id}"))
    assert "voting has ended" in html and 'id="vote-form"' not in html
    assert 'id="statement-form"' not in html
    response = member_client.post(
        f"/rounds/{round_.id}/vote", data={"statement_id": round_.statements[0].id, "value": "1"}
    )
    html = text_of(member_client.get(response.headers["Location"]))
    assert "This round is not open for voting." in html
    assert count(db, Vote) == 0


def test_rounds_the_member_may_not_see_are_not_found(db, factory, member_client):
    draft = factory.round(state="draft", statements=["Draft"])
    foreign = factory.round(statements=["Theirs"])
    foreign.organisations = [factory.organisation()]
    db.session.commit()
    for round_id in (draft.id, foreign.id, 999_999):
        assert member_client.get(f"/rounds/{round_id}").status_code == 404
        assert member_client.get(f"/rounds/{round_id}/votes").status_code == 404
        response = member_client.post(
            f"/rounds/{round_id}/vote", data={"statement_id": 1, "value": 1}
        )
        assert response.status_code == 404
    assert count(db, Vote) == 0


def test_facilitator_outside_the_audience_can_read_but_not_vote(db, factory, login_as):
    round_ = factory.round(statements=["For them"])
    round_.organisations = [factory.organisation()]
    db.session.commit()
    client = login_as(factory.user(Role.FACILITATOR, organisation=factory.organisation()))
    html = text_of(client.get(f"/rounds/{round_.id}"))
    assert "cannot vote in it" in html and 'id="vote-form"' not in html


# --- writing a statement ---------------------------------------------------------------


def test_statement_in_a_pre_moderated_round_waits_for_moderation(db, member_client, round_):
    response = member_client.post(
        f"/rounds/{round_.id}/statements", data={"text": "Fund interpreters at every clinic"}
    )
    assert response.status_code == 303
    html = text_of(member_client.get(response.headers["Location"]))
    assert "waits for moderation" in html
    statement = db.session.scalars(select(Statement).where(Statement.origin == "member")).one()
    assert statement.moderation_state == "pending"


def test_statement_in_a_post_moderated_round_is_in_the_round(db, factory, member_client):
    round_ = factory.round(moderation="post", statements=SEEDS)
    response = member_client.post(
        f"/rounds/{round_.id}/statements", data={"text": "Fund interpreters at every clinic"}
    )
    html = text_of(member_client.get(response.headers["Location"]))
    assert "is now in the round" in html


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        ("  housing   FIRST ", 409, "already exists"),
        ("   ", 400, "Write a statement first."),
        ("x" * 281, 400, "at most 280 characters"),
    ],
)
def test_refused_statements_keep_the_text(db, member_client, round_, text, status, message):
    response = member_client.post(f"/rounds/{round_.id}/statements", data={"text": text})
    assert response.status_code == status
    html = text_of(response)
    assert message in html and "flash-error" in html
    if text.strip():
        assert text in html  # kept in the textarea
    assert count(db, Statement) == len(SEEDS)


def test_no_statement_form_when_members_may_not_write(factory, member_client):
    round_ = factory.round(allow_member_statements=False, statements=SEEDS)
    html = text_of(member_client.get(f"/rounds/{round_.id}"))
    assert 'id="statement-form"' not in html


# --- escaping --------------------------------------------------------------------------


def test_member_text_is_escaped_on_the_vote_and_votes_pages(db, factory, member_client):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    round_ = factory.round(statements=[evil])
    html = text_of(member_client.get(f"/rounds/{round_.id}"))
    assert evil not in html
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    )
    member_client.post(
        f"/rounds/{round_.id}/vote", data={"statement_id": round_.statements[0].id, "value": "1"}
    )
    html = text_of(member_client.get(f"/rounds/{round_.id}/votes"))
    assert evil not in html and "&lt;script&gt;" in html


# --- the JSON API ----------------------------------------------------------------------


def test_json_vote_happy_path(db, member_client, round_):
    first_id = round_.statements[0].id
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": first_id, "value": 1}
    )
    assert response.status_code == 200
    data = response.get_json()
    assert data["recorded"] is True and data["changed"] is False and data["status"] == "new"
    assert data["progress"] == {"voted": 1, "total": 4}
    assert data["next"]["id"] != first_id
    assert set(data["next"]) == {"id", "text", "author_label"}

    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": first_id, "value": -1}
    )
    data = response.get_json()
    assert data["changed"] is True and data["progress"] == {"voted": 1, "total": 4}

    for statement in round_.statements[1:]:
        data = member_client.post(
            f"/api/rounds/{round_.id}/votes", json={"statement_id": statement.id, "value": 0}
        ).get_json()
    assert data["next"] is None and data["progress"] == {"voted": 4, "total": 4}
    assert count(db, Vote) == 4 and count(db, VoteEvent) == 5


def test_json_next_statement(member_client, round_):
    data = member_client.get(f"/api/rounds/{round_.id}/next").get_json()
    assert data["progress"] == {"voted": 0, "total": 4}
    assert data["next"]["id"] in {s.id for s in round_.statements}


def test_json_next_statement_follows_votes_and_the_round_state(db, factory, member_client, org):
    round_ = factory.round(author_display="organisation", moderation="post", statements=["Seed"])
    seed = round_.statements[0]
    db.session.add(
        Statement(
            round_id=round_.id,
            text="Written by someone from Leeds",
            normalised_text="written by someone from leeds",
            author_id=factory.user(Role.MEMBER, organisation=org).id,
            origin="member",
            moderation_state="pending",  # shown at once under post-moderation
        )
    )
    db.session.commit()
    member_client.post(f"/api/rounds/{round_.id}/votes", json={"statement_id": seed.id, "value": 1})
    data = member_client.get(f"/api/rounds/{round_.id}/next").get_json()
    assert data["accepting"] is True and data["progress"] == {"voted": 1, "total": 2}
    assert data["next"]["author_label"] == "Written by a member of Welcome Leeds"
    round_.state = "closed"
    db.session.commit()
    data = member_client.get(f"/api/rounds/{round_.id}/next").get_json()
    assert data == {"accepting": False, "progress": {"voted": 1, "total": 2}, "next": None}


BAD_BODIES = [
    ("not json at all", "application/json", 400),
    ("", "application/json", 400),
    ("[1, 1]", "application/json", 400),
    ('"text"', "application/json", 400),
    ("{}", "application/json", 400),
    ('{"statement_id": SID}', "application/json", 400),
    ('{"value": 1}', "application/json", 400),
    ('{"statement_id": SID, "value": "1"}', "application/json", 400),
    ('{"statement_id": SID, "value": true}', "application/json", 400),
    ('{"statement_id": SID, "value": 1.0}', "application/json", 400),
    ('{"statement_id": SID, "value": 2}', "application/json", 400),
    ('{"statement_id": SID, "value": null}', "application/json", 400),
    ('{"statement_id": "SID", "value": 1}', "application/json", 400),
    ('{"statement_id": true, "value": 1}', "application/json", 400),
    ('{"statement_id": -5, "value": 1}', "application/json", 400),
    ('{"statement_id": 1e400, "value": 1}', "application/json", 400),
    ('{"statement_id": 999999, "value": 1}', "application/json", 404),
    ('{"statement_id": 100000000000000000000000000000, "value": 1}', "application/json", 404),
    ("statement_id=SID&value=1", "application/x-www-form-urlencoded", 400),
]


@pytest.mark.parametrize(("body", "content_type", "status"), BAD_BODIES)
def test_bad_json_votes_get_a_clear_4xx_and_write_nothing(
    db, member_client, round_, body, content_type, status
):
    body = body.replace("SID", str(round_.statements[0].id))
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", data=body, content_type=content_type
    )
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["status"] == status and len(error["message"]) > 10
    assert count(db, Vote) == 0 and count(db, VoteEvent) == 0


def test_json_vote_on_a_statement_of_another_round_is_not_found(db, factory, member_client, round_):
    other = factory.round(statements=["Elsewhere"])
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": other.statements[0].id, "value": 1}
    )
    assert response.status_code == 404 and response.get_json()["error"]["message"]
    assert count(db, Vote) == 0


def test_json_vote_in_a_closed_round_is_a_conflict(db, factory, member_client):
    round_ = factory.round(state="closed", statements=["Old"])
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": round_.statements[0].id, "value": 1}
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["message"] == "This round is not open for voting."


def test_json_vote_on_own_statement_is_refused(db, factory, member, member_client):
    round_ = factory.round(moderation="post")
    statement = Statement(
        round_id=round_.id,
        text="Mine",
        normalised_text="mine",
        author_id=member.id,
        origin="member",
        moderation_state="pending",
    )
    db.session.add(statement)
    db.session.commit()
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": statement.id, "value": 1}
    )
    assert response.status_code == 403
    assert count(db, Vote) == 0


def test_anonymous_json_requests_get_401_json(client, round_):
    response = client.post(
        f"/api/rounds/{round_.id}/votes", json={"statement_id": round_.statements[0].id, "value": 1}
    )
    assert response.status_code == 401
    assert response.get_json()["error"]["status"] == 401
    assert client.get(f"/api/rounds/{round_.id}/next").status_code == 401


def test_huge_json_body_is_refused(db, member_client, round_):
    body = json.dumps({"statement_id": round_.statements[0].id, "value": 1, "pad": "x" * 3_000_000})
    response = member_client.post(
        f"/api/rounds/{round_.id}/votes", data=body, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["status"] == 413
    assert count(db, Vote) == 0


def test_json_vote_on_an_invisible_round_is_not_found(db, factory, member_client):
    draft = factory.round(state="draft", statements=["Draft"])
    response = member_client.post(
        f"/api/rounds/{draft.id}/votes", json={"statement_id": draft.statements[0].id, "value": 1}
    )
    assert response.status_code == 404
    assert member_client.get(f"/api/rounds/{draft.id}/next").status_code == 404


# --- CSRF switched on ------------------------------------------------------------------


def test_csrf_on_json_vote_needs_the_header_from_the_page(app_config, tmp_path):
    from deliberate import create_app
    from deliberate.extensions import db as _db
    from deliberate.models import Organisation, Round, User
    from deliberate.services.passwords import hash_password

    app_config["WTF_CSRF_ENABLED"] = True
    app = create_app(app_config)
    with app.app_context():
        org = Organisation(name="Welcome York")
        _db.session.add(org)
        _db.session.flush()
        user = User(
            email="csrf@example.org",
            name="Csrf Member",
            role="member",
            organisation_id=org.id,
            password_hash=hash_password(PASSWORD),
        )
        round_ = Round(question="Is CSRF on?", state="open")
        _db.session.add_all([user, round_])
        _db.session.flush()
        statement = Statement(
            round_id=round_.id,
            text="Yes",
            normalised_text="yes",
            origin="seed",
            moderation_state="accepted",
        )
        _db.session.add(statement)
        _db.session.commit()
        round_id, statement_id = round_.id, statement.id

        client = app.test_client()
        login_page = text_of(client.get("/login"))
        token = csrf_from_meta(login_page)
        # Without a token even the login is refused.
        refused = client.post("/login", data={"email": "csrf@example.org", "password": PASSWORD})
        assert refused.status_code == 400
        response = client.post(
            "/login",
            data={"email": "csrf@example.org", "password": PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 303

        page = text_of(client.get(f"/rounds/{round_id}"))
        token = csrf_from_meta(page)
        url = f"/api/rounds/{round_id}/votes"
        body = {"statement_id": statement_id, "value": 1}
        response = client.post(url, json=body)
        assert response.status_code == 400
        assert "security token" in response.get_json()["error"]["message"]
        response = client.post(url, json=body, headers={"X-CSRFToken": "forged"})
        assert response.status_code == 400
        assert count(_db, Vote) == 0
        # The plain form without its hidden token is refused too.
        response = client.post(f"/rounds/{round_id}/vote", data=body)
        assert response.status_code == 400
        assert count(_db, Vote) == 0

        response = client.post(url, json=body, headers={"X-CSRFToken": token})
        assert response.status_code == 200 and response.get_json()["recorded"] is True
        # And the form with the hidden field from the page works.
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        response = client.post(
            f"/rounds/{round_id}/vote", data={**body, "value": -1, "csrf_token": form_token}
        )
        assert response.status_code == 303
        assert count(_db, Vote) == 1 and count(_db, VoteEvent) == 2
        _db.session.remove()
        _db.engine.dispose()
