"""Crash tests: kill -9 the real server and worker under load; nothing acknowledged is lost.

The short form of bench/crash.py, run in CI on SQLite and on PostgreSQL:

- `test_kill_9_under_load_loses_nothing_acknowledged`: gunicorn (deliberate.serving, two
  processes) and a separate `deliberate worker`, driven over real HTTP by a few members who
  vote, change votes and post statements. At random moments the whole gunicorn process group
  and the worker are killed with SIGKILL and started again. At the end every acknowledged
  vote is stored with the member's last acknowledged value (or the value of a later request
  whose answer was lost in a crash: that one may or may not have been stored), every
  acknowledged statement exists once, and the integrity check passes.
- `test_a_killed_snapshot_computation_leaves_the_previous_snapshot`: the worker is killed
  while it computes a snapshot; the previous snapshot is untouched, and after a restart the
  new worker takes the round over once the dead one's claim lapses.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid

import pytest
from sqlalchemy import func, insert, select

from deliberate.models import Role, Snapshot, User, Vote, VoteEvent, utcnow
from deliberate.services.integrity import check_integrity
from deliberate.services.snapshots import analysis_leases, refresh_snapshot
from tests.conftest import PASSWORD
from tests.system.crashing import crash_under_load, lost_acknowledged
from tests.system.servers import (
    BIN,
    PROJECT_ROOT,
    ProcessGroup,
    free_port,
    server_env,
    wait_for,
    worker_process,
)

# Real servers are heavy: these run one after another on one xdist worker.
pytestmark = pytest.mark.xdist_group("system")

SEEDS = [f"Seed statement number {i} about the shared plan" for i in range(12)]
CRASHES = 3


def latest_snapshot_row(db, round_id: int):
    """(id, vote_watermark, n_votes, result) of the newest snapshot, in a closed transaction."""
    try:
        return db.session.execute(
            select(Snapshot.id, Snapshot.vote_watermark, Snapshot.n_votes, Snapshot.result)
            .where(Snapshot.round_id == round_id)
            .order_by(Snapshot.id.desc())
            .limit(1)
        ).first()
    finally:
        db.session.rollback()


def vote_watermark(db, round_id: int) -> int:
    try:
        return db.session.scalar(
            select(func.max(VoteEvent.id)).where(VoteEvent.round_id == round_id)
        )
    finally:
        db.session.rollback()


def assert_complete(result: dict, n_votes: int) -> None:
    """A stored analysis result that parses and has every part the pages read."""
    result = json.loads(json.dumps(result))
    for key in ("participants", "statements", "n_votes", "groups", "in_conversation"):
        assert key in result, f"snapshot result without {key!r}"
    assert result["n_votes"] == n_votes


def test_kill_9_under_load_loses_nothing_acknowledged(app, db, factory, tmp_path, database_url):
    round_ = factory.round(statements=SEEDS)
    round_id = round_.id
    statement_ids = [s.id for s in round_.statements]
    members = [(u.id, u.email, PASSWORD) for u in (factory.user(Role.MEMBER) for _ in range(4))]
    db.session.remove()  # the test's own connection must not hold SQLite's write lock

    env = server_env(database_url)
    watermark = {}

    def caught_up() -> bool:
        watermark["votes"] = vote_watermark(db, round_id)
        row = latest_snapshot_row(db, round_id)
        return row is not None and row.vote_watermark == watermark["votes"]

    run = crash_under_load(
        port=free_port(),
        env=env,
        log_dir=tmp_path,
        round_id=round_id,
        statement_ids=statement_ids,
        members=members,
        crashes=CRASHES,
        caught_up=caught_up,  # the restarted worker catches up with every vote
    )
    assert run.crashes == CRASHES
    assert run.server.starts == run.worker.starts == CRASHES + 1
    assert run.stop_status == (0, 0), run.server.log_tail() + run.worker.log_tail()
    statuses = run.statuses
    assert not [s for s in statuses if isinstance(s, int) and s >= 500], statuses
    assert run.acknowledged > run.acknowledged_at_last_restart > 0, statuses

    problems = lost_acknowledged(db, round_id, statement_ids, run.ledgers)
    assert not problems, problems[:5]
    report = check_integrity()
    assert report.ok, report.summary()
    db.session.rollback()

    # The operator's command agrees.
    check = subprocess.run(  # noqa: S603
        [str(BIN / "deliberate"), "check-integrity"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "integrity OK" in check.stdout


def bulk_round(db, factory, members: int, statements: int, seed: int = 7):
    """A round with `members` x `statements` votes (about 80% filled), written in bulk."""
    rng = random.Random(seed)
    round_ = factory.round(
        statements=[f"Bulk statement {i} on the plan" for i in range(statements)]
    )
    statement_ids = [s.id for s in round_.statements]
    tag = uuid.uuid4().hex[:8]
    db.session.execute(
        insert(User),
        [
            {"email": f"bulk{i}-{tag}@example.org", "name": f"Bulk {i}", "role": "member"}
            for i in range(members)
        ],
    )
    user_ids = db.session.scalars(select(User.id).where(User.email.like(f"bulk%-{tag}@%"))).all()
    add_votes(db, round_.id, user_ids, statement_ids, rng, fill=0.8)
    return round_.id, user_ids, statement_ids


def add_votes(db, round_id, user_ids, statement_ids, rng, fill=1.0) -> None:
    """First votes (each with its history event), in bulk."""
    now = utcnow()
    rows = [
        {
            "round_id": round_id,
            "statement_id": s,
            "user_id": u,
            "value": (1 if (u + s) % 3 else -1) if rng.random() < 0.9 else 0,
            "created_at": now,
        }
        for u in user_ids
        for s in statement_ids
        if rng.random() < fill
    ]
    db.session.execute(insert(Vote), [{**r, "updated_at": now} for r in rows])
    db.session.execute(insert(VoteEvent), [{**r, "previous_value": None} for r in rows])
    db.session.commit()


def test_a_killed_snapshot_computation_leaves_the_previous_snapshot(
    app, db, factory, tmp_path, database_url
):
    round_id, user_ids, statement_ids = bulk_round(db, factory, members=300, statements=40)
    app.config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 5}
    before = refresh_snapshot(round_id)
    assert before is not None
    before_row = latest_snapshot_row(db, round_id)
    assert_complete(before_row.result, before_row.n_votes)

    # New votes move the watermark; the worker's analysis of them is made slow on purpose
    # (many bootstrap replicates, a second or more) so that it can be killed midway.
    newcomer = factory.user(Role.MEMBER)
    add_votes(db, round_id, [newcomer.id], statement_ids, random.Random(1))
    watermark = vote_watermark(db, round_id)
    total_votes = before_row.n_votes + len(statement_ids)
    db.session.remove()

    env = server_env(
        database_url, DELIBERATE_ANALYSIS_PARAMS=json.dumps({"bootstrap_replicates": 8000})
    )
    worker: ProcessGroup = worker_process(env, tmp_path / "worker.log")
    marker = f"analysing round {round_id}:"
    try:
        worker.start()
        assert wait_for(lambda: marker in worker.log_text(), timeout=60), worker.log_tail()
        worker.kill()
        killed_owner = [lease.owner for lease in analysis_leases() if lease.round_id == round_id]

        # The interrupted computation stored nothing: the previous snapshot is the latest,
        # intact, and the dead worker's claim is still there (it lapses by itself).
        after_kill = latest_snapshot_row(db, round_id)
        assert after_kill.id == before_row.id
        assert after_kill.result == before_row.result
        assert_complete(after_kill.result, before_row.n_votes)
        assert killed_owner and killed_owner[0] is not None

        # A new worker takes the round over once the claim lapses and stores the new snapshot.
        worker.start()
        fresh = wait_for(
            lambda: (row := latest_snapshot_row(db, round_id)) and row.id != before_row.id and row,
            timeout=90,
        )
        assert fresh, worker.log_tail()
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.close()
    assert fresh.vote_watermark == watermark
    assert_complete(fresh.result, total_votes)
    assert fresh.n_votes == total_votes
    lease = next(lease for lease in analysis_leases() if lease.round_id == round_id)
    assert lease.owner is None and lease.attempts == 0
    assert check_integrity(round_id).ok
    db.session.rollback()
