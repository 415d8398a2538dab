"""Voting service: validation, visibility, round state, storage and history, routing, progress."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from deliberate.models import Role, Statement, Vote, VoteEvent, utcnow
from deliberate.services import voting
from deliberate.services.errors import NotAllowed, NotFound, RoundClosed, ValidationError
from tests.conftest import ON_POSTGRES, only_sqlite

SEEDS = ["Housing first", "More legal aid", "Joint press line", "Shared training fund"]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def add_statement(db, round_, text, *, author=None, state="accepted", origin="member"):
    statement = Statement(
        round_id=round_.id,
        text=text,
        normalised_text=normalise(text),
        author_id=author.id if author else None,
        origin=origin,
        moderation_state=state,
    )
    db.session.add(statement)
    db.session.commit()
    return statement


def count(db, model, **where) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    return db.session.scalar(query)


@pytest.fixture
def member(factory):
    return factory.user(Role.MEMBER, organisation=factory.organisation())


@pytest.fixture
def round_(factory):
    return factory.round(statements=SEEDS)


def first(round_) -> Statement:
    return round_.statements[0]


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [True, False, "1", "agree", 1.0, 0.0, None, 2, -2, 10**12, [1], {"v": 1}, b"1"]
)
def test_every_bad_value_is_refused_without_writing(db, member, round_, value):
    with pytest.raises(ValidationError) as info:
        voting.cast_vote(member, first(round_).id, value)
    assert info.value.message == "A vote is agree (1), pass (0) or disagree (-1)."
    assert count(db, Vote) == 0 and count(db, VoteEvent) == 0


@pytest.mark.parametrize("statement_id", ["1", None, True, 1.0, -1, 0, [1]])
def test_bad_statement_ids_are_refused(db, member, round_, statement_id):
    with pytest.raises(ValidationError):
        voting.cast_vote(member, statement_id, 1)
    assert count(db, Vote) == 0


def test_unknown_statement_is_not_found(db, member, round_):
    with pytest.raises(NotFound):
        voting.cast_vote(member, 999_999, 1)
    assert count(db, Vote) == 0


def test_statement_of_another_round_is_not_found_under_that_round(db, factory, member, round_):
    other = factory.round(statements=["Elsewhere"])
    with pytest.raises(NotFound):
        voting.cast_vote(member, first(other).id, 1, round_id=round_.id)
    assert count(db, Vote) == 0


def test_anonymous_actor_is_refused(db, round_):
    with pytest.raises(NotAllowed):
        voting.cast_vote(None, first(round_).id, 1)


# --- visibility ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moderation", "state", "allowed"),
    [
        ("pre", "pending", False),
        ("pre", "rejected", False),
        ("pre", "accepted", True),
        ("post", "pending", True),
        ("post", "rejected", False),
        ("post", "accepted", True),
    ],
)
def test_votes_follow_the_moderation_mode(db, factory, member, moderation, state, allowed):
    round_ = factory.round(moderation=moderation)
    author = factory.user(Role.MEMBER)
    statement = add_statement(db, round_, "A member idea", author=author, state=state)
    if allowed:
        assert voting.cast_vote(member, statement.id, 1).status == "new"
        assert count(db, Vote) == 1
    else:
        with pytest.raises(NotFound):
            voting.cast_vote(member, statement.id, 1)
        assert count(db, Vote) == 0 and count(db, VoteEvent) == 0


# --- round state -----------------------------------------------------------------------


def test_closed_and_published_rounds_refuse_votes(db, factory, member):
    for state in ("closed", "published"):
        round_ = factory.round(state=state, statements=[f"In a {state} round"])
        with pytest.raises(RoundClosed, match="not open for voting"):
            voting.cast_vote(member, first(round_).id, 1)
    assert count(db, Vote) == 0


def test_draft_round_is_hidden_from_members_and_refused_for_facilitators(db, factory, member):
    round_ = factory.round(state="draft", statements=["Draft idea"])
    with pytest.raises(NotFound):
        voting.cast_vote(member, first(round_).id, 1)
    facilitator = factory.user(Role.FACILITATOR)
    with pytest.raises(RoundClosed):
        voting.cast_vote(facilitator, first(round_).id, 1)
    assert count(db, Vote) == 0


def test_open_round_past_its_close_time_refuses_votes(db, factory, member):
    round_ = factory.round(
        statements=["Too late"],
        opens_at=utcnow() - timedelta(days=2),
        closes_at=utcnow() - timedelta(seconds=1),
    )
    with pytest.raises(RoundClosed):
        voting.cast_vote(member, first(round_).id, 1)
    assert voting.next_statement(member, round_.id) is None
    assert count(db, Vote) == 0


def test_open_round_before_its_open_time_refuses_votes(db, factory, member):
    round_ = factory.round(statements=["Too early"], opens_at=utcnow() + timedelta(hours=1))
    with pytest.raises(RoundClosed):
        voting.cast_vote(member, first(round_).id, 1)
    assert count(db, Vote) == 0


def test_round_for_other_organisations(db, factory, member):
    other_org = factory.organisation()
    round_ = factory.round(statements=["Only for them"])
    round_.organisations = [other_org]
    db.session.commit()
    # A member outside the audience does not even learn that the round exists.
    with pytest.raises(NotFound):
        voting.cast_vote(member, first(round_).id, 1)
    # A facilitator outside the audience may look, but not vote.
    facilitator = factory.user(Role.FACILITATOR, organisation=factory.organisation())
    with pytest.raises(NotAllowed):
        voting.cast_vote(facilitator, first(round_).id, 1)
    insider = factory.user(Role.MEMBER, organisation=other_org)
    assert voting.cast_vote(insider, first(round_).id, -1).status == "new"
    assert count(db, Vote) == 1


# --- own statements --------------------------------------------------------------------


def test_own_statement_is_never_offered_and_refused(db, factory, member):
    round_ = factory.round(moderation="post")
    own = add_statement(db, round_, "My own idea", author=member)
    other = add_statement(db, round_, "Someone else's idea", author=factory.user())
    assert voting.next_statement(member, round_.id).id == other.id
    with pytest.raises(NotAllowed, match="your own statement"):
        voting.cast_vote(member, own.id, 1)
    assert count(db, Vote) == 0
    assert voting.progress(member, round_.id) == voting.Progress(voted=0, total=1)


# --- storage and history ---------------------------------------------------------------


def test_first_vote_creates_one_row_and_one_event(db, member, round_):
    statement = first(round_)
    result = voting.cast_vote(member, statement.id, 1)
    assert (result.status, result.previous_value, result.changed) == ("new", None, False)
    vote = db.session.scalars(select(Vote)).one()
    assert (vote.statement_id, vote.user_id, vote.round_id, vote.value) == (
        statement.id,
        member.id,
        round_.id,
        1,
    )
    event = db.session.scalars(select(VoteEvent)).one()
    assert (event.value, event.previous_value, event.round_id) == (1, None, round_.id)


def test_change_keeps_one_row_and_appends_history(db, member, round_):
    statement = first(round_)
    voting.cast_vote(member, statement.id, 1)
    created = db.session.scalars(select(Vote)).one().updated_at
    changed = voting.cast_vote(member, statement.id, -1)
    assert (changed.status, changed.previous_value, changed.changed) == ("changed", 1, True)
    again = voting.cast_vote(member, statement.id, 0)
    assert (again.status, again.previous_value) == ("changed", -1)

    db.session.expire_all()
    vote = db.session.scalars(select(Vote)).one()
    assert vote.value == 0
    assert vote.updated_at >= created
    events = db.session.scalars(select(VoteEvent).order_by(VoteEvent.id)).all()
    assert [(e.value, e.previous_value) for e in events] == [(1, None), (-1, 1), (0, -1)]


def test_recasting_the_same_value_is_idempotent(db, member, round_):
    statement = first(round_)
    voting.cast_vote(member, statement.id, 0)
    result = voting.cast_vote(member, statement.id, 0)
    assert result.status == "unchanged" and not result.recorded_event
    assert count(db, Vote) == 1 and count(db, VoteEvent) == 1


def test_votes_of_different_members_are_separate_rows(db, factory, member, round_):
    other = factory.user()
    voting.cast_vote(member, first(round_).id, 1)
    voting.cast_vote(other, first(round_).id, -1)
    assert count(db, Vote, statement_id=first(round_).id) == 2


def test_a_vote_on_a_statement_rejected_later_cannot_be_changed(db, factory, member):
    round_ = factory.round(moderation="post")
    statement = add_statement(db, round_, "Shown at once", author=factory.user(), state="pending")
    voting.cast_vote(member, statement.id, 1)
    statement.moderation_state = "rejected"
    db.session.commit()
    with pytest.raises(NotFound):
        voting.cast_vote(member, statement.id, -1)
    assert db.session.scalars(select(Vote.value)).one() == 1
    assert voting.my_votes(member, round_.id) == []


# --- next statement and progress -------------------------------------------------------


def test_next_statement_never_returns_voted_own_or_hidden(db, factory, member):
    round_ = factory.round(moderation="pre", statements=SEEDS)
    other = factory.user()
    add_statement(db, round_, "Mine, accepted", author=member)
    add_statement(db, round_, "Pending", author=other, state="pending")
    add_statement(db, round_, "Rejected", author=other, state="rejected")
    accepted = add_statement(db, round_, "Other's, accepted", author=other)
    expected = {s.id for s in round_.statements if s.origin == "seed"} | {accepted.id}

    rng = random.Random(4)
    seen: list[int] = []
    while (statement := voting.next_statement(member, round_.id, rng)) is not None:
        assert statement.id not in seen
        seen.append(statement.id)
        voting.cast_vote(member, statement.id, rng.choice([-1, 0, 1]))
        assert len(seen) <= len(expected)
    assert set(seen) == expected
    assert voting.progress(member, round_.id) == voting.Progress(voted=5, total=5)


def test_next_statement_prefers_the_fewest_votes(db, factory, member, round_):
    ids = [s.id for s in round_.statements]
    for voter in (factory.user(), factory.user()):
        voting.cast_vote(voter, ids[0], 1)
    voting.cast_vote(factory.user(), ids[1], 1)
    assert voting.next_statement(member, round_.id).id == ids[2]


def test_progress_counts_only_visible_statements_not_written_by_the_member(db, factory, member):
    round_ = factory.round(moderation="pre", statements=SEEDS)
    add_statement(db, round_, "Mine", author=member)
    add_statement(db, round_, "Pending", author=factory.user(), state="pending")
    assert voting.progress(member, round_.id) == voting.Progress(voted=0, total=4)
    voting.cast_vote(member, round_.statements[0].id, 1)
    voting.cast_vote(member, round_.statements[0].id, -1)  # a change is not a second vote
    voting.cast_vote(member, round_.statements[1].id, 0)
    progress = voting.progress(member, round_.id)
    assert (progress.voted, progress.total, progress.remaining, progress.complete) == (
        2,
        4,
        2,
        False,
    )
    # Other members' votes do not count towards this member's progress.
    voting.cast_vote(factory.user(), round_.statements[2].id, 1)
    assert voting.progress(member, round_.id).voted == 2


def test_my_votes_lists_current_values(db, member, round_):
    a, b = round_.statements[:2]
    voting.cast_vote(member, b.id, 1)
    voting.cast_vote(member, a.id, 0)
    voting.cast_vote(member, b.id, -1)
    assert [(s.id, v) for s, v in voting.my_votes(member, round_.id)] == [(a.id, 0), (b.id, -1)]


def test_progress_and_next_for_unknown_or_hidden_rounds_are_not_found(db, factory, member):
    draft = factory.round(state="draft", statements=["Draft"])
    for round_id in (999_999, draft.id, "1"):
        for call in (voting.next_statement, voting.progress, voting.my_votes):
            with pytest.raises(NotFound):
                call(member, round_id)


def test_vote_and_advance_returns_progress_and_the_next_statement(db, member, round_):
    outcome = voting.vote_and_advance(member, round_.id, first(round_).id, 1)
    assert outcome.result.status == "new"
    assert outcome.progress == voting.Progress(voted=1, total=len(SEEDS))
    assert outcome.next is not None and outcome.next.id != first(round_).id


def test_member_rounds_lists_open_rounds_first_and_hides_drafts(db, factory, member):
    closed = factory.round(state="closed", statements=["Old"])
    open_ = factory.round(statements=["New"])
    draft = factory.round(state="draft")
    foreign = factory.round(statements=["Theirs"])
    foreign.organisations = [factory.organisation()]
    db.session.commit()
    listings = voting.member_rounds(member)
    assert [listing.round.id for listing in listings] == [open_.id, closed.id]
    assert [listing.accepting for listing in listings] == [True, False]
    assert listings[1].status == "Closed"
    assert draft.id not in {listing.round.id for listing in listings}


def test_author_label_respects_the_round_setting(db, factory):
    org = factory.organisation("Welcome Bristol")
    author = factory.user(organisation=org)
    anonymous = factory.round(author_display="anonymous", moderation="post")
    shown = factory.round(author_display="organisation", moderation="post")
    a = add_statement(db, anonymous, "Anonymous idea", author=author)
    b = add_statement(db, shown, "Shown idea", author=author)
    assert voting.author_label(a) == "Written by a member"
    assert voting.author_label(b) == "Written by a member of Welcome Bristol"
    seed = factory.round(statements=["Seeded"]).statements[0]
    assert voting.author_label(seed) == "Seed statement"


def test_a_row_inserted_by_a_concurrent_request_turns_the_insert_into_an_update(
    db, member, round_, monkeypatch
):
    """Just before our insert, another request inserts the row: ours becomes a change."""
    from sqlalchemy import insert

    statement = first(round_)
    # The insert the vote path runs: on PostgreSQL the vote and its history row in one statement.
    name = "_insert_first_vote_pg" if ON_POSTGRES else "_insert_vote"
    real_insert_vote = getattr(voting, name)
    calls = {"lock": 0}

    def racing_insert_vote(row, conn=None):
        if calls["lock"] == 0:
            calls["lock"] += 1
            now = utcnow()
            db.session.execute(
                insert(Vote.__table__).values(
                    round_id=round_.id,
                    statement_id=statement.id,
                    user_id=member.id,
                    value=-1,
                    created_at=now,
                    updated_at=now,
                )
            )
        return real_insert_vote(row, conn)

    monkeypatch.setattr(voting, name, racing_insert_vote)
    result = voting.cast_vote(member, statement.id, 1)
    monkeypatch.undo()
    assert calls["lock"] == 1
    assert (result.status, result.previous_value) == ("changed", -1)
    assert db.session.scalars(select(Vote.value)).all() == [1]
    event = db.session.scalars(select(VoteEvent)).one()
    assert (event.value, event.previous_value) == (1, -1)


def test_ids_beyond_any_database_integer_are_not_found(db, member, round_):
    with pytest.raises(NotFound):
        voting.cast_vote(member, 10**30, 1)
    with pytest.raises(NotFound):
        voting.progress(member, 10**30)
    with pytest.raises(NotFound):
        voting.cast_vote(member, first(round_).id, 1, round_id=10**30)


# --- the vote path: one candidates query for the next statement, progress and routing -------


def store_snapshot(db, round_, priorities: dict):
    from deliberate.models import Snapshot

    snapshot = Snapshot(
        round_id=round_.id,
        vote_watermark=0,
        priorities={str(k): v for k, v in priorities.items()},
        params={"unseen_priority": 5.0625, "meta_priority": 7.0},
    )
    db.session.add(snapshot)
    db.session.commit()
    return snapshot


def test_vote_path_progress_matches_progress_with_own_pending_and_rejected(db, factory, member):
    round_ = factory.round(moderation="pre", statements=SEEDS)
    a, b, c, d = round_.statements
    mine = add_statement(db, round_, "Mine", author=member)
    add_statement(db, round_, "Pending", author=factory.user(), state="pending")
    voting.cast_vote(member, a.id, 1)
    a.moderation_state = "rejected"  # voted on, then rejected: no longer offered or counted
    db.session.commit()
    outcome = voting.vote_and_advance(member, round_.id, b.id, -1)
    assert outcome.progress == voting.progress(member, round_.id) == voting.Progress(1, 3)
    assert outcome.next is not None and outcome.next.id in {c.id, d.id}
    offer = voting.next_offer(member, round_.id)
    assert offer.progress == voting.Progress(1, 3) and offer.next.id in {c.id, d.id}
    voting.vote_and_advance(member, round_.id, c.id, 0)
    last = voting.vote_and_advance(member, round_.id, d.id, 0)  # nothing left: no rows
    assert (last.progress, last.next) == (voting.Progress(3, 3), None)
    assert voting.next_offer(member, round_.id).next is None
    assert mine.id not in {outcome.next.id, offer.next.id}


def test_vote_path_reads_every_candidate_and_which_are_meta(db, factory, member):
    """The candidates come back as one row of ids: all of them (here 1,200), oldest first,
    with the meta ones marked, and the progress agrees with the count."""
    round_ = factory.round(statements=[f"Statement number {i}" for i in range(1200)])
    meta = round_.statements[7]
    meta.is_meta = True
    db.session.commit()
    found = voting._candidates(round_, member)
    assert [c.id for c in found.statements] == sorted(s.id for s in round_.statements)
    assert [c.id for c in found.statements if c.is_meta] == [meta.id]
    outcome = voting.vote_and_advance(member, round_.id, round_.statements[0].id, 1)
    assert outcome.progress == voting.Progress(voted=1, total=1200)
    assert voting.next_offer(member, round_.id).progress == voting.Progress(1, 1200)
    without = voting._candidates(round_, member, without=round_.statements[1].id)
    assert len(without.statements) == 1198 and without.progress == voting.Progress(2, 1200)


def test_next_offer_agrees_with_the_voting_page(db, factory, member):
    org = factory.organisation("Welcome Bristol")
    round_ = factory.round(author_display="organisation", moderation="post", statements=SEEDS)
    add_statement(db, round_, "A member's idea", author=factory.user(organisation=org))
    store_snapshot(db, round_, {s.id: 1.0 + i for i, s in enumerate(round_.statements)})
    voting.cast_vote(member, first(round_).id, 1)
    for seed in range(20):
        page = voting.voting_page(member, round_.id, random.Random(seed))
        offer = voting.next_offer(member, round_.id, random.Random(seed))
        assert (offer.accepting, offer.progress) == (page.accepting, page.progress)
        assert offer.next == voting.OfferedStatement.of(page.statement)
    for statement in round_.statements[1 : len(SEEDS)]:
        voting.cast_vote(member, statement.id, 1)
    offer = voting.next_offer(member, round_.id)  # only the member-written one is left
    assert offer.next.author_label == "Written by a member of Welcome Bristol"
    assert offer.progress == voting.Progress(len(SEEDS), len(SEEDS) + 1)


def test_next_offer_when_the_member_may_not_vote(db, factory, member, round_):
    voting.cast_vote(member, first(round_).id, 1)
    round_.state = "closed"
    db.session.commit()
    offer = voting.next_offer(member, round_.id)
    assert (offer.accepting, offer.progress, offer.next) == (
        False,
        voting.Progress(1, len(SEEDS)),
        None,
    )
    # A facilitator outside the round's audience sees it but does not take part.
    other = factory.round(statements=["Only for them"])
    elsewhere = factory.organisation("Elsewhere")
    other.organisations.append(elsewhere)
    db.session.commit()
    facilitator = factory.user(Role.FACILITATOR, organisation=factory.organisation())
    offer = voting.next_offer(facilitator, other.id)
    assert (offer.accepting, offer.progress, offer.next) == (True, voting.Progress(0, 1), None)
    with pytest.raises(NotFound):
        voting.next_offer(member, other.id)


def test_the_vote_path_routes_by_the_latest_snapshot_read_with_the_candidates(
    db, factory, member, round_
):
    """The candidates query reads the latest snapshot's id: a newer snapshot is used at once,
    and routing does not query for it again."""
    from sqlalchemy import event

    a, b, c, d = round_.statements
    store_snapshot(db, round_, {c.id: 1e9, d.id: 1e-9, b.id: 1e-9})
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        outcome = voting.vote_and_advance(member, round_.id, a.id, 1)
        assert outcome.next.id == c.id
        latest = [s for s in seen if "max(snapshots.id)" in s]
        assert len(latest) == 1 and "statements.is_meta" in latest[0]  # the candidates query
        store_snapshot(db, round_, {c.id: 1e-9, d.id: 1e9})
        assert voting.vote_and_advance(member, round_.id, b.id, 1).next.id == d.id
        assert voting.next_offer(member, round_.id).next.id == d.id
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def test_vote_and_advance_after_a_read_transaction(db, member, round_):
    """The read-first endpoint's case: the session has only read (on SQLite a plain BEGIN).
    The vote is committed, with its history row, and an error leaves nothing behind."""
    from deliberate.database import write_intent

    statement = first(round_)
    db.session.commit()
    with write_intent(False):
        assert db.session.scalar(select(func.count(Vote.id))) == 0  # a read snapshot
        outcome = voting.vote_and_advance(member, round_.id, statement.id, 1)
        assert outcome.progress == voting.Progress(voted=1, total=len(SEEDS))
        db.session.scalar(select(func.count(Vote.id)))
        with pytest.raises(NotFound):
            voting.vote_and_advance(member, round_.id, 10**6, 1)
        changed = voting.vote_and_advance(member, round_.id, statement.id, -1)
        assert (changed.result.status, changed.result.previous_value) == ("changed", 1)
        same = voting.vote_and_advance(member, round_.id, statement.id, -1)
        assert same.result.status == "unchanged"
    db.session.rollback()
    with db.engine.connect() as conn:  # committed: another connection sees it
        assert conn.scalar(select(func.count(Vote.id))) == 1
        assert conn.execute(select(VoteEvent.value, VoteEvent.previous_value)).all() == [
            (1, None),
            (-1, 1),
        ]
    # And no write lock is left held: another write goes through at once.
    voting.cast_vote(member, round_.statements[1].id, 0)


@only_sqlite
def test_vote_and_advance_joins_a_session_transaction_that_holds_the_write_lock(db, member, round_):
    from deliberate.database import holds_write_lock

    db.session.add(
        Statement(
            round_id=round_.id,
            text="Written in the same transaction",
            normalised_text="written in the same transaction",
            origin="seed",
            moderation_state="accepted",
        )
    )
    db.session.flush()
    assert holds_write_lock(db.session.connection())
    outcome = voting.vote_and_advance(member, round_.id, first(round_).id, 1)
    assert outcome.progress == voting.Progress(voted=1, total=len(SEEDS) + 1)
    db.session.rollback()  # nothing left to roll back: both were committed together
    assert count(db, Statement, round_id=round_.id) == len(SEEDS) + 1
    assert count(db, Vote) == 1


def test_vote_as_a_session_checks_the_member_with_the_vote(db, factory, member, round_):
    """vote_and_advance_as (the fast path's service): the member a session names must exist,
    be active and have the session's auth version; each refusal writes nothing, and the
    round's own refusals come after the member's."""
    from deliberate.services.errors import NotAuthenticated

    # Plain values: reading an expired ORM attribute would begin a (writing) transaction.
    statement_id, member_id, round_id_ = first(round_).id, member.id, round_.id
    version = member.auth_version
    db.session.commit()

    def set_active(active: bool) -> None:
        db.session.get(type(member), member_id).active = active
        db.session.commit()

    def votes() -> int:
        db.session.rollback()
        count = db.session.scalar(select(func.count(Vote.id)))
        db.session.rollback()  # end the read: the next vote writes on another connection
        return count

    for user_id, auth_version, round_id in (
        (member_id, version + 1, round_id_),  # password changed since
        (10**6, 1, round_id_),  # no such user
        (member_id, version + 1, 10**6),  # no round either: the session is refused first
    ):
        with pytest.raises(NotAuthenticated):
            voting.vote_and_advance_as(user_id, auth_version, round_id, statement_id, 1)
    with pytest.raises(voting.RoundNotFound):
        voting.vote_and_advance_as(member_id, version, 10**6, statement_id, 1)
    set_active(False)
    with pytest.raises(NotAuthenticated):
        voting.vote_and_advance_as(member_id, version, round_id_, statement_id, 1)
    assert votes() == 0
    set_active(True)
    outcome = voting.vote_and_advance_as(member_id, version, round_id_, statement_id, 1)
    assert outcome.result.status == "new" and votes() == 1
    assert outcome.progress == voting.Progress(voted=1, total=len(SEEDS))


@only_sqlite
def test_sqlite_group_commit_writes_concurrent_votes_and_isolates_a_failure(
    app, db, factory, round_, monkeypatch
):
    """Votes arriving together are written in one transaction (a group), each answered after
    its commit; a vote whose write fails gets its own error and the others go in."""
    import threading
    import time

    org = factory.organisation()
    people = [factory.user(Role.MEMBER, organisation=org) for _ in range(12)]
    ids = [(p.id, p.auth_version) for p in people]
    statement_id, round_id = first(round_).id, round_.id
    failing = ids[5][0]
    db.session.commit()
    db.session.close()

    write = voting._write_vote

    def slow_or_failing(user, *args, **kwargs):
        if user.id == failing:
            raise RuntimeError("this one fails")
        time.sleep(0.003)  # long enough for others to queue behind the writer
        return write(user, *args, **kwargs)

    groups: list[int] = []
    write_group = voting._GroupWriter._write_group

    def recording(self, conn):
        groups.append(len(self._pending))
        return write_group(self, conn)

    monkeypatch.setattr(voting, "_write_vote", slow_or_failing)
    monkeypatch.setattr(voting._GroupWriter, "_write_group", recording)
    answers: dict[int, object] = {}
    start = threading.Barrier(len(ids))

    def vote(user_id: int, version: int) -> None:
        with app.app_context():
            start.wait()
            try:
                answers[user_id] = voting.vote_and_advance_as(
                    user_id, version, round_id, statement_id, 1
                ).result.status
            except RuntimeError as error:
                answers[user_id] = error

    threads = [threading.Thread(target=vote, args=pair) for pair in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert isinstance(answers[failing], RuntimeError)
    assert all(answers[uid] == "new" for uid, _ in ids if uid != failing)
    assert max(groups) > 1 and sum(groups) == len(ids)  # grouped, each vote once
    stored = db.session.scalars(select(Vote.user_id).where(Vote.statement_id == statement_id))
    assert sorted(stored) == sorted(uid for uid, _ in ids if uid != failing)
    events = db.session.scalar(
        select(func.count(VoteEvent.id)).where(VoteEvent.statement_id == statement_id)
    )
    assert events == len(ids) - 1
