"""Rounds service: creating, editing, the state machine, schedules, seeds, participation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from deliberate.models import AuditEvent, Role, Round, RoundState, Statement, Vote
from deliberate.services import rounds
from deliberate.services.errors import Conflict, NotAllowed, NotFound, ValidationError

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def member(factory):
    return factory.user(Role.MEMBER, organisation=factory.organisation())


def events(db, action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def vote(db, round_, user, value=1):
    statement = round_.statements[0]
    db.session.add(
        Vote(round_id=round_.id, statement_id=statement.id, user_id=user.id, value=value)
    )
    db.session.commit()


# --- create ----------------------------------------------------------------------------


def test_create_round_stores_settings_as_draft_and_audits(db, factory, facilitator):
    org = factory.organisation()
    opens = NOW + timedelta(days=1)
    round_ = rounds.create_round(
        facilitator,
        question="  What should our   joint campaign ask for?  ",
        context="Some *context*",
        allow_member_statements=False,
        moderation="post",
        statement_max_length=500,
        results_visibility="after_close",
        author_display="organisation",
        opens_at=opens,
        closes_at=opens + timedelta(days=7),
        organisation_ids=[org.id],
    )
    db.session.expire_all()
    round_ = db.session.get(Round, round_.id)
    assert round_.state == RoundState.DRAFT
    assert round_.question == "What should our joint campaign ask for?"
    assert round_.moderation == "post"
    assert round_.allow_member_statements is False
    assert round_.statement_max_length == 500
    assert round_.opens_at == opens
    assert [o.id for o in round_.organisations] == [org.id]
    assert round_.created_by_id == facilitator.id
    (event,) = events(db, "round.create")
    assert event.actor_id == facilitator.id and event.round_id == round_.id
    assert event.details["settings"]["moderation"] == "post"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"question": "Hm?"}, "at least 5"),
        ({"question": "x" * 501}, "at most 500"),
        ({"context": "x" * 20_001}, "context"),
        ({"statement_max_length": 19}, "between 20 and 2000"),
        ({"statement_max_length": 2001}, "between 20 and 2000"),
        ({"statement_max_length": "280"}, "whole number"),
        ({"moderation": "later"}, "Moderation must be one of"),
        ({"results_visibility": "sometimes"}, "must be one of"),
        ({"author_display": "by name"}, "must be one of"),
        ({"opens_at": datetime(2026, 12, 1, 9, 0)}, "time zone"),
        ({"opens_at": NOW, "closes_at": NOW}, "after the opening time"),
        ({"opens_at": NOW, "closes_at": NOW - timedelta(hours=1)}, "after the opening time"),
        ({"organisation_ids": [987654]}, "Unknown organisation"),
        ({"allow_member_statements": "yes"}, "yes or no"),
    ],
)
def test_create_round_refuses_bad_settings_and_writes_nothing(db, facilitator, overrides, message):
    settings = {"question": "A fine question?", **overrides}
    with pytest.raises(ValidationError, match=message):
        rounds.create_round(facilitator, **settings)
    db.session.rollback()
    assert count(db, Round) == 0
    assert count(db, AuditEvent) == 0


def test_only_facilitators_and_admins_create_rounds(db, factory, member):
    with pytest.raises(NotAllowed):
        rounds.create_round(member, question="A fine question?")
    with pytest.raises(NotAllowed):
        rounds.create_round(factory.user(Role.LEADERSHIP), question="A fine question?")
    with pytest.raises(NotAllowed):
        rounds.create_round(None, question="A fine question?")
    admin = factory.user(Role.ADMIN)
    assert rounds.create_round(admin, question="A fine question?").id


# --- update ----------------------------------------------------------------------------


def test_update_round_changes_settings_and_audits_changed_fields(db, facilitator):
    round_ = rounds.create_round(facilitator, question="A fine question?")
    rounds.update_round(
        facilitator, round_.id, question="A better question?", statement_max_length=140
    )
    db.session.expire_all()
    round_ = db.session.get(Round, round_.id)
    assert round_.question == "A better question?"
    assert round_.statement_max_length == 140
    (event,) = events(db, "round.update")
    assert set(event.details["changed"]) == {"question", "statement_max_length"}
    assert event.details["changed"]["statement_max_length"] == {"from": 280, "to": 140}


def test_update_without_changes_writes_no_audit_event(db, facilitator):
    round_ = rounds.create_round(facilitator, question="A fine question?")
    rounds.update_round(facilitator, round_.id, question="A fine question?", moderation="pre")
    assert events(db, "round.update") == []


@pytest.mark.parametrize(
    "setting",
    [{"moderation": "post"}, {"question": "Another question?"}, {"organisation_ids": "org"}],
)
def test_vote_defining_settings_are_locked_once_votes_exist(
    db, factory, facilitator, member, setting
):
    if setting.get("organisation_ids") == "org":
        setting = {"organisation_ids": [factory.organisation().id]}
    round_ = factory.round(statements=["We should campaign together."])
    vote(db, round_, member)
    with pytest.raises(Conflict, match="already voted"):
        rounds.update_round(facilitator, round_.id, **setting)
    db.session.rollback()
    db.session.expire_all()
    round_ = db.session.get(Round, round_.id)
    assert round_.moderation == "pre" and round_.organisations == []
    assert events(db, "round.update") == []


def test_other_settings_may_change_after_votes(db, factory, facilitator, member):
    round_ = factory.round(statements=["We should campaign together."])
    vote(db, round_, member)
    rounds.update_round(
        facilitator,
        round_.id,
        context="More background",
        statement_max_length=300,
        allow_member_statements=False,
        results_visibility="never",
    )
    db.session.expire_all()
    assert db.session.get(Round, round_.id).results_visibility == "never"


def test_moderation_may_change_before_votes(db, factory, facilitator):
    round_ = factory.round(statements=["We should campaign together."])
    rounds.update_round(facilitator, round_.id, moderation="post")
    assert db.session.get(Round, round_.id).moderation == "post"


def test_authors_cannot_become_visible_after_members_wrote_anonymously(
    db, factory, facilitator, member
):
    round_ = factory.round()
    db.session.add(
        Statement(
            round_id=round_.id,
            text="Mine",
            normalised_text="mine",
            author_id=member.id,
            origin="member",
        )
    )
    db.session.commit()
    with pytest.raises(Conflict, match="anonymous"):
        rounds.update_round(facilitator, round_.id, author_display="organisation")


def test_update_validates_times_against_existing_ones(db, facilitator):
    round_ = rounds.create_round(
        facilitator, question="A fine question?", opens_at=NOW, closes_at=NOW + timedelta(days=1)
    )
    with pytest.raises(ValidationError, match="after the opening time"):
        rounds.update_round(facilitator, round_.id, closes_at=NOW - timedelta(days=1))


def test_update_refuses_published_unknown_and_unknown_settings(db, factory, facilitator):
    published = factory.round(state=RoundState.PUBLISHED)
    with pytest.raises(Conflict):
        rounds.update_round(facilitator, published.id, context="x")
    with pytest.raises(NotFound):
        rounds.update_round(facilitator, 424242, context="x")
    draft = factory.round(state=RoundState.DRAFT)
    with pytest.raises(ValidationError, match="Unknown setting"):
        rounds.update_round(facilitator, draft.id, state="open")


def test_members_cannot_update(db, factory, member):
    round_ = factory.round()
    with pytest.raises(NotAllowed):
        rounds.update_round(member, round_.id, context="x")


# --- state machine ---------------------------------------------------------------------


def test_state_machine_draft_open_closed_published(db, facilitator):
    round_ = rounds.create_round(facilitator, question="A fine question?")
    rounds.open_round(facilitator, round_.id, now=NOW)
    assert round_.state == RoundState.OPEN and round_.opens_at == NOW
    rounds.close_round(facilitator, round_.id, now=NOW + timedelta(hours=1))
    assert round_.state == RoundState.CLOSED and round_.closes_at == NOW + timedelta(hours=1)
    rounds.publish_round(facilitator, round_.id)
    assert round_.state == RoundState.PUBLISHED
    actions = [e.action for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions == ["round.create", "round.open", "round.close", "round.publish"]


@pytest.mark.parametrize(
    "state, action",
    [
        (RoundState.DRAFT, "close"),
        (RoundState.DRAFT, "publish"),
        (RoundState.OPEN, "open"),
        (RoundState.OPEN, "publish"),
        (RoundState.CLOSED, "open"),
        (RoundState.CLOSED, "close"),
        (RoundState.PUBLISHED, "open"),
        (RoundState.PUBLISHED, "close"),
        (RoundState.PUBLISHED, "publish"),
    ],
)
def test_bad_transitions_conflict(db, factory, facilitator, state, action):
    round_ = factory.round(state=state)
    with pytest.raises(Conflict, match=f"This round is {state.value}"):
        getattr(rounds, f"{action}_round")(facilitator, round_.id)
    db.session.rollback()
    assert db.session.get(Round, round_.id).state == state
    assert count(db, AuditEvent) == 0


def test_opening_refuses_a_round_whose_close_time_passed(db, factory, facilitator):
    round_ = factory.round(state=RoundState.DRAFT, closes_at=NOW - timedelta(minutes=1))
    with pytest.raises(Conflict, match="closing time"):
        rounds.open_round(facilitator, round_.id, now=NOW)


def test_members_cannot_change_state(db, factory, member):
    round_ = factory.round(state=RoundState.DRAFT)
    with pytest.raises(NotAllowed):
        rounds.open_round(member, round_.id)


# --- times -----------------------------------------------------------------------------


def test_is_accepting_votes_checks_state_and_times(factory):
    open_round = factory.round(state=RoundState.OPEN)
    assert rounds.is_accepting_votes(open_round, NOW)
    for state in (RoundState.DRAFT, RoundState.CLOSED, RoundState.PUBLISHED):
        assert not rounds.is_accepting_votes(factory.round(state=state), NOW)
    expired = factory.round(state=RoundState.OPEN, closes_at=NOW - timedelta(seconds=1))
    assert not rounds.is_accepting_votes(expired, NOW)
    assert rounds.is_accepting_votes(expired, NOW - timedelta(minutes=1))
    early = factory.round(state=RoundState.OPEN, opens_at=NOW + timedelta(hours=1))
    assert not rounds.is_accepting_votes(early, NOW)
    assert rounds.is_accepting_votes(early, NOW + timedelta(hours=1))


def test_apply_scheduled_transitions_opens_and_closes_due_rounds(db, factory):
    due_open = factory.round(state=RoundState.DRAFT, opens_at=NOW - timedelta(minutes=1))
    later = factory.round(state=RoundState.DRAFT, opens_at=NOW + timedelta(minutes=1))
    unscheduled = factory.round(state=RoundState.DRAFT)
    due_close = factory.round(state=RoundState.OPEN, closes_at=NOW)
    stays_open = factory.round(state=RoundState.OPEN, closes_at=NOW + timedelta(days=1))
    missed = factory.round(
        state=RoundState.DRAFT,
        opens_at=NOW - timedelta(days=2),
        closes_at=NOW - timedelta(days=1),
    )
    changed = rounds.apply_scheduled_transitions(NOW)
    assert {r.id for r in changed} == {due_open.id, due_close.id}
    db.session.expire_all()
    state = {r.id: r.state for r in db.session.scalars(select(Round))}
    assert state[due_open.id] == "open" and state[due_close.id] == "closed"
    assert state[later.id] == state[unscheduled.id] == state[missed.id] == "draft"
    assert state[stays_open.id] == "open"
    audit_events = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert [(e.action, e.round_id, e.actor_id) for e in audit_events] == [
        ("round.open", due_open.id, None),
        ("round.close", due_close.id, None),
    ]
    assert all(e.details["scheduled"] is True for e in audit_events)
    # Running again changes nothing.
    assert rounds.apply_scheduled_transitions(NOW) == []


# --- reading ---------------------------------------------------------------------------


def test_get_round_hides_drafts_and_other_audiences_from_members(db, factory, member, facilitator):
    draft = factory.round(state=RoundState.DRAFT)
    other_org = factory.organisation()
    elsewhere = factory.round()
    elsewhere.organisations = [other_org]
    mine = factory.round()
    db.session.commit()
    with pytest.raises(NotFound):
        rounds.get_round(member, draft.id)
    with pytest.raises(NotFound):
        rounds.get_round(member, elsewhere.id)
    with pytest.raises(NotFound):
        rounds.get_round(member, 999999)
    assert rounds.get_round(member, mine.id) is mine
    assert rounds.get_round(facilitator, draft.id) is draft
    assert {r.id for r in rounds.list_rounds(member)} == {mine.id}
    assert {r.id for r in rounds.list_rounds(facilitator)} == {draft.id, elsewhere.id, mine.id}


# --- seeds -----------------------------------------------------------------------------


def test_add_seed_statements_one_per_line(db, factory, facilitator):
    round_ = factory.round(state=RoundState.DRAFT, statements=["Existing statement here."])
    round_.statement_max_length = 40
    db.session.commit()
    block = (
        "We should share legal aid resources.\r\n"
        "\n"
        "   \n"
        "- Faith groups should host welcome events.\n"
        "EXISTING   statement here.\n"
        "we should share legal aid RESOURCES.\n" + "x" * 41 + "\n"
    )
    result = rounds.add_seed_statements(facilitator, round_.id, block)
    assert result.added == [
        "We should share legal aid resources.",
        "Faith groups should host welcome events.",
    ]
    assert result.duplicates == ["EXISTING statement here.", "we should share legal aid RESOURCES."]
    assert result.too_long == ["x" * 41]
    assert result.empty == 2
    seeds = list(db.session.scalars(select(Statement).where(Statement.round_id == round_.id)))
    assert len(seeds) == 3
    assert all(s.origin == "seed" and s.moderation_state == "accepted" for s in seeds)
    (event,) = events(db, "statement.seed")
    assert event.details["added"] == 2 and event.actor_id == facilitator.id


def test_seeding_refuses_empty_closed_and_members(db, factory, facilitator, member):
    round_ = factory.round(state=RoundState.DRAFT)
    with pytest.raises(ValidationError):
        rounds.add_seed_statements(facilitator, round_.id, " \n\n ")
    closed = factory.round(state=RoundState.CLOSED)
    with pytest.raises(Conflict):
        rounds.add_seed_statements(facilitator, closed.id, "A new statement.")
    with pytest.raises(NotAllowed):
        rounds.add_seed_statements(member, round_.id, "A new statement.")
    assert count(db, Statement) == 0


# --- participation ---------------------------------------------------------------------


def test_participation_per_organisation(db, factory, facilitator):
    a, b = factory.organisation("Alpha Aid"), factory.organisation("Beta Welcome")
    a1, a2, b1 = (
        factory.user(organisation=a),
        factory.user(organisation=a),
        factory.user(organisation=b),
    )
    round_ = factory.round(statements=["One statement here.", "Two statements here."])
    s1, s2 = round_.statements
    for user, statement in ((a1, s1), (a1, s2), (b1, s1)):
        db.session.add(
            Vote(round_id=round_.id, statement_id=statement.id, user_id=user.id, value=1)
        )
    db.session.add(
        Statement(
            round_id=round_.id,
            text="By a2",
            normalised_text="by a2",
            author_id=a2.id,
            origin="member",
            moderation_state="pending",
        )
    )
    db.session.commit()
    p = rounds.participation(facilitator, round_.id)
    rows = {row.name: row for row in p.organisations}
    assert (rows["Alpha Aid"].members, rows["Alpha Aid"].voters, rows["Alpha Aid"].votes) == (
        2,
        1,
        2,
    )
    assert rows["Alpha Aid"].statements == 1
    assert (rows["Beta Welcome"].voters, rows["Beta Welcome"].votes) == (1, 1)
    assert (p.voters, p.votes, p.statements, p.member_statements, p.pending) == (2, 3, 3, 1, 1)
    with pytest.raises(NotAllowed):
        rounds.participation(a1, round_.id)


def test_round_overview_hides_the_split_of_fewer_than_three_votes(db, factory, facilitator):
    voters = [factory.user() for _ in range(3)]
    round_ = factory.round(statements=["Few votes here.", "Enough votes here."])
    few, enough = round_.statements
    db.session.add(Vote(round_id=round_.id, statement_id=few.id, user_id=voters[0].id, value=1))
    for user, value in zip(voters, (1, -1, 1), strict=True):
        db.session.add(
            Vote(round_id=round_.id, statement_id=enough.id, user_id=user.id, value=value)
        )
    db.session.commit()
    overview, page = rounds.round_overview_page(facilitator, round_.id)
    assert page.items == overview.statements
    rows = {row.statement.id: row for row in overview.statements}
    assert (rows[few.id].votes, rows[few.id].agree) == (1, None)
    assert (rows[enough.id].agree, rows[enough.id].disagree, rows[enough.id].passes) == (2, 1, 0)
    assert overview.has_votes
    with pytest.raises(NotAllowed):
        rounds.round_overview_page(voters[0], round_.id)


def test_round_summaries_count_per_round(db, factory, facilitator, member):
    round_ = factory.round(statements=["One statement here.", "Two statements here."])
    other = factory.round()
    db.session.add(
        Vote(round_id=round_.id, statement_id=round_.statements[0].id, user_id=member.id, value=0)
    )
    db.session.add(Statement(round_id=round_.id, text="P", normalised_text="p", origin="member"))
    db.session.commit()
    summaries = {s.round.id: s for s in rounds.round_summaries(facilitator)}
    s = summaries[round_.id]
    assert (s.statements, s.pending, s.votes, s.voters) == (3, 1, 1, 1)
    assert summaries[other.id].statements == 0
    with pytest.raises(NotAllowed):
        rounds.round_summaries(member)


def test_ids_out_of_range_are_not_found(db, facilitator):
    for bad in (10**20, -1, 0, True, "1", None):
        with pytest.raises(NotFound):
            rounds.get_round(facilitator, bad)
        with pytest.raises(NotFound):
            rounds.open_round(facilitator, bad)
    with pytest.raises(ValidationError, match="Unknown organisation"):
        rounds.create_round(facilitator, question="A fine question?", organisation_ids=[10**20])
