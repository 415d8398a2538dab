"""The SQLite writer gate (database.WriterGate): writers queue on it, and it is always let go."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine, text

from deliberate.database import WriterGate, configure_sqlite, sqlite_write_gate, write_intent


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    configure_sqlite(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"))
    yield engine
    engine.dispose()


def gate_of(engine) -> WriterGate:
    return WriterGate.for_database(engine.url.database)


def test_a_write_transaction_holds_the_gate_until_commit_or_rollback(engine):
    gate = gate_of(engine)
    assert not gate._lock.locked()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t (v) VALUES (1)"))
        assert gate._lock.locked() and gate._owner == threading.get_ident()
    assert not gate._lock.locked()

    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("INSERT INTO t (v) VALUES (2)"))
        raise RuntimeError("rolled back")
    assert not gate._lock.locked()

    # A connection given back to the pool mid-transaction lets it go too.
    conn = engine.connect()
    conn.execute(text("INSERT INTO t (v) VALUES (3)"))
    assert gate._lock.locked()
    conn.close()
    assert not gate._lock.locked()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t ORDER BY v")).scalars().all() == [1]


def test_reads_do_not_take_the_gate(engine):
    gate = gate_of(engine)
    with write_intent(False), engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t")).scalar()
        assert not gate._lock.locked()


def test_threads_queue_on_the_gate_and_every_write_lands(engine):
    def write(n):
        for i in range(25):
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": n * 100 + i})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 150
    assert not gate_of(engine)._lock.locked()


def test_another_process_holding_the_gate_makes_a_writer_wait(engine, tmp_path):
    gate = gate_of(engine)
    released = tmp_path / "released"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(0.3)\n"
            "open(sys.argv[2], 'w').close()\n"
            "fcntl.flock(fd, fcntl.LOCK_UN)\n",
            gate.path,
            str(released),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with engine.begin() as conn:  # waits for the other process
            assert released.exists()
            conn.execute(text("INSERT INTO t (v) VALUES (1)"))
    finally:
        child.wait(10)


def test_sqlite_write_gate_wraps_an_autocommitted_write(engine):
    gate = gate_of(engine)
    with sqlite_write_gate(engine):
        assert gate._lock.locked()
        with sqlite_write_gate(engine):  # re-entrant in the same thread
            assert gate._depth == 2
    assert not gate._lock.locked()


def test_no_gate_for_memory_databases():
    assert WriterGate.for_database(":memory:") is None
    assert WriterGate.for_database(None) is None


def test_a_writer_that_cannot_get_the_gate_in_time_goes_on_without_it(engine, monkeypatch):
    gate = gate_of(engine)
    monkeypatch.setattr(WriterGate, "WAIT_SECONDS", 0.05)
    holder_ready, finish = threading.Event(), threading.Event()

    def hold():
        with sqlite_write_gate(engine):
            holder_ready.set()
            finish.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holder_ready.wait(10)
        assert gate.acquire() is False  # another thread has it: gives up after WAIT_SECONDS
        with engine.begin() as conn:  # and the transaction still runs (SQLite's own locking)
            conn.execute(text("INSERT INTO t (v) VALUES (7)"))
    finally:
        finish.set()
        holder.join(10)
    assert not gate._lock.locked()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalars().all() == [7]
