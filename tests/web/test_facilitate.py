"""Facilitation pages: rounds, seeds, moderation queue, audit log; access, PRG, bad input, XSS."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from deliberate.models import AuditEvent, Role, Round, RoundState, Statement, Vote
from deliberate.services import statements as statements_service
from tests.conftest import PASSWORD

XSS = "<script>alert(1)</script>"


def count(db, model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def text_of(response) -> str:
    return response.get_data(as_text=True)


def round_settings(**overrides) -> dict:
    data = {
        "question": "What should our joint campaign ask for?",
        "context": "Some **background**.",
        "allow_member_statements": "y",
        "moderation": "pre",
        "statement_max_length": "280",
        "results_visibility": "after_voting",
        "author_display": "anonymous",
        "opens_at": "",
        "closes_at": "",
    }
    data.update(overrides)
    return data


def fresh(db, model, id_):
    db.session.expire_all()
    return db.session.get(model, id_)


def page_urls(round_id: int, statement_id: int) -> list[str]:
    return [
        "/facilitate/",
        "/facilitate/rounds/new",
        f"/facilitate/rounds/{round_id}",
        f"/facilitate/rounds/{round_id}/edit",
        f"/facilitate/rounds/{round_id}/moderation",
        f"/facilitate/rounds/{round_id}/moderation?state=all",
        "/facilitate/audit",
        f"/facilitate/audit?round={round_id}",
    ]


def post_urls(round_id: int, statement_id: int) -> list[str]:
    return [
        "/facilitate/rounds/new",
        f"/facilitate/rounds/{round_id}/edit",
        f"/facilitate/rounds/{round_id}/open",
        f"/facilitate/rounds/{round_id}/close",
        f"/facilitate/rounds/{round_id}/publish",
        f"/facilitate/rounds/{round_id}/seed",
        f"/facilitate/statements/{statement_id}/accept",
        f"/facilitate/statements/{statement_id}/reject",
        f"/facilitate/statements/{statement_id}/correct",
    ]


# --- access ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.FACILITATOR, Role.ADMIN])
def test_every_page_renders_for_facilitators_and_admins(client, factory, login_as, role, member):
    round_ = factory.round(statements=["Seed one is here."])
    pending = statements_service.submit_statement(member, round_.id, "Pending one")
    login_as(factory.user(role))
    for url in page_urls(round_.id, pending.id):
        response = client.get(url)
        assert response.status_code == 200, url


def test_members_and_leadership_are_refused(client, factory, login_as, member, db):
    round_ = factory.round(state=RoundState.DRAFT, statements=["Seed one is here."])
    statement = round_.statements[0]
    for user in (member, factory.user(Role.LEADERSHIP)):
        login_as(user)
        for url in page_urls(round_.id, statement.id):
            assert client.get(url).status_code == 403, url
        for url in post_urls(round_.id, statement.id):
            assert client.post(url, data={"reason": "x", "text": "y"}).status_code == 403, url
        client.post("/logout")
    assert fresh(db, Round, round_.id).state == "draft"
    assert count(db, AuditEvent) == 0


def test_anonymous_visitors_are_sent_to_login(client, factory):
    round_ = factory.round(statements=["Seed one is here."])
    for url in page_urls(round_.id, round_.statements[0].id):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"], url
    for url in post_urls(round_.id, round_.statements[0].id):
        assert client.post(url).status_code in (302, 401), url


def test_unknown_ids_are_404(as_facilitator):
    client = as_facilitator
    for url in page_urls(987654, 987654)[2:6]:
        assert client.get(url).status_code == 404, url
    for url in post_urls(987654, 987654)[1:]:
        response = client.post(url, data=round_settings(statements="x", reason="r", text="t"))
        assert response.status_code == 404, url


# --- creating and editing rounds -------------------------------------------------------


def test_create_round_post_redirect_get(as_facilitator, db, org):
    client = as_facilitator
    response = client.post(
        "/facilitate/rounds/new",
        data=round_settings(
            opens_at="2026-12-01T09:00",
            closes_at="2026-12-08T17:30",
            organisation_ids=[str(org.id)],
            moderation="post",
        ),
    )
    assert response.status_code == 303
    round_ = db.session.scalar(select(Round))
    assert response.headers["Location"].endswith(f"/facilitate/rounds/{round_.id}")
    assert round_.state == "draft" and round_.moderation == "post"
    # datetime-local values are UTC.
    assert round_.opens_at.isoformat() == "2026-12-01T09:00:00+00:00"
    assert round_.closes_at.isoformat() == "2026-12-08T17:30:00+00:00"
    assert [o.id for o in round_.organisations] == [org.id]
    page = client.get(response.headers["Location"])
    body = text_of(page)
    assert "Round created as a draft" in body
    assert "01 Dec 2026, 09:00 UTC" in body
    assert "<strong>background</strong>" in body
    assert count(db, AuditEvent, AuditEvent.action == "round.create") == 1


def test_new_round_form_says_times_are_utc(as_facilitator):
    body = text_of(as_facilitator.get("/facilitate/rounds/new"))
    assert 'type="datetime-local"' in body
    assert "UTC" in body
    assert 'name="csrf_token"' in body or "csrf" in body


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"question": "Hm?"}, "at least 5 characters"),
        ({"question": ""}, "Write the round&#39;s question."),
        ({"statement_max_length": "lots"}, "Statement length limit"),
        ({"statement_max_length": "5"}, "between 20 and 2000"),
        ({"moderation": "whenever"}, "Not a valid choice"),
        ({"opens_at": "tomorrow"}, "Opens at"),
        ({"opens_at": "2026-12-02T09:00", "closes_at": "2026-12-01T09:00"}, "after the opening"),
        ({"organisation_ids": ["99999"]}, "is not a valid choice"),
        ({"context": "x" * 20_001}, "context can be at most"),
    ],
)
def test_create_round_bad_input_is_400_and_writes_nothing(as_facilitator, db, overrides, message):
    response = as_facilitator.post("/facilitate/rounds/new", data=round_settings(**overrides))
    assert response.status_code == 400
    assert message in text_of(response)
    assert count(db, Round) == 0
    assert count(db, AuditEvent) == 0


def test_edit_round_prefills_and_saves(as_facilitator, db, factory):
    round_ = factory.round(state=RoundState.DRAFT, question="Original question?")
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/edit"))
    assert 'value="Original question?"' in body
    response = as_facilitator.post(
        f"/facilitate/rounds/{round_.id}/edit",
        data=round_settings(question="Better question?", statement_max_length="140"),
    )
    assert response.status_code == 303
    round_ = fresh(db, Round, round_.id)
    assert round_.question == "Better question?" and round_.statement_max_length == 140
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "round.update"))
    assert "question" in event.details["changed"]


def test_edit_form_keeps_audience_and_times(as_facilitator, db, factory, org):
    round_ = factory.round(state=RoundState.DRAFT)
    as_facilitator.post(f"/facilitate/rounds/{round_.id}/open")
    round_ = fresh(db, Round, round_.id)
    opened = round_.opens_at
    round_.organisations = [org]
    db.session.commit()
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/edit"))
    assert re.search(rf'<input checked[^>]*value="{org.id}"|value="{org.id}"[^>]*checked', body)
    assert opened.strftime("%Y-%m-%dT%H:%M") in body
    response = as_facilitator.post(
        f"/facilitate/rounds/{round_.id}/edit",
        data=round_settings(
            question=round_.question,
            context="",
            opens_at=opened.strftime("%Y-%m-%dT%H:%M"),
            organisation_ids=[str(org.id)],
        ),
    )
    assert response.status_code == 303
    round_ = fresh(db, Round, round_.id)
    assert round_.opens_at == opened
    assert [o.id for o in round_.organisations] == [org.id]
    assert count(db, AuditEvent, AuditEvent.action == "round.update") == 0


def test_edit_locked_setting_after_votes_is_refused(as_facilitator, db, factory, member):
    round_ = factory.round(statements=["Seed one is here."])
    statement = round_.statements[0]
    db.session.add(Vote(round_id=round_.id, statement_id=statement.id, user_id=member.id, value=1))
    db.session.commit()
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/edit"))
    assert "can no longer change" in body
    response = as_facilitator.post(
        f"/facilitate/rounds/{round_.id}/edit",
        data=round_settings(question=round_.question, moderation="post"),
    )
    assert response.status_code == 409
    assert "already voted" in text_of(response)
    assert fresh(db, Round, round_.id).moderation == "pre"


# --- state buttons ---------------------------------------------------------------------


def test_state_buttons_open_close_publish(as_facilitator, db, factory):
    round_ = factory.round(state=RoundState.DRAFT)
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}"))
    assert f'action="/facilitate/rounds/{round_.id}/open"' in body
    for action, state in (("open", "open"), ("close", "closed"), ("publish", "published")):
        response = as_facilitator.post(f"/facilitate/rounds/{round_.id}/{action}")
        assert response.status_code == 303
        assert response.headers["Location"].endswith(f"/facilitate/rounds/{round_.id}")
        assert fresh(db, Round, round_.id).state == state
    actions = list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions == ["round.open", "round.close", "round.publish"]


def test_bad_transition_is_409_with_message(as_facilitator, db, factory):
    round_ = factory.round(state=RoundState.DRAFT)
    response = as_facilitator.post(f"/facilitate/rounds/{round_.id}/publish")
    assert response.status_code == 409
    assert "only a closed round can be published" in text_of(response)
    assert fresh(db, Round, round_.id).state == "draft"


def test_state_buttons_are_get_proof(as_facilitator, factory):
    round_ = factory.round(state=RoundState.DRAFT)
    assert as_facilitator.get(f"/facilitate/rounds/{round_.id}/open").status_code == 405


# --- seeds -----------------------------------------------------------------------------


def test_seed_statements_paste_many(as_facilitator, db, factory):
    round_ = factory.round(state=RoundState.DRAFT, statements=["Already here."])
    response = as_facilitator.post(
        f"/facilitate/rounds/{round_.id}/seed",
        data={"statements": "First new one.\nSecond new one.\n\nalready   HERE.\n" + "x" * 300},
    )
    assert response.status_code == 303
    assert count(db, Statement, Statement.round_id == round_.id) == 3
    body = text_of(as_facilitator.get(response.headers["Location"]))
    assert "Added 2 statements." in body
    assert "Skipped 1 already in the round" in body
    assert "Skipped 1 longer than the limit" in body
    assert "First new one." in body


def test_seed_empty_is_400(as_facilitator, db, factory):
    round_ = factory.round(state=RoundState.DRAFT)
    response = as_facilitator.post(f"/facilitate/rounds/{round_.id}/seed", data={"statements": ""})
    assert response.status_code == 400
    assert "Paste at least one statement" in text_of(response)
    response = as_facilitator.post(
        f"/facilitate/rounds/{round_.id}/seed", data={"statements": "  \n \n"}
    )
    assert response.status_code == 400
    assert count(db, Statement) == 0


# --- moderation ------------------------------------------------------------------------


def test_moderation_queue_empty_state_and_count(as_facilitator, factory, member):
    round_ = factory.round(statements=["Seed one is here."])
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation"))
    assert "Nothing is waiting for moderation" in body
    assert re.search(r"<strong>0</strong> statements waiting", body)
    statements_service.submit_statement(member, round_.id, "Pending one")
    statements_service.submit_statement(member, round_.id, "Pending two")
    body = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation"))
    assert re.search(r"<strong>2</strong> statements waiting", body)
    assert "Pending one" in body and "Pending two" in body
    assert "Seed one is here." not in body
    assert 'for="reason-' in body and 'for="text-' in body


def test_accept_flow(as_facilitator, db, factory, member):
    round_ = factory.round()
    statement = statements_service.submit_statement(member, round_.id, "Please accept me")
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/accept", data={"state": "pending"}
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith(
        f"/facilitate/rounds/{round_.id}/moderation?state=pending"
    )
    assert fresh(db, Statement, statement.id).moderation_state == "accepted"
    assert "Statement accepted" in text_of(as_facilitator.get(response.headers["Location"]))
    # Accepting twice is a conflict with a message, not a crash.
    again = as_facilitator.post(f"/facilitate/statements/{statement.id}/accept")
    assert again.status_code == 409 and "already accepted" in text_of(again)


def test_reject_needs_reason(as_facilitator, db, factory, member):
    round_ = factory.round()
    statement = statements_service.submit_statement(member, round_.id, "Please reject me")
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/reject", data={"reason": "   "}
    )
    assert response.status_code == 400
    assert "reason" in text_of(response).lower()
    assert fresh(db, Statement, statement.id).moderation_state == "pending"
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/reject", data={"reason": "x" * 501}
    )
    assert response.status_code == 400 and "at most 500" in text_of(response)
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/reject", data={"reason": "Off topic"}
    )
    assert response.status_code == 303
    statement = fresh(db, Statement, statement.id)
    assert statement.moderation_state == "rejected" and statement.moderation_reason == "Off topic"
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.reject"))
    assert event.details["reason"] == "Off topic"


def test_correct_keeps_original(as_facilitator, db, factory, member):
    round_ = factory.round(statements=["Existing statement"])
    statement = statements_service.submit_statement(member, round_.id, "Fund the sheltrs")
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/correct",
        data={"text": "Fund the shelters", "state": "all"},
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith("moderation?state=all")
    statement = fresh(db, Statement, statement.id)
    assert statement.text == "Fund the shelters"
    assert statement.revisions[0].previous_text == "Fund the sheltrs"
    body = text_of(as_facilitator.get(response.headers["Location"]))
    assert "Earlier versions (1)" in body and "Fund the sheltrs" in body
    # A correction that duplicates another statement is refused; the draft stays on the form.
    response = as_facilitator.post(
        f"/facilitate/statements/{statement.id}/correct", data={"text": "existing STATEMENT"}
    )
    assert response.status_code == 409
    assert "already exists" in text_of(response)
    assert "existing STATEMENT" in text_of(response)
    assert fresh(db, Statement, statement.id).text == "Fund the shelters"


def test_unknown_queue_state_falls_back_to_pending(as_facilitator, factory):
    round_ = factory.round()
    response = as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?state=<x>")
    assert response.status_code == 200
    assert '<strong aria-current="page">Waiting</strong>' in text_of(response)


# --- audit log -------------------------------------------------------------------------


def test_audit_log_shows_events_newest_first_and_filters(as_facilitator, db, factory, member):
    one = factory.round(state=RoundState.DRAFT, question="Round one question?")
    two = factory.round(state=RoundState.DRAFT, question="Round two question?")
    as_facilitator.post(f"/facilitate/rounds/{one.id}/open")
    as_facilitator.post(f"/facilitate/rounds/{two.id}/open")
    statement = statements_service.submit_statement(member, two.id, "Rejected text")
    as_facilitator.post(f"/facilitate/statements/{statement.id}/reject", data={"reason": "Spam!"})
    body = text_of(as_facilitator.get("/facilitate/audit"))
    assert body.index("statement.reject") < body.index("round.open")
    assert "Fran Facilitator" in body and "Spam!" in body
    filtered = text_of(as_facilitator.get(f"/facilitate/audit?round={one.id}"))
    assert "round.open" in filtered and "statement.reject" not in filtered
    assert text_of(as_facilitator.get("/facilitate/audit?round=nonsense")).count("<tr>") >= 3


def test_audit_log_paginates(as_facilitator, db, factory, facilitator):
    from deliberate.services import audit

    for i in range(55):
        audit.record(facilitator, "test.event", n=i)
    db.session.commit()
    first = text_of(as_facilitator.get("/facilitate/audit"))
    assert "n</dt>\n          <dd>54</dd>" in first or ">54<" in first
    match = re.search(r'href="(/facilitate/audit\?before=\d+)"', first)
    assert match, "an Older events link"
    second = text_of(as_facilitator.get(match.group(1).replace("&amp;", "&")))
    assert ">0<" in second and ">54<" not in second
    assert "Newest events" in second


# --- escaping --------------------------------------------------------------------------


def test_member_text_and_markup_are_escaped_everywhere(
    as_facilitator, db, factory, member, facilitator
):
    round_ = factory.round(
        question=f"<b>Bold</b> question {XSS}?",
        context=f"Intro {XSS}\n\n[click me](javascript:alert(1)) <img src=x onerror=alert(1)>",
        statements=[f"Seed {XSS}"],
    )
    statement = statements_service.submit_statement(member, round_.id, f"Member {XSS}")
    statements_service.reject_statement(facilitator, statement.id, f"Reason {XSS}")
    statements_service.accept_statement(facilitator, statement.id)
    statements_service.correct_statement(facilitator, statement.id, f"Fixed {XSS}")
    for url in page_urls(round_.id, statement.id):
        body = text_of(as_facilitator.get(url))
        assert "<script>alert(1)</script>" not in body, url
        assert "<b>Bold</b>" not in body, url
        assert 'href="javascript:' not in body, url
        assert "<img" not in body, url
    detail = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    queue = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?state=all"))
    assert "Fixed &lt;script&gt;" in queue


# --- CSRF ------------------------------------------------------------------------------


def csrf_token(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def test_posts_need_a_csrf_token(app_config, request):
    app_config["WTF_CSRF_ENABLED"] = True
    client = request.getfixturevalue("client")
    db = request.getfixturevalue("db")
    factory = request.getfixturevalue("factory")
    facilitator = factory.user(Role.FACILITATOR)
    round_ = factory.round(state=RoundState.DRAFT)
    token = csrf_token(text_of(client.get("/login")))
    response = client.post(
        "/login", data={"email": facilitator.email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code in (302, 303)
    for url in post_urls(round_.id, 1):
        response = client.post(url, data=round_settings(statements="A seed statement"))
        assert response.status_code == 400, url
    assert fresh(db, Round, round_.id).state == "draft"
    assert count(db, Statement) == 0
    page = text_of(client.get(f"/facilitate/rounds/{round_.id}"))
    token = csrf_token(page)
    response = client.post(f"/facilitate/rounds/{round_.id}/open", data={"csrf_token": token})
    assert response.status_code == 303
    assert fresh(db, Round, round_.id).state == "open"


def test_ids_too_large_for_the_database_are_404_not_500(as_facilitator):
    big = 10**20
    for url in page_urls(big, big)[2:6]:
        assert as_facilitator.get(url).status_code == 404, url
    for url in post_urls(big, big)[1:]:
        assert as_facilitator.post(url, data={"reason": "r", "text": "t"}).status_code == 404, url
    assert as_facilitator.get(f"/facilitate/audit?round={big}&before={big}").status_code == 200
