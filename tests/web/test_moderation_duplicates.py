"""The moderation page: near-duplicate flags and merging a statement into another."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Role, Statement, Vote
from deliberate.services import statements as statements_service
from tests.conftest import PASSWORD, login

XSS = "<script>alert(1)</script>"
SEED = "Fund more shelters for families"


@pytest.fixture
def round_(factory):
    return factory.round(
        moderation="post", statements=[SEED, "A joint press line for the coalition"]
    )


def seed_id(round_, text: str = SEED) -> int:
    return next(s.id for s in round_.statements if s.text == text)


def text_of(response) -> str:
    return response.get_data(as_text=True)


def fresh(db, id_: int) -> Statement:
    db.session.expire_all()
    return db.session.get(Statement, id_)


def queue_url(round_, state: str = "pending") -> str:
    return f"/facilitate/rounds/{round_.id}/moderation?state={state}"


def into_input(statement_id: int, value) -> str:
    """The merge form's number input of a statement, as rendered with its value."""
    return (
        f'id="into-{statement_id}" name="into" min="1" step="1" inputmode="numeric" value="{value}"'
    )


def merge(client, statement_id: int, into, **extra):
    return client.post(f"/facilitate/statements/{statement_id}/merge", data={"into": into, **extra})


# --- the flag ----------------------------------------------------------------------------


def test_near_duplicates_are_flagged_with_escaped_text(as_facilitator, factory, member):
    round_ = factory.round(statements=[f"{SEED} {XSS}", "Free legal advice for every refugee"])
    target = round_.statements[0].id
    copy = statements_service.submit_statement(
        member, round_.id, f"{XSS} fund more SHELTER, families!"
    )
    unrelated = statements_service.submit_statement(member, round_.id, "A shared training budget")
    body = text_of(as_facilitator.get(queue_url(round_)))
    assert XSS not in body
    flag = re.search(rf'Possible duplicate of <a href="([^"]+)">#{target}</a>: ([^<]*)</li>', body)
    assert flag, "a flag on the copy"
    link = html.unescape(flag.group(1))  # the page that starts at the statement it duplicates
    assert (
        link
        == f"/facilitate/rounds/{round_.id}/moderation?state=all&at={target}#statement-{target}"
    )
    assert flag.group(2) == "Fund more shelters for families &lt;script&gt;alert(1)&lt;/script&gt;"
    assert f'id="statement-{target}"' in text_of(as_facilitator.get(link))
    # Flagged once (the seed is accepted, so not in the waiting queue); the merge form of the copy
    # is prefilled with it, the unrelated statement's is empty.
    assert body.count("Possible duplicate of") == 1
    assert into_input(copy.id, target) in body
    assert into_input(unrelated.id, "") in body
    assert f'<label for="into-{copy.id}">' in body
    # On the "all" tab both of the pair are flagged, each pointing at the other.
    everything = text_of(as_facilitator.get(queue_url(round_, "all")))
    assert everything.count("Possible duplicate of") == 2
    assert f">#{copy.id}</a>: &lt;script&gt;alert(1)&lt;/script&gt; fund more SHELTER" in everything


def test_no_flags_without_near_duplicates_or_for_rejected(
    as_facilitator, db, round_, member, facilitator
):
    copy = statements_service.submit_statement(
        member, round_.id, "Fund more shelters for the families"
    )
    assert "Possible duplicate of" in text_of(as_facilitator.get(queue_url(round_)))
    statements_service.reject_statement(facilitator, copy.id, "Spam")
    for state in ("pending", "rejected", "all"):
        assert "Possible duplicate of" not in text_of(as_facilitator.get(queue_url(round_, state)))


# --- merging -----------------------------------------------------------------------------


