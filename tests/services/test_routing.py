"""Routing: Pol.is's priority-weighted draw from the latest snapshot, with an explicit prior."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from deliberate.models import Role, Snapshot, Statement
from deliberate.services import routing, voting
from deliberate.services.routing import RoutingWeights, pick_next, weighted_draw

# χ² critical value for 3 degrees of freedom at p = 0.001.
CHI2_3DF_999 = 16.27


def add_statement(db, round_, text, *, author=None, state="accepted", meta=False):
    statement = Statement(
        round_id=round_.id,
        text=text,
        normalised_text=text.lower(),
        author_id=author.id if author else None,
        origin="member",
        moderation_state=state,
        is_meta=meta,
    )
    db.session.add(statement)
    db.session.commit()
    return statement


def store_snapshot(db, round_, priorities: dict, **params) -> Snapshot:
    snapshot = Snapshot(
        round_id=round_.id,
        vote_watermark=0,
        priorities={str(k): v for k, v in priorities.items()},
        params={"unseen_priority": 5.0625, "meta_priority": 7.0, **params},
    )
    db.session.add(snapshot)
    db.session.commit()
    return snapshot


def chi_square(counts: Counter, keys: list, weights: list[float], n: int) -> float:
    total = sum(weights)
    return sum(
        (counts[k] - n * w / total) ** 2 / (n * w / total)
        for k, w in zip(keys, weights, strict=True)
    )


def test_without_a_snapshot_the_fewest_votes_come_first(db, factory):
    round_ = factory.round(statements=["One", "Two", "Three"])
    a, b, c = round_.statements
    voters = [factory.user(Role.MEMBER) for _ in range(2)]
    voting.cast_vote(voters[0], a.id, 1)
    voting.cast_vote(voters[1], a.id, 1)
    voting.cast_vote(voters[0], b.id, 1)
    assert pick_next(round_, [a, b, c]) is c
    assert pick_next(round_, [a, b]) is b
    assert pick_next(round_, []) is None


def test_draws_follow_the_snapshot_priorities(db, factory):
    round_ = factory.round(statements=["One", "Two", "Three", "Four"])
    s1, s2, s3, s4 = round_.statements
    # s4 is absent from the snapshot: it gets the explicit prior 5.0625.
    store_snapshot(db, round_, {s1.id: 1.0, s2.id: 3.0, s3.id: 10.0})
    rng = random.Random(20261126)
    n = 20_000
    counts = Counter(pick_next(round_, [s1, s2, s3, s4], rng).id for _ in range(n))
    keys = [s1.id, s2.id, s3.id, s4.id]
    weights = [1.0, 3.0, 10.0, 5.0625]
    assert chi_square(counts, keys, weights, n) < CHI2_3DF_999
    # And it is not uniform: the same test against equal weights fails by far.
    assert chi_square(counts, keys, [1.0] * 4, n) > 100 * CHI2_3DF_999


def test_unseen_statements_get_the_engine_prior_and_meta_gets_49(db, factory):
    from deliberate.analysis import Params

    round_ = factory.round(statements=["Known"])
    known = round_.statements[0]
    fresh = add_statement(db, round_, "Fresh")
    meta = add_statement(db, round_, "Are you a lawyer?", meta=True)
    store_snapshot(db, round_, {known.id: 2.5}, unseen_priority=Params().unseen_priority)
    weights = routing.routing_weights(round_.id)
    assert weights.weight(known) == 2.5
    assert weights.weight(fresh) == pytest.approx(Params().unseen_priority) == pytest.approx(5.0625)
    assert weights.weight(meta) == pytest.approx(49.0)


def test_a_newer_snapshot_replaces_the_cached_weights(db, factory):
    round_ = factory.round(statements=["One", "Two"])
    a, b = round_.statements
    store_snapshot(db, round_, {a.id: 1e9, b.id: 1e-9})
    rng = random.Random(1)
    assert {pick_next(round_, [a, b], rng).id for _ in range(50)} == {a.id}
    store_snapshot(db, round_, {a.id: 1e-9, b.id: 1e9})
    assert {pick_next(round_, [a, b], rng).id for _ in range(50)} == {b.id}


def test_weighted_draw_is_polis_cumulative_rule():
    class Fixed(random.Random):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def random(self):
            return self.value

    items = ["a", "b", "c"]
    weights = [1.0, 2.0, 1.0]  # cumulative 1, 3, 4
    assert weighted_draw(items, weights, Fixed(0.0)) == "a"
    assert weighted_draw(items, weights, Fixed(0.24)) == "a"  # r = 0.96
    assert weighted_draw(items, weights, Fixed(0.25)) == "b"  # r = 1.0: first cumsum > r
    assert weighted_draw(items, weights, Fixed(0.74)) == "b"
    assert weighted_draw(items, weights, Fixed(0.75)) == "c"


def test_zero_or_missing_priorities_fall_back_to_the_prior(db, factory):
    round_ = factory.round(statements=["One"])
    statement = round_.statements[0]
    weights = RoutingWeights(
        snapshot_id=1, priorities={str(statement.id): 0.0}, unseen=5.0625, meta=49.0
    )
    assert weights.weight(statement) == 5.0625


def test_next_statement_never_offers_voted_own_or_hidden(db, factory):
    member = factory.user(Role.MEMBER)
    round_ = factory.round(statements=["Plain one", "Already voted"], moderation="pre")
    plain, voted = round_.statements
    own = add_statement(db, round_, "My own words", author=member)
    rejected = add_statement(db, round_, "Rejected words", state="rejected")
    pending = add_statement(db, round_, "Waiting words", state="pending")
    voting.cast_vote(member, voted.id, 1)
    # The snapshot strongly favours everything the member must not be offered.
    store_snapshot(
        db,
        round_,
        {plain.id: 1e-6, voted.id: 1e9, own.id: 1e9, rejected.id: 1e9, pending.id: 1e9},
    )
    offered = {voting.next_statement(member, round_.id, random.Random(i)).id for i in range(200)}
    assert offered == {plain.id}
    voting.cast_vote(member, plain.id, 0)
    assert voting.next_statement(member, round_.id, random.Random(0)) is None


def test_next_statement_routes_by_priority(db, factory):
    member = factory.user(Role.MEMBER)
    round_ = factory.round(statements=["Low", "High"])
    low, high = round_.statements
    store_snapshot(db, round_, {low.id: 1.0, high.id: 99.0})
    counts = Counter(
        voting.next_statement(member, round_.id, random.Random(i)).id for i in range(2000)
    )
    assert counts[high.id] > 0.97 * 2000 > counts[low.id] > 0


def test_a_snapshot_id_the_caller_read_is_not_queried_again(db, factory):
    from typing import NamedTuple

    from sqlalchemy import event

    class Candidate(NamedTuple):
        id: int
        is_meta: bool

    round_ = factory.round(statements=["One", "Two"])
    a, b = round_.statements
    snapshot_id = store_snapshot(db, round_, {a.id: 1e-9, b.id: 1e9}).id
    routing.routing_weights(round_.id)  # the priorities are cached from here on
    a, b = Candidate(a.id, False), Candidate(b.id, False)  # plain values: no ORM loads below
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        picks = {pick_next(round_, [a, b], snapshot_id=snapshot_id).id for _ in range(50)}
        assert picks == {b.id}  # the snapshot's weights, drawn with the shared generator
        assert not [s for s in seen if "snapshots" in s]
        # None: the caller found no snapshot, so the fewest votes come first (ties: oldest).
        assert pick_next(round_, [a, b], snapshot_id=None) == a
        assert not [s for s in seen if "snapshots" in s]
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    # Not given: routing reads the latest snapshot's id itself.
    assert {pick_next(round_, [a, b], random.Random(2)).id for _ in range(50)} == {b.id}
