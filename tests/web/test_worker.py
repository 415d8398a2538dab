"""The analysis worker: snapshots appear soon after votes, and never inside a request."""

from __future__ import annotations

import threading
import time

import pytest
from flask import has_request_context

import deliberate.analysis as analysis
from deliberate.models import Role
from deliberate.services import voting
from deliberate.services.snapshots import latest_snapshot
from deliberate.worker import EXTENSION_KEY, AnalysisWorker, ensure_worker_thread
from tests.conftest import login

TEXTS = ["Housing first", "More legal aid", "Joint press line", "Shared training fund"]


def wait_for(predicate, timeout: float = 15.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture
def app_config(app_config):
    app_config["ANALYSIS_WORKER"] = "thread"
    app_config["ANALYSIS_DEBOUNCE_SECONDS"] = 0.2
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 5}
    return app_config


@pytest.fixture
def stop_worker(app):
    yield
    worker = app.extensions.get(EXTENSION_KEY)
    if worker is not None:
        worker.stop()


@pytest.fixture
def analysis_calls(monkeypatch):
    """Record the thread of every analysis run, and whether it ran inside a request."""
    calls: list[tuple[str, bool]] = []
    real = analysis.run_analysis

    def spy(*args, **kwargs):
        calls.append((threading.current_thread().name, has_request_context()))
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_analysis", spy)
    return calls


def client_for(app, user):
    """A test client with its own session, logged in as the user."""
    client = app.test_client()
    response = login(client, user)
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]
    return client