def test_merge_end_to_end(app, db, factory, org, round_, member, as_facilitator, facilitator):
    target = seed_id(round_)
    copy = statements_service.submit_statement(
        member, round_.id, "Fund more shelters for the families"
    )
    # Post-moderation: voters see the copy at once, and one votes on it.
    early = factory.user(Role.MEMBER, organisation=org)
    from deliberate.services import voting

    assert statements_service.is_visible(copy)
    voting.cast_vote(early, copy.id, -1, round_id=round_.id)

    response = merge(as_facilitator, copy.id, str(target), state="pending")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(queue_url(round_, "pending"))
    page = text_of(as_facilitator.get(response.headers["Location"]))
    assert f"Statement #{copy.id} merged into #{target}" in page
    merged = fresh(db, copy.id)
    assert merged.moderation_state == "rejected"
    assert merged.moderation_reason == f"Merged into #{target}"
    assert fresh(db, target).moderation_state == "accepted"
    # The vote cast before the merge stays recorded.
    assert db.session.scalars(select(Vote.value).where(Vote.statement_id == copy.id)).all() == [-1]
    # The rejected tab says where it went; the audit log has the event.
    rejected = text_of(as_facilitator.get(queue_url(round_, "rejected")))
    assert f"Reason for rejecting: Merged into #{target}" in rejected
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.merge"))
    assert event.target_id == copy.id and event.details["into"] == target
    assert event.actor_id == facilitator.id
    assert "statement.merge" in text_of(as_facilitator.get(f"/facilitate/audit?round={round_.id}"))

    # A member voting now is never offered the merged statement.
    voter = factory.user(Role.MEMBER, organisation=org)
    client = app.test_client()
    assert login(client, voter).status_code in (302, 303)
    offered = []
    for _ in range(len(round_.statements) + 1):
        html = text_of(client.get(f"/rounds/{round_.id}"))
        match = re.search(r'name="statement_id" value="(\d+)"', html)
        if not match or int(match.group(1)) in offered:
            break
        offered.append(int(match.group(1)))
        client.post(
            f"/rounds/{round_.id}/vote", data={"statement_id": match.group(1), "value": "1"}
        )
    assert sorted(offered) == sorted(s.id for s in round_.statements if s.id != copy.id)
    # Nor can it vote on it directly.
    response = client.post(
        f"/rounds/{round_.id}/vote", data={"statement_id": str(copy.id), "value": "1"}
    )
    assert (
        db.session.scalar(
            select(Vote).where(Vote.statement_id == copy.id, Vote.user_id == voter.id)
        )
        is None
    )


@pytest.mark.parametrize(
    ("into", "status", "message"),
    [
        ("", 400, "Give the number of the statement to merge into."),
        ("seven", 400, "Not a valid integer value"),
        ("self", 400, "cannot be merged into itself"),
        ("987654", 404, "There is no statement #987654 to merge into."),
        ("other_round", 400, "is in another round"),
        ("rejected", 409, "merge into a statement that is not rejected"),
    ],
)
def test_merge_bad_input_is_refused_with_the_page(
    as_facilitator, db, factory, round_, member, facilitator, into, status, message
):
    copy = statements_service.submit_statement(
        member, round_.id, "Fund more shelters for the families"
    )
    other = statements_service.submit_statement(member, round_.id, "Joint press line for coalition")
    statements_service.reject_statement(facilitator, other.id, "Off topic")
    values = {
        "self": str(copy.id),
        "other_round": str(factory.round(statements=[SEED + " now"]).statements[0].id),
        "rejected": str(other.id),
    }
    response = merge(as_facilitator, copy.id, values.get(into, into), state="all")
    assert response.status_code == status
    body = text_of(response)
    assert message in body
    assert "<h1>Moderation queue</h1>" in body
    # What was typed stays in the form.
    assert into_input(copy.id, values.get(into, into)) in body
    assert fresh(db, copy.id).moderation_state == "pending"
    assert (
        db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.merge")) is None
    )


def test_unknown_statement_is_404(as_facilitator, round_):
    assert merge(as_facilitator, 987654, str(seed_id(round_))).status_code == 404


def test_members_and_leadership_cannot_merge(client, db, factory, login_as, round_, member):
    copy = statements_service.submit_statement(
        member, round_.id, "Fund more shelters for the families"
    )
    for user in (member, factory.user(Role.LEADERSHIP)):
        login_as(user)
        assert merge(client, copy.id, str(seed_id(round_))).status_code == 403
        client.post("/logout")
    response = merge(client, copy.id, str(seed_id(round_)))
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert fresh(db, copy.id).moderation_state == "pending"
    assert (
        db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.merge")) is None
    )


def csrf_token(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def test_merge_needs_a_csrf_token(app_config, request):
    app_config["WTF_CSRF_ENABLED"] = True
    client = request.getfixturevalue("client")
    db = request.getfixturevalue("db")
    factory = request.getfixturevalue("factory")
    org = factory.organisation()
    member = factory.user(Role.MEMBER, organisation=org)
    facilitator = factory.user(Role.FACILITATOR)
    round_ = factory.round(statements=[SEED])
    copy = statements_service.submit_statement(
        member, round_.id, "Fund more shelters for the families"
    )
    token = csrf_token(text_of(client.get("/login")))
    response = client.post(
        "/login", data={"email": facilitator.email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code in (302, 303)
    assert merge(client, copy.id, str(seed_id(round_))).status_code == 400
    assert merge(client, copy.id, str(seed_id(round_)), csrf_token="forged").status_code == 400
    assert fresh(db, copy.id).moderation_state == "pending"
    page = text_of(client.get(queue_url(round_)))
    form = re.search(
        rf'<form method="post" action="/facilitate/statements/{copy.id}/merge">(.*?)</form>',
        page,
        re.S,
    ).group(1)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form) or re.search(
        r'name="csrf_token" value="([^"]+)"', form
    )
    assert token, form
    response = merge(client, copy.id, str(seed_id(round_)), csrf_token=token.group(1))
    assert response.status_code == 303
    assert fresh(db, copy.id).moderation_reason == f"Merged into #{seed_id(round_)}"
