"""Analysis snapshots: when they are recomputed, what they hold, and what survives a failure."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import func, insert, select

import deliberate.analysis as analysis
from deliberate.extensions import db as _db
from deliberate.models import Role, RoundState, Snapshot, Statement, Vote, VoteEvent, utcnow
from deliberate.services import snapshots, voting
from deliberate.services.errors import NotFound
from deliberate.services.snapshots import (
    AnalysisFailed,
    latest_snapshot,
    refresh_snapshot,
    rounds_needing_analysis,
)
from tests.conftest import only_postgres

TEXTS = [f"Statement number {i}" for i in range(1, 7)]


@pytest.fixture
def app_config(app_config):
    # Small bootstrap: these tests are about storage, not about the statistics.
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 5}
    return app_config


@pytest.fixture
def round_(factory):
    return factory.round(statements=TEXTS)


@pytest.fixture
def members(factory):
    orgs = [factory.organisation(), factory.organisation()]
    return [factory.user(Role.MEMBER, organisation=orgs[i % 2]) for i in range(12)]


def vote_all(round_, members):
    """Two camps: the first half agrees with the odd statements, the second with the even."""
    statements = sorted(round_.statements, key=lambda s: s.id)
    for i, member in enumerate(members):
        for j, statement in enumerate(statements):
            value = 1 if (j % 2 == 0) == (i < len(members) // 2) else -1
            voting.cast_vote(member, statement.id, value)


def n_snapshots(db, round_id: int) -> int:
    return db.session.scalar(
        select(func.count()).select_from(Snapshot).where(Snapshot.round_id == round_id)
    )


def record_states(monkeypatch):
    """Wrap run_analysis to record the state each run starts from."""
    seen: list = []
    real = analysis.run_analysis

    def spy(*args, **kwargs):
        seen.append(kwargs.get("state"))
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_analysis", spy)
    return seen


def test_no_votes_no_snapshot(db, round_):
    assert rounds_needing_analysis() == []
    assert refresh_snapshot(round_.id) is None
    assert refresh_snapshot(round_.id, force=True) is None
    assert latest_snapshot(round_.id) is None


def test_unknown_round_is_not_found(db):
    with pytest.raises(NotFound):
        refresh_snapshot(12345)


def test_a_snapshot_appears_after_votes(db, round_, members):
    vote_all(round_, members)
    assert rounds_needing_analysis() == [round_.id]

    snapshot = refresh_snapshot(round_.id)

    assert snapshot is not None and snapshot.id is not None
    watermark = db.session.scalar(
        select(func.max(VoteEvent.id)).where(VoteEvent.round_id == round_.id)
    )
    assert snapshot.vote_watermark == watermark
    assert snapshot.n_votes == len(members) * len(TEXTS)
    assert snapshot.params["unseen_priority"] == pytest.approx(5.0625)
    result = snapshot.result
    assert result["participants"] == len(members)
    assert result["statements"] == len(TEXTS)
    assert {str(s.id) for s in round_.statements} == set(result["priorities"])
    assert snapshot.priorities == result["priorities"]
    # The two camps are found, and the organisations view is there (members have organisations).
    assert len(result["groups"]) == 2
    assert result["organisations"] is not None
    assert snapshot.state and snapshot.duration_ms >= 0
    assert latest_snapshot(round_.id).id == snapshot.id
    assert rounds_needing_analysis() == []


def test_no_recompute_without_new_votes(db, round_, members):
    vote_all(round_, members)
    first = refresh_snapshot(round_.id)
    assert refresh_snapshot(round_.id) is None
    # Re-casting the same value appends no event: still nothing to do.
    voting.cast_vote(members[0], round_.statements[0].id, 1)
    assert rounds_needing_analysis() == []
    assert refresh_snapshot(round_.id) is None
    assert n_snapshots(db, round_.id) == 1
    assert latest_snapshot(round_.id).id == first.id


def test_recompute_after_a_new_vote_or_a_change(db, factory, round_, members):
    vote_all(round_, members[:-1])
    first = refresh_snapshot(round_.id)

    voting.cast_vote(members[-1], round_.statements[0].id, 1)  # a new vote
    assert rounds_needing_analysis() == [round_.id]
    second = refresh_snapshot(round_.id)
    assert second is not None and second.vote_watermark > first.vote_watermark
    assert second.n_votes == first.n_votes + 1

    voting.cast_vote(members[-1], round_.statements[0].id, -1)  # a change
    assert rounds_needing_analysis() == [round_.id]
    third = refresh_snapshot(round_.id)
    assert third is not None and third.vote_watermark > second.vote_watermark
    assert third.n_votes == second.n_votes


def test_recompute_after_a_moderation_change(db, round_, members):
    vote_all(round_, members)
    first = refresh_snapshot(round_.id)
    statement = round_.statements[1]
    assert first.result["statement_stats"][str(statement.id)]["moderated_out"] is False

    statement.moderation_state = "rejected"
    db.session.commit()
    assert rounds_needing_analysis() == [round_.id]
    second = refresh_snapshot(round_.id)
    assert second is not None
    assert second.vote_watermark == first.vote_watermark
    assert second.moderation_watermark != first.moderation_watermark
    assert second.result["statement_stats"][str(statement.id)]["moderated_out"] is True
    assert rounds_needing_analysis() == []

    other = round_.statements[2]
    other.is_meta = True
    db.session.commit()
    assert rounds_needing_analysis() == [round_.id]
    third = refresh_snapshot(round_.id)
    assert third.result["statement_stats"][str(other.id)]["meta"] is True
    assert third.priorities[str(other.id)] == pytest.approx(49.0)


def test_accepting_a_statement_without_votes_does_not_recompute(db, round_, members):
    vote_all(round_, members)
    refresh_snapshot(round_.id)
    db.session.add(
        Statement(
            round_id=round_.id,
            text="New one",
            normalised_text="new one",
            origin="member",
            moderation_state="pending",
        )
    )
    db.session.commit()
    pending = db.session.scalar(select(Statement).where(Statement.text == "New one"))
    pending.moderation_state = "accepted"
    db.session.commit()
    assert rounds_needing_analysis() == []


def test_failure_keeps_the_previous_snapshot_and_is_logged(
    db, round_, members, monkeypatch, caplog
):
    vote_all(round_, members[:-1])
    first = refresh_snapshot(round_.id)
    voting.cast_vote(members[-1], round_.statements[0].id, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(analysis, "run_analysis", broken)
    with (
        caplog.at_level(logging.ERROR, logger="deliberate.services.snapshots"),
        pytest.raises(AnalysisFailed, match="engine exploded"),
    ):
        refresh_snapshot(round_.id)
    assert "keeping the previous snapshot" in caplog.text
    assert latest_snapshot(round_.id).id == first.id
    assert n_snapshots(db, round_.id) == 1
    # Still due: the next successful run catches up.
    assert rounds_needing_analysis() == [round_.id]
    monkeypatch.undo()
    assert refresh_snapshot(round_.id).n_votes == first.n_votes + 1


def test_state_is_carried_between_runs(db, round_, members, monkeypatch):
    states = record_states(monkeypatch)
    vote_all(round_, members[:-1])
    first = refresh_snapshot(round_.id)
    voting.cast_vote(members[-1], round_.statements[0].id, 1)
    refresh_snapshot(round_.id)

    assert states[0] is None  # cold start
    db.session.refresh(first)
    assert states[1] == first.state
    assert states[1]["in_conv"]  # the engine's state, not an empty dict


def test_only_the_last_snapshots_are_kept(db, round_, members, monkeypatch):
    monkeypatch.setattr(snapshots, "KEEP_SNAPSHOTS", 3)
    vote_all(round_, members)
    ids = [refresh_snapshot(round_.id, force=True).id for _ in range(5)]
    kept = db.session.scalars(
        select(Snapshot.id).where(Snapshot.round_id == round_.id).order_by(Snapshot.id)
    ).all()
    assert kept == ids[-3:]


def test_closed_rounds_with_new_votes_are_due_but_not_drafts(db, factory, members):
    closed = factory.round(statements=TEXTS, state=RoundState.OPEN)
    vote_all(closed, members[:4])
    closed.state = RoundState.CLOSED.value
    draft = factory.round(statements=["Draft statement"], state=RoundState.DRAFT)
    db.session.commit()
    assert rounds_needing_analysis() == [closed.id]
    refresh_snapshot(closed.id)
    assert rounds_needing_analysis() == []
    assert refresh_snapshot(draft.id) is None


def test_results_are_plain_json(db, round_, members):
    import json

    vote_all(round_, members)
    snapshot = refresh_snapshot(round_.id)
    db.session.expire_all()
    stored = db.session.get(Snapshot, snapshot.id)
    json.dumps(stored.result, allow_nan=False)
    json.dumps(stored.state, allow_nan=False)


def test_json_safe_replaces_nan_and_numpy_values():
    import numpy as np

    data = {1: [np.float64("nan"), np.int64(3), (np.bool_(True), float("inf"))], "a": np.arange(2)}
    assert snapshots.json_safe(data) == {"1": [None, 3, [True, None]], "a": [0, 1]}


@pytest.mark.parametrize("big_ids", [False, True], ids=["packed", "wide ids"])
def test_votes_are_read_exactly(db, factory, members, big_ids):
    round_ = factory.round(statements=TEXTS[:2])
    if big_ids:  # ids too large to pack into one integer take the three-column path
        db.session.add(
            Statement(
                id=(1 << 30) + 5,
                round_id=round_.id,
                text="Wide",
                normalised_text="wide",
                origin="seed",
                moderation_state="accepted",
            )
        )
        db.session.commit()
    statements = sorted(round_.statements, key=lambda s: s.id)
    expected = []
    for i, member in enumerate(members[:5]):
        for j, statement in enumerate(statements):
            value = (i + j) % 3 - 1
            voting.cast_vote(member, statement.id, value)
            expected.append((member.id, statement.id, value))
    db.session.rollback()
    inputs = snapshots._read_inputs(round_.id, force=True)
    got = list(
        zip(
            inputs.participant.tolist(),
            inputs.statement.tolist(),
            inputs.value.tolist(),
            strict=True,
        )
    )
    assert got == expected  # in the order the votes were first cast
    assert inputs.value.dtype.name == "int8"


@only_postgres
def test_storing_a_snapshot_does_not_wait_for_votes_being_written(app, db, round_, members):
    """A vote in flight holds FOR KEY SHARE on its round's row (the foreign key): the snapshot's
    lock on that row must not wait for it (nor make the next votes queue behind it)."""
    vote_all(round_, members[:-1])
    statement_id = min(s.id for s in round_.statements)
    late = members[-1]
    db.session.commit()
    finished = threading.Event()
    outcome: dict = {}

    def store() -> None:
        with app.app_context():
            try:
                outcome["snapshot"] = refresh_snapshot(round_.id, force=True) is not None
            except BaseException as error:  # pragma: no cover - reported below
                outcome["error"] = error
            finally:
                _db.session.remove()
                finished.set()

    with _db.engine.connect() as other:
        transaction = other.begin()
        other.execute(
            insert(Vote).values(
                round_id=round_.id,
                statement_id=statement_id,
                user_id=late.id,
                value=1,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        worker = threading.Thread(target=store)
        worker.start()
        stored_meanwhile = finished.wait(timeout=20)
        transaction.rollback()
    worker.join(timeout=60)
    assert stored_meanwhile, "the snapshot waited for a vote's transaction"
    assert outcome == {"snapshot": True}
