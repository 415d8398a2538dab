"""Several analysis workers on one database, as real processes; the production server settings.

- separate `deliberate worker` processes (one of them with `--processes 2`) share the rounds:
  one snapshot per change, claims given back, and SIGTERM stops a supervisor and its children;
- gunicorn with the in-process worker thread in each of its two processes: the threads share
  the rounds the same way;
- the server refuses to start on a database that was not migrated, and leaves it untouched.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from deliberate.models import Role, Snapshot, VoteEvent
from deliberate.services import voting
from deliberate.services.snapshots import analysis_leases
from tests.conftest import PASSWORD, only_sqlite
from tests.system.servers import (
    HttpMember,
    free_port,
    gunicorn_server,
    living_members,
    server_env,
    wait_for,
    wait_until_serving,
    worker_process,
)

pytestmark = pytest.mark.xdist_group("system")

TEXTS = ["Pool the legal budgets", "One spokesperson per month", "Shared volunteer rota"]


def snapshots_by_round(db) -> dict[int, list[int]]:
    """Each round's snapshot vote watermarks, oldest first (transaction closed)."""
    try:
        marks: dict[int, list[int]] = {}
        for round_id, mark in db.session.execute(
            select(Snapshot.round_id, Snapshot.vote_watermark).order_by(Snapshot.id)
        ):
            marks.setdefault(round_id, []).append(mark)
        return marks
    finally:
        db.session.rollback()


def watermarks(db) -> dict[int, int]:
    try:
        return dict(
            db.session.execute(
                select(VoteEvent.round_id, func.max(VoteEvent.id)).group_by(VoteEvent.round_id)
            ).all()
        )
    finally:
        db.session.rollback()


def vote_everywhere(db, factory, round_ids, statement_ids, per_round: int = 3) -> None:
    """A new member votes on `per_round` statements of every round."""
    member = factory.user(Role.MEMBER)
    for round_id in round_ids:
        for statement_id in statement_ids[round_id][:per_round]:
            voting.cast_vote(member, statement_id, 1 if statement_id % 3 else -1)
    db.session.rollback()


def caught_up(db) -> bool:
    marks = snapshots_by_round(db)
    return all(marks.get(r, [None])[-1] == w for r, w in watermarks(db).items())


def test_worker_processes_share_the_rounds(app, db, factory, tmp_path, database_url):
    rounds = [factory.round(statements=TEXTS) for _ in range(6)]
    round_ids = [r.id for r in rounds]
    statement_ids = {r.id: [s.id for s in r.statements] for r in rounds}
    for _ in range(3):
        vote_everywhere(db, factory, round_ids, statement_ids)
    db.session.remove()

    # Every claim held long enough that a double computation could not hide behind the hold.
    env = server_env(database_url, DELIBERATE_ANALYSIS_DEBOUNCE="0.5")
    supervisor = worker_process(env, tmp_path / "supervisor.log", "--processes", "2")
    single = worker_process(env, tmp_path / "single.log")
    try:
        supervisor.start()
        single.start()
        assert wait_for(lambda: caught_up(db), timeout=60), supervisor.log_tail()
        first = snapshots_by_round(db)
        assert all(len(first[r]) == 1 for r in round_ids), first

        # One vote per round: a single change each, which no worker can see half done.
        vote_everywhere(db, factory, round_ids, statement_ids, per_round=1)
        assert wait_for(lambda: caught_up(db), timeout=60), single.log_tail()
        second = snapshots_by_round(db)
        assert all(len(second[r]) == 2 for r in round_ids), second

        # Three workers in two commands; SIGTERM stops the supervisor and its children.
        children = living_members(supervisor.process.pid)
        assert len(children) >= 3, children  # the supervisor, its two workers (and a helper)
        assert supervisor.stop() == 0, supervisor.log_tail()
        assert single.stop() == 0, single.log_tail()
        assert not supervisor.group_alive()
    finally:
        supervisor.close()
        single.close()
    assert all(lease.owner is None for lease in analysis_leases())
    logs = supervisor.log_text() + single.log_text()
    assert logs.count("analysing round") == 2 * len(round_ids), logs[-3000:]


def test_gunicorn_processes_with_worker_threads_share_the_rounds(
    app, db, factory, tmp_path, database_url
):
    round_ = factory.round(statements=TEXTS)
    round_id, statement_ids = round_.id, [s.id for s in round_.statements]
    members = [factory.user(Role.MEMBER) for _ in range(4)]
    emails = [m.email for m in members]
    db.session.remove()

    port = free_port()
    env = server_env(database_url, DELIBERATE_ANALYSIS_WORKER="thread")
    server = gunicorn_server(port, env, tmp_path / "gunicorn.log")
    try:
        server.start()
        wait_until_serving(server, port)
        for n, email in enumerate(emails):
            member = HttpMember(port, email, PASSWORD)
            member.login()
            member.open_round(round_id)
            for statement_id in statement_ids:
                assert member.vote(round_id, statement_id, (n + statement_id) % 3 - 1) == 200
        assert wait_for(lambda: caught_up(db), timeout=60), server.log_tail()
        assert server.stop() == 0, server.log_tail()
    finally:
        server.close()
    marks = snapshots_by_round(db)[round_id]
    assert len(marks) == len(set(marks)), marks  # never two snapshots of the same votes
    assert marks == sorted(marks)  # never an older result after a newer one
    assert all(lease.owner is None for lease in analysis_leases())


def table_names(database_url: str) -> list[str]:
    with sqlite3.connect(make_url(database_url).database) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]


@only_sqlite  # the server's start-up does not depend on the kind of database
def test_the_server_refuses_an_unmigrated_database(tmp_path):
    """Migrations run before the server starts, never lazily: an empty database stays empty."""
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    sqlite3.connect(tmp_path / "empty.db").close()
    port = free_port()
    server = gunicorn_server(port, server_env(empty), tmp_path / "gunicorn.log")
    try:
        server.start()
        deadline = time.monotonic() + 60
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running
    finally:
        server.close()
    assert server.process.returncode != 0
    assert "run `deliberate db upgrade`" in server.log_text()
    assert table_names(empty) == []

    # After the upgrade (what `make serve` runs first) the same server starts.
    upgrade = subprocess.run(  # noqa: S603
        [str(server.argv[0]).replace("gunicorn", "deliberate"), "db", "upgrade"],
        env=server_env(empty),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    server.start()
    try:
        wait_until_serving(server, port)
    finally:
        server.stop()
        server.close()


def test_the_server_settings_pin_numeric_libraries_before_the_app_loads():
    """Importing deliberate.serving (gunicorn does, in the master) sets the thread limits."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = (
        "import sys, os; import deliberate.serving as s;"
        "assert 'numpy' not in sys.modules;"
        "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'],"
        " s.workers, s.worker_class, s.preload_app)"
    )
    out = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1", "2", "gthread", "True"]
