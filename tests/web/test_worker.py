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
