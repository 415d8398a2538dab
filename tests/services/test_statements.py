"""Statements service: submitting, visibility, duplicates, the moderation queue, corrections."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from deliberate.models import (
    AuditEvent,
    Role,
    RoundState,
    Statement,
    StatementRevision,
    utcnow,
)
from deliberate.services import statements
from deliberate.services.errors import (
    Conflict,
    DuplicateStatement,
    NotAllowed,
    NotFound,
    RoundClosed,
    ValidationError,
)
from tests.conftest import only_sqlite
from tests.lock_probe import WriteLockProbe


@pytest.fixture
def round_(factory):
    return factory.round(statements=["We should campaign together."])


def n_statements(db) -> int:
    return db.session.scalar(select(func.count()).select_from(Statement))


def actions(db) -> list[str]:
    return list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_normalise_text():
    assert statements.normalise_text("  Hello\tWORLD \n again ") == "hello world again"
    assert statements.normalise_text("Straße") == statements.normalise_text("STRASSE")
    # NFKC: full-width letters and ligatures compare equal to plain ones.
    assert statements.normalise_text("ＡＢＣ ﬁne") == "abc fine"
    assert statements.normalise_text("a\u00a0b") == "a b"


@only_sqlite
def test_a_statement_is_checked_without_holding_the_write_lock(db, round_, member, monkeypatch):
    """The checks (round, audience, text, duplicates) read without SQLite's write lock, which
    every vote needs; only the insert takes it."""
    from deliberate.database import write_intent

    round_id = round_.id
    db.session.commit()  # the fixtures' reads end: the call below is what holds (or not)
    probe = WriteLockProbe(db.engine.url.database, statements._existing_id)
    monkeypatch.setattr(statements, "_existing_id", probe)
    with write_intent(True):  # as in a POST request
        statement = statements.submit_statement(member, round_id, "Share our legal aid")
    assert probe.free == [True] and statement.id is not None
    assert n_statements(db) == 2


def test_submit_statement_pre_moderation_waits(db, round_, member):
    statement = statements.submit_statement(member, round_.id, "  Share   our legal aid  ")
    assert statement.text == "Share our legal aid"
    assert statement.normalised_text == "share our legal aid"
    assert statement.moderation_state == "pending"
    assert statement.origin == "member" and statement.author_id == member.id
    assert not statements.is_visible(statement)
    visible = db.session.scalars(
        select(Statement.id).where(statements.visible_statement_filter(round_))
    ).all()
    assert statement.id not in visible


def test_submit_statement_post_moderation_shows_at_once(db, factory, member):
    round_ = factory.round(moderation="post", statements=["Seed statement one."])
    statement = statements.submit_statement(member, round_.id, "Share our legal aid")
    assert statement.moderation_state == "pending"
    assert statements.is_visible(statement)
    visible = db.session.scalars(
        select(Statement.id).where(statements.visible_statement_filter(round_))
    ).all()
    assert statement.id in visible


def test_visible_filter_never_shows_rejected_or_other_rounds(db, factory, facilitator, member):
    post = factory.round(moderation="post", statements=["Accepted in post round."])
    pre = factory.round(statements=["Accepted in pre round."])
    pending = statements.submit_statement(member, post.id, "Pending in post round")
    rejected = statements.submit_statement(member, post.id, "Rejected in post round")
    statements.reject_statement(facilitator, rejected.id, "Off topic")
    visible = set(
        db.session.scalars(select(Statement.id).where(statements.visible_statement_filter(post)))
    )
    assert visible == {post.statements[0].id, pending.id}
    visible_pre = set(
        db.session.scalars(select(Statement.id).where(statements.visible_statement_filter(pre)))
    )
    assert visible_pre == {pre.statements[0].id}


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None])
def test_empty_statement_refused(db, round_, member, text):
    with pytest.raises(ValidationError, match="Write a statement first."):
        statements.submit_statement(member, round_.id, text)
    assert n_statements(db) == 1


def test_over_long_statement_refused_with_counts(db, factory, member):
    round_ = factory.round(statement_max_length=20)
    statements.submit_statement(member, round_.id, "x" * 20)
    with pytest.raises(
        ValidationError, match=r"Statements can be at most 20 characters \(yours has 21\)\."
    ):
        statements.submit_statement(member, round_.id, "y" * 21)
    assert n_statements(db) == 1


@pytest.mark.parametrize(
    "text",
    [
        "We should campaign together.",
        "  we SHOULD campaign\n together.  ",
        "ＷＥ should campaign together.",
    ],
)
def test_duplicate_statement_refused(db, round_, member, text):
    with pytest.raises(DuplicateStatement, match="already exists in this round") as info:
        statements.submit_statement(member, round_.id, text)
    assert info.value.existing_id == round_.statements[0].id
    assert info.value.status_code == 409
    assert n_statements(db) == 1


def test_database_constraint_turns_into_duplicate(db, round_, member, monkeypatch):
    # Simulate the race: the pre-check sees nothing, the insert hits the unique constraint.
    monkeypatch.setattr(statements, "_existing_id", lambda *a, **k: None)
    with pytest.raises(DuplicateStatement):
        statements.submit_statement(member, round_.id, "We should campaign together.")
    db.session.rollback()
    assert n_statements(db) == 1


def test_same_text_allowed_in_another_round(db, factory, member):
    other = factory.round(statements=["We should campaign together."])
    fresh = factory.round()
    assert statements.submit_statement(member, fresh.id, "We should campaign together.").id
    assert other.id != fresh.id


def test_control_characters_are_dropped(db, round_, member):
    statement = statements.submit_statement(member, round_.id, "Fund\x00 the\x07 shelters")
    assert statement.text == "Fund the shelters"


@pytest.mark.parametrize("state", [RoundState.DRAFT, RoundState.CLOSED, RoundState.PUBLISHED])
def test_statements_need_an_open_round(db, factory, member, state):
    round_ = factory.round(state=state)
    # A facilitator who is also a member organisation's delegate (so may take part).
    facilitator = factory.user(Role.FACILITATOR, organisation=factory.organisation())
    # Members do not see drafts at all; facilitators see them but cannot post either.
    with pytest.raises((RoundClosed, NotFound)):
        statements.submit_statement(member, round_.id, "A new statement")
    with pytest.raises(RoundClosed):
        statements.submit_statement(facilitator, round_.id, "A new statement")
    assert n_statements(db) == 0


def test_statements_refused_after_close_time_before_scheduler_runs(db, factory, member):
    round_ = factory.round(closes_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(RoundClosed):
        statements.submit_statement(member, round_.id, "A new statement")


def test_statements_refused_when_not_allowed_or_not_in_audience(db, factory, member):
    no_statements = factory.round(allow_member_statements=False)
    with pytest.raises(NotAllowed, match="does not take statements"):
        statements.submit_statement(member, no_statements.id, "A new statement")
    elsewhere = factory.round()
    elsewhere.organisations = [factory.organisation()]
    db.session.commit()
    with pytest.raises((NotAllowed, NotFound)):
        statements.submit_statement(member, elsewhere.id, "A new statement")
    with pytest.raises(NotAllowed):
        statements.submit_statement(None, elsewhere.id, "A new statement")
    with pytest.raises(NotFound):
        statements.submit_statement(member, 99999, "A new statement")
    assert n_statements(db) == 0


# --- moderation ------------------------------------------------------------------------


def test_moderation_queue_lists_by_state(db, round_, member, facilitator):
    first = statements.submit_statement(member, round_.id, "First statement")
    second = statements.submit_statement(member, round_.id, "Second statement")
    assert [s.id for s in statements.moderation_page(facilitator, round_.id).items] == [
        first.id,
        second.id,
    ]
    statements.accept_statement(facilitator, first.id)
    assert [s.id for s in statements.moderation_page(facilitator, round_.id).items] == [second.id]
    accepted = statements.moderation_page(facilitator, round_.id, "accepted").items
    assert first.id in {s.id for s in accepted}
    assert len(statements.moderation_page(facilitator, round_.id, "all").items) == 3
    with pytest.raises(ValidationError):
        statements.moderation_page(facilitator, round_.id, "weird")
    with pytest.raises(NotAllowed):
        statements.moderation_page(member, round_.id)
    with pytest.raises(NotFound):
        statements.moderation_page(facilitator, 4242)


def test_accept_makes_visible_and_audits(db, round_, member, facilitator):
    statement = statements.submit_statement(member, round_.id, "Please accept me")
    statements.accept_statement(facilitator, statement.id)
    assert statement.moderation_state == "accepted"
    assert statement.moderated_by_id == facilitator.id and statement.moderated_at is not None
    assert statements.is_visible(statement)
    with pytest.raises(Conflict):
        statements.accept_statement(facilitator, statement.id)
    assert actions(db) == ["statement.accept"]


def test_reject_needs_a_reason_and_audits_it(db, round_, member, facilitator):
    statement = statements.submit_statement(member, round_.id, "Please reject me")
    for reason in ("", "   ", None):
        with pytest.raises(ValidationError, match="reason"):
            statements.reject_statement(facilitator, statement.id, reason)
    with pytest.raises(ValidationError, match="at most 500"):
        statements.reject_statement(facilitator, statement.id, "x" * 501)
    db.session.refresh(statement)
    assert statement.moderation_state == "pending"
    statements.reject_statement(facilitator, statement.id, "Personal attack")
    assert statement.moderation_state == "rejected"
    assert statement.moderation_reason == "Personal attack"
    (event,) = db.session.scalars(select(AuditEvent))
    assert event.action == "statement.reject" and event.details["reason"] == "Personal attack"
    assert event.target_id == statement.id and event.round_id == round_.id
    # A rejected statement can still be accepted later (and the reason is cleared).
    statements.accept_statement(facilitator, statement.id)
    assert statement.moderation_reason is None


def test_members_cannot_moderate(db, round_, member):
    statement = statements.submit_statement(member, round_.id, "My statement")
    with pytest.raises(NotAllowed):
        statements.accept_statement(member, statement.id)
    with pytest.raises(NotAllowed):
        statements.reject_statement(member, statement.id, "no")
    with pytest.raises(NotAllowed):
        statements.correct_statement(member, statement.id, "My better statement")


def test_unknown_statements_are_not_found(db, facilitator):
    for call in (
        lambda: statements.get_statement(facilitator, 98765),
        lambda: statements.accept_statement(facilitator, 98765),
        lambda: statements.reject_statement(facilitator, 98765, "why"),
        lambda: statements.correct_statement(facilitator, 98765, "text here"),
    ):
        with pytest.raises(NotFound):
            call()


def test_correct_keeps_the_original(db, round_, member, facilitator):
    statement = statements.submit_statement(member, round_.id, "We shuold fund shelters")
    statements.correct_statement(facilitator, statement.id, "We should fund shelters")
    db.session.expire_all()
    statement = db.session.get(Statement, statement.id)
    assert statement.text == "We should fund shelters"
    assert statement.normalised_text == "we should fund shelters"
    (revision,) = statement.revisions
    assert revision.previous_text == "We shuold fund shelters"
    assert revision.new_text == "We should fund shelters"
    assert revision.edited_by_id == facilitator.id
    (event,) = db.session.scalars(select(AuditEvent))
    assert event.action == "statement.correct"
    assert event.details["previous_text"] == "We shuold fund shelters"


def test_correct_rechecks_length_duplicates_and_emptiness(db, factory, member, facilitator):
    round_ = factory.round(statement_max_length=30, statements=["Existing statement"])
    statement = statements.submit_statement(member, round_.id, "A statment")
    with pytest.raises(DuplicateStatement):
        statements.correct_statement(facilitator, statement.id, "EXISTING  statement")
    with pytest.raises(ValidationError, match="at most 30"):
        statements.correct_statement(facilitator, statement.id, "x" * 31)
    with pytest.raises(ValidationError, match="Write a statement first"):
        statements.correct_statement(facilitator, statement.id, "  ")
    with pytest.raises(ValidationError, match="same"):
        statements.correct_statement(facilitator, statement.id, "A statment")
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(StatementRevision)) == 0
    assert db.session.get(Statement, statement.id).text == "A statment"
    # Changing only the case of the statement itself is a correction, not a duplicate.
    statements.correct_statement(facilitator, statement.id, "A Statment")
    assert db.session.get(Statement, statement.id).text == "A Statment"


def test_set_meta(db, round_, facilitator):
    statement = round_.statements[0]
    statements.set_meta(facilitator, statement.id, True)
    assert statement.is_meta is True
    statements.set_meta(facilitator, statement.id, True)
    assert actions(db) == ["statement.meta"]


@pytest.mark.parametrize("role", [Role.FACILITATOR, Role.LEADERSHIP, Role.ADMIN])
def test_staff_take_part_only_as_delegates_of_an_organisation(db, factory, role):
    round_ = factory.round()  # open to every organisation
    without = factory.user(role)
    with pytest.raises(NotAllowed, match="Staff without an organisation"):
        statements.submit_statement(without, round_.id, "A statement from the back office")
    delegate = factory.user(role, organisation=factory.organisation())
    statements.submit_statement(delegate, round_.id, "A statement from a delegate")
    # A member without an organisation is an individual member and takes part.
    individual = factory.user(Role.MEMBER)
    statements.submit_statement(individual, round_.id, "A statement from an individual")
    assert n_statements(db) == 2