def cast(client, round_id: int, statement_id: int, value: int):
    response = client.post(
        f"/api/rounds/{round_id}/votes", json={"statement_id": statement_id, "value": value}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_votes_through_the_app_produce_a_snapshot_off_the_request_path(
    app, db, factory, stop_worker, analysis_calls
):
    round_ = factory.round(statements=TEXTS)
    statement_ids = [s.id for s in round_.statements]
    members = [factory.user(Role.MEMBER) for _ in range(3)]
    assert app.extensions.get(EXTENSION_KEY) is None  # not started before a request

    for i, member in enumerate(members):
        client = client_for(app, member)
        for j, statement_id in enumerate(statement_ids):
            cast(client, round_.id, statement_id, 1 if (i + j) % 2 else -1)

    worker = app.extensions[EXTENSION_KEY]
    assert worker.alive and worker.thread.daemon
    expected = len(members) * len(TEXTS)
    snapshot = wait_for(lambda: (s := latest(db, round_.id)) and s[1] == expected and s)
    assert snapshot, f"no snapshot of all {expected} votes within the deadline"

    # Every analysis ran in the worker thread, never in a request.
    assert analysis_calls
    assert all(
        name == "deliberate-analysis" and not in_request for name, in_request in analysis_calls
    )

    # A later vote moves the watermark; the worker catches up.
    client = client_for(app, factory.user(Role.MEMBER))
    cast(client, round_.id, statement_ids[0], 1)
    newer = wait_for(lambda: (s := latest(db, round_.id)) and s[1] == expected + 1 and s)
    assert newer and newer[0] > snapshot[0]
    assert all(name == "deliberate-analysis" for name, _ in analysis_calls)


def latest(db, round_id) -> tuple[int, int] | None:
    """(id, n_votes) of the newest snapshot, read in a transaction closed at once.

    On SQLite every transaction holds the write lock (BEGIN IMMEDIATE), so a test that kept
    one open while polling would starve the worker's write.
    """
    try:
        snapshot = latest_snapshot(round_id)
        return None if snapshot is None else (snapshot.id, snapshot.n_votes)
    finally:
        db.session.rollback()


def test_vote_requests_never_run_the_analysis(app, db, factory, login_as, monkeypatch, stop_worker):
    """Even with the worker stopped, a vote request only writes (and routes) - it never analyses."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the analysis ran inside a request")

    monkeypatch.setattr(analysis, "run_analysis", forbidden)
    round_ = factory.round(statements=TEXTS)
    member = factory.user(Role.MEMBER)
    client = login_as(member)
    app.extensions[EXTENSION_KEY].stop()  # started by the login request
    for statement in round_.statements:
        cast(client, round_.id, statement.id, 1)
    assert client.get(f"/rounds/{round_.id}").status_code == 200


def test_the_thread_starts_once_per_app_and_process(app, db, client, stop_worker):
    client.get("/healthz")
    client.get("/healthz")
    first = app.extensions[EXTENSION_KEY]
    assert ensure_worker_thread(app) is first
    running = [t for t in threading.enumerate() if t is first.thread]
    assert len(running) == 1


def test_worker_off_starts_nothing(app_config, tmp_path):
    from deliberate import create_app

    app_config["ANALYSIS_WORKER"] = "off"
    app = create_app(app_config)
    app.test_client().get("/healthz")
    assert EXTENSION_KEY not in app.extensions
    assert ensure_worker_thread(app) is None


def test_a_failing_analysis_is_logged_and_the_loop_goes_on(app, db, factory, monkeypatch, caplog):
    round_ = factory.round(statements=TEXTS)
    member = factory.user(Role.MEMBER)
    for statement in round_.statements:
        voting.cast_vote(member, statement.id, 1)
    db.session.rollback()  # the worker below writes through its own session
    real = analysis.run_analysis
    monkeypatch.setattr(analysis, "run_analysis", lambda *a, **k: 1 / 0)
    worker = AnalysisWorker(app, debounce=0.0)
    assert worker.run_once() == 0
    assert "ZeroDivisionError" in caplog.text
    assert latest(db, round_.id) is None
    # Back-off: not retried at once by the loop, but a drain (--once) retries.
    assert worker.run_once() == 0
    monkeypatch.setattr(analysis, "run_analysis", real)
    assert worker.drain() == 1
    assert latest(db, round_.id) is not None


def test_the_loop_stops_on_request(app, db):
    worker = AnalysisWorker(app, debounce=0.1).start()
    assert worker.alive
    worker.stop(timeout=5)
    assert not worker.alive


def test_the_worker_pins_numeric_libraries_to_one_thread_before_numpy_loads():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = (
        "import sys; from deliberate.worker import pin_numeric_threads;"
        "assert 'numpy' not in sys.modules; assert pin_numeric_threads();"
        "import os; print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]


def test_worker_applies_round_schedules(app, db, factory):
    """The worker loop opens a draft round whose opening time has passed."""
    from datetime import timedelta

    from deliberate.models import Round, utcnow
    from deliberate.worker import AnalysisWorker

    round_ = factory.round(
        state="draft",
        opens_at=utcnow() - timedelta(minutes=1),
        statements=["Scheduled statement one"],
    )
    round_id = round_.id
    db.session.rollback()
    assert AnalysisWorker(app).apply_schedule(force=True) == 1
    db.session.expire_all()
    assert db.session.get(Round, round_id).state == "open"


# ---------------------------------------------------------------------------------------------
# Several workers on one database: claims (services.snapshots.claim_analysis and friends)


def vote_on_rounds(db, factory, rounds, members: int = 2) -> None:
    """`members` new members vote on every statement of every round."""
    for _ in range(members):
        member = factory.user(Role.MEMBER)
        for round_ in rounds:
            for statement in round_.statements:
                voting.cast_vote(member, statement.id, 1 if statement.id % 2 else -1)
    db.session.rollback()


def snapshot_marks(db, round_id: int) -> list[int]:
    """The vote watermarks of the round's snapshots, oldest first (transaction closed)."""
    from sqlalchemy import select

    from deliberate.models import Snapshot

    try:
        return list(
            db.session.scalars(
                select(Snapshot.vote_watermark)
                .where(Snapshot.round_id == round_id)
                .order_by(Snapshot.id)
            )
        )
    finally:
        db.session.rollback()


def race(workers) -> None:
    """Run one pass of every worker at the same moment, each in its own thread."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def one(worker):
        try:
            barrier.wait(10)
            worker.run_once()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.fixture
def slow_counted_analysis(monkeypatch):
    """Count analyses per round, each slowed a little so that racing workers would overlap."""
    counts: dict[int, int] = {}
    real = analysis.run_analysis

    def counted(votes, *args, **kwargs):
        round_id = statement_rounds.get(int(kwargs["statements"][0]))
        counts[round_id] = counts.get(round_id, 0) + 1
        time.sleep(0.05)
        return real(votes, *args, **kwargs)

    statement_rounds: dict[int, int] = {}
    monkeypatch.setattr(analysis, "run_analysis", counted)
    return counts, statement_rounds


def test_racing_workers_analyse_each_change_once(app, db, factory, slow_counted_analysis):
    counts, statement_rounds = slow_counted_analysis
    rounds = [factory.round(statements=TEXTS[:3]) for _ in range(4)]
    for round_ in rounds:
        statement_rounds.update({s.id: round_.id for s in round_.statements})
    vote_on_rounds(db, factory, rounds)
    workers = [AnalysisWorker(app, debounce=0.0) for _ in range(3)]
    assert len({w.owner for w in workers}) == 3

    race(workers)
    assert counts == {r.id: 1 for r in rounds}
    assert all(len(snapshot_marks(db, r.id)) == 1 for r in rounds)

    vote_on_rounds(db, factory, rounds, members=1)  # a change in every round
    race(workers)
    assert counts == {r.id: 2 for r in rounds}
    for round_ in rounds:
        marks = snapshot_marks(db, round_.id)
        assert len(marks) == 2 and marks[0] < marks[1]
    # Every claim was given back.
    from deliberate.services.snapshots import analysis_leases

    assert [lease.owner for lease in analysis_leases()] == [None] * len(rounds)


def test_a_claim_is_exclusive_renewable_and_released_with_a_hold(app, db, factory):
    from deliberate.services.snapshots import claim_analysis, release_analysis, renew_analysis

    round_id = factory.round(statements=TEXTS[:1]).id
    db.session.rollback()
    assert claim_analysis(round_id, "a", 60)
    assert not claim_analysis(round_id, "b", 60)
    assert claim_analysis(round_id, "a", 60)  # the owner renews its own claim
    assert renew_analysis(round_id, "a", 60)
    assert not renew_analysis(round_id, "b", 60)
    assert not release_analysis(round_id, "b")
    assert release_analysis(round_id, "a", hold_seconds=60)
    # Held after the release (the debounce across workers), except for a drain.
    assert not claim_analysis(round_id, "b", 60)
    assert claim_analysis(round_id, "b", 60, respect_hold=False)
    assert not claim_analysis(round_id, "a", 60, respect_hold=False)  # b holds it now
    assert release_analysis(round_id, "b")
    assert claim_analysis(round_id, "a", 60)


def test_a_lapsed_claim_is_taken_over(app, db, factory):
    """A worker killed while computing leaves its claim; another takes over when it lapses."""
    from datetime import timedelta

    from sqlalchemy import update

    from deliberate.models import AnalysisLease, utcnow
    from deliberate.services.snapshots import analysis_leases, claim_analysis

    round_ = factory.round(statements=TEXTS)
    vote_on_rounds(db, factory, [round_])
    assert claim_analysis(round_.id, "killed-worker", 60)
    survivor = AnalysisWorker(app, debounce=0.0)
    assert survivor.run_once() == 0  # the round is claimed: left alone
    assert survivor.drain() == 0  # even by a drain
    assert snapshot_marks(db, round_.id) == []

    # Time passes: the dead worker never renewed its claim.
    db.session.execute(
        update(AnalysisLease)
        .where(AnalysisLease.round_id == round_.id)
        .values(leased_until=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    assert survivor.run_once() == 1
    assert len(snapshot_marks(db, round_.id)) == 1
    (lease,) = analysis_leases()
    assert lease.owner is None and lease.attempts == 0  # released after a success


def test_a_long_analysis_keeps_renewing_its_claim(app, db, factory, monkeypatch):
    from deliberate.services.snapshots import analysis_leases, claim_analysis

    round_ = factory.round(statements=TEXTS)
    round_id = round_.id  # read now: reading it later would open a transaction here
    vote_on_rounds(db, factory, [round_])
    computing = threading.Event()
    real = analysis.run_analysis
    taken_by_other: list[bool] = []

    def slow(*args, **kwargs):
        computing.set()
        deadline = time.monotonic() + 1.5  # three lease lengths
        while time.monotonic() < deadline:
            with app.app_context():
                taken_by_other.append(claim_analysis(round_id, "other", 0.5))
                db.session.remove()
            time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_analysis", slow)
    worker = AnalysisWorker(app, debounce=0.0, lease_seconds=0.5)
    assert worker.run_once() == 1
    assert computing.is_set() and taken_by_other and not any(taken_by_other)
    (lease,) = analysis_leases()
    assert lease.owner is None


def test_the_store_refuses_a_result_older_than_the_latest_snapshot(app, db, factory):
    """A worker that computed from older votes cannot overwrite a newer snapshot."""
    from deliberate.services import snapshots

    round_ = factory.round(statements=TEXTS)
    vote_on_rounds(db, factory, [round_])
    params = snapshots.analysis_params()
    stale = snapshots._read_inputs(round_.id, force=False)
    computed = snapshots._compute(stale, params)

    vote_on_rounds(db, factory, [round_], members=1)
    newer = snapshots.refresh_snapshot(round_.id)
    assert newer is not None and newer.vote_watermark > stale.vote_watermark
    assert snapshots._store(stale, params, *computed, 1, force=False) is None
    db.session.rollback()
    assert snapshot_marks(db, round_.id) == [newer.vote_watermark]


def test_the_app_never_migrates_by_itself(tmp_path):
    """An empty database stays empty when the app starts and serves (migrations are explicit)."""
    import sqlite3

    from deliberate import create_app
    from tests.conftest import make_config

    db_file = tmp_path / "empty.db"
    config = make_config(tmp_path, db_file, ANALYSIS_WORKER="thread")
    app = create_app(config)
    client = app.test_client()
    try:
        assert client.get("/healthz").status_code == 200
        client.get("/login")
        worker = app.extensions.get(EXTENSION_KEY)
        assert worker is not None
        worker.stop()
    finally:
        from deliberate.extensions import db as _db

        with app.app_context():
            _db.engine.dispose()
    with sqlite3.connect(db_file) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == []


def test_analysis_settings_come_from_the_environment(app_config, monkeypatch):
    from deliberate import create_app
    from deliberate.config import ConfigError

    monkeypatch.setenv("DELIBERATE_ANALYSIS_LEASE", "12.5")
    monkeypatch.setenv("DELIBERATE_ANALYSIS_PARAMS", '{"bootstrap_replicates": 0}')
    config = {k: v for k, v in app_config.items() if k != "ANALYSIS_PARAMS"}
    app = create_app(config)
    assert AnalysisWorker(app).lease_seconds == 12.5
    assert app.config["ANALYSIS_PARAMS"] == {"bootstrap_replicates": 0}
    monkeypatch.setenv("DELIBERATE_ANALYSIS_PARAMS", "[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        create_app(config)


def test_the_store_refuses_a_result_computed_before_a_retention_purge(app, db, factory):
    """A purge that ran while a worker computed wins: the result still names the people."""
    from sqlalchemy import update

    from deliberate.models import Round, utcnow
    from deliberate.services import snapshots

    round_ = factory.round(statements=TEXTS)
    round_id = round_.id
    vote_on_rounds(db, factory, [round_])
    params = snapshots.analysis_params()
    inputs = snapshots._read_inputs(round_id, force=False)
    computed = snapshots._compute(inputs, params)
    db.session.execute(
        update(Round).where(Round.id == round_id).values(personal_data_purged_at=utcnow())
    )
    db.session.commit()
    assert snapshots._store(inputs, params, *computed, 1, force=False) is None
    db.session.rollback()
    assert snapshot_marks(db, round_id) == []


def test_the_worker_schedule_applies_round_retention(app, db, factory):
    from datetime import timedelta

    from deliberate.models import Round, utcnow

    round_ = factory.round(
        state="closed",
        closes_at=utcnow() - timedelta(days=3),
        retention_days=1,
        statements=TEXTS[:1],
    )
    round_id = round_.id
    db.session.rollback()
    AnalysisWorker(app).apply_schedule(force=True)
    db.session.expire_all()
    assert db.session.get(Round, round_id).personal_data_purged_at is not None
