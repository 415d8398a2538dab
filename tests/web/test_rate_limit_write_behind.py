"""Rate-limit counters written behind (the app's default): a process counts in memory after a
window's first increment, writes its counts every few seconds in one transaction, and reads the
shared counts back; limits hold exactly within a process; a normal exit writes what is pending.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from deliberate import ratelimit
from deliberate.database import configure_sqlite
from deliberate.extensions import db as _db
from deliberate.extensions import limiter
from deliberate.models import Vote
from deliberate.ratelimit import DatabaseStorage
from tests.web.test_rate_limits import assert_limited, counters, limited_app, logged_in

ROOT = Path(__file__).resolve().parents[2]
NEVER = 3600.0  # a flush interval no test waits for: flushes happen when the test asks


class FakeClock:
    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def engines(app):
    url = _db.engine.url.render_as_string(hide_password=False)
    made = [create_engine(url), create_engine(url)]
    for engine in made:
        configure_sqlite(engine)
    yield made
    for engine in made:
        engine.dispose()


def stored(engine, key: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            text('SELECT "count" FROM rate_limit_counters WHERE "key" = :k'), {"k": key}
        ).scalar()


def test_counts_are_written_behind_and_read_back(engines, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "time", clock)
    one, two = (DatabaseStorage("database://", engine=e, sync_seconds=NEVER) for e in engines)
    # The first increment of a window is written at once; the next ones stay in the process.
    assert one.incr("k", 60) == 1
    assert [one.incr("k", 60) for _ in range(2)] == [2, 3]
    assert stored(engines[0], "k") == 1
    # Another process starts from the shared count.
    assert two.incr("k", 60) == 2
    assert stored(engines[0], "k") == 2
    # A flush writes the pending increments in one go and reads the shared count back.
    assert one.flush() == 1
    assert stored(engines[0], "k") == 4
    assert one.get("k") == 4
    assert one.flush() == 0  # nothing pending
    assert two.incr("k", 60, amount=2) == 4  # two has not seen one's flush yet
    assert two.flush() == 1
    assert two.get("k") == 6 and stored(engines[0], "k") == 6
    assert one.get_expiry("k") == pytest.approx(clock.now + 60)
    # Increments still pending when their window ends are dropped, never put in the next one.
    two.incr("k", 60)
    clock.now += 61
    assert two.flush() == 0
    assert one.get("k") == 0
    assert one.incr("k", 60) == 1  # a new window, written at once
    assert stored(engines[0], "k") == 1
    one.incr("k", 60)
    one.clear("k")
    assert one.get("k") == 0 and stored(engines[0], "k") is None
    assert one.flush() == 0


def test_a_failed_flush_keeps_the_counts_for_the_next(engines):
    one = DatabaseStorage("database://", engine=engines[0], sync_seconds=NEVER)
    one.incr("kept", 60)
    one.incr("kept", 60)
    one.incr("kept", 60)
    with engines[0].begin() as conn:
        conn.execute(text("ALTER TABLE rate_limit_counters RENAME TO rate_limit_counters_away"))
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        one.flush()
    assert one.get("kept") == 3  # still counted in the process
    with engines[0].begin() as conn:
        conn.execute(text("ALTER TABLE rate_limit_counters_away RENAME TO rate_limit_counters"))
    assert one.flush() == 1
    assert stored(engines[0], "kept") == 3


def test_the_flusher_thread_writes_on_its_own_and_ends_with_the_windows(engines):
    one = DatabaseStorage("database://", engine=engines[0], sync_seconds=0.05)
    for _ in range(5):
        one.incr("bg", 2)
    deadline = time.monotonic() + 20
    while stored(engines[0], "bg") != 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(engines[0], "bg") == 5
    # The 2-second window ends; the thread forgets it and stops (a later count restarts it).
    while one._flusher_pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert one._flusher_pid is None
    assert one.incr("bg", 60) == 1 and one.incr("bg", 60) == 2
    assert one._flusher_pid is not None


@pytest.mark.xdist_group("ratelimit-processes")
def test_a_process_that_exits_writes_its_pending_counts(engines):
    url = engines[0].url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        from sqlalchemy import create_engine
        from deliberate.database import configure_sqlite
        from deliberate.ratelimit import DatabaseStorage
        engine = create_engine({url!r})
        configure_sqlite(engine)
        storage = DatabaseStorage("database://", engine=engine, sync_seconds={NEVER})
        for _ in range(30):
            storage.incr("exit", 60)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)  # noqa: S603
    assert child.returncode == 0
    assert stored(engines[0], "exit") == 30


def test_the_app_limits_exactly_within_a_process(app_config, password_hash):
    limits = {"RATELIMIT_VOTE": "3 per minute", "RATELIMIT_SYNC_SECONDS": NEVER}
    with limited_app(app_config, password_hash, **limits) as app:
        assert limiter.storage.sync_seconds == NEVER
        ids = app.config["TEST_IDS"]
        url = f"/rounds/{ids['round']}/vote"
        vote = {"statement_id": ids["statement"], "value": "1"}
        ana = logged_in(app, "ana", "10.9.0.1")
        assert [ana.post(url, data=vote).status_code for _ in range(3)] == [303] * 3
        assert_limited(ana.post(url, data=vote))
        member_key = f"LIMITER/user:{ids['ana']}/vote:account/3/1/minute"
        # Only the window's first vote has been written so far; the flush writes the rest.
        assert counters(app)[member_key] == 1
        with app.app_context():
            limiter.storage.flush()
            assert _db.session.scalar(select(func.count()).select_from(Vote)) == 1
            _db.session.remove()
        assert counters(app)[member_key] == 4


def test_a_disposed_engine_takes_its_windows_with_it(app):
    url = _db.engine.url.render_as_string(hide_password=False)
    engine = create_engine(url)
    configure_sqlite(engine)
    one = DatabaseStorage("database://", engine=engine, sync_seconds=NEVER)
    one.incr("gone", 60)
    assert one.incr("gone", 60) == 2  # pending in the process
    engine.dispose()
    assert one.flush() == 0  # nothing left to write to that database
    assert one.get("gone") == 1  # what the database holds
    assert one.incr("gone", 60) == 2  # a new window, written at once again
    assert stored(engine, "gone") == 2
    engine.dispose()


def test_failed_writes_are_logged_once_a_minute_in_one_line(engines, caplog):
    one = DatabaseStorage("database://", engine=engines[0], sync_seconds=NEVER)
    one.incr("logged", 60)
    with engines[0].begin() as conn:
        conn.execute(text("ALTER TABLE rate_limit_counters RENAME TO rate_limit_counters_away"))
    try:
        for _ in range(3):
            one.incr("logged", 60)
            one._flush_quietly()
    finally:
        with engines[0].begin() as conn:
            conn.execute(text("ALTER TABLE rate_limit_counters_away RENAME TO rate_limit_counters"))
    warnings = [r for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    one._flush_quietly()  # it works again: the next failure is reported at once
    assert stored(engines[0], "logged") == 4
