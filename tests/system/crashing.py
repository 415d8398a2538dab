"""The crash scenario shared by tests/system/test_crash.py (short) and bench/crash.py (long).

Members vote, change votes and post statements over real HTTP while the server (the whole
gunicorn process group) and the `deliberate worker` are killed with SIGKILL at random moments
and started again. Every request is written down before it is sent and marked acknowledged
only when its success answer arrived, so that afterwards the database can be held to exactly
what was acknowledged.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from deliberate.models import Statement, Vote
from tests.system.servers import (
    HttpMember,
    ProcessGroup,
    gunicorn_server,
    wait_for,
    wait_until_serving,
    worker_process,
)

NO_ANSWER = (OSError, http.client.HTTPException)


@dataclass
class Ledger:
    """What one simulated member sent, and which requests were acknowledged."""

    user_id: int
    votes: dict[int, list[tuple[int, bool]]] = field(default_factory=lambda: defaultdict(list))
    statements: list[tuple[str, bool]] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    @property
    def acknowledged(self) -> int:
        votes = sum(ok for attempts in self.votes.values() for _, ok in attempts)
        return votes + sum(ok for _, ok in self.statements)


def drive(
    member: HttpMember,
    round_id: int,
    statement_ids: list[int],
    ledger: Ledger,
    stop: threading.Event,
    seed: int,
    statement_share: float = 0.08,
) -> None:
    """Vote, change votes and post statements until `stop`, riding out crashes."""
    rng = random.Random(seed)
    ready = False
    while not stop.is_set():
        try:
            if not ready:
                member.login()
                member.open_round(round_id)
                ready = True
            if rng.random() < statement_share:
                text = f"Crash test statement {uuid.uuid4().hex}"
                ledger.statements.append((text, False))
                status = member.post_statement(round_id, text)
                ledger.statements[-1] = (text, status == 303)
            else:
                statement_id = rng.choice(statement_ids)
                value = rng.choice((-1, 0, 1))
                ledger.votes[statement_id].append((value, False))
                status = member.vote(round_id, statement_id, value)
                ledger.votes[statement_id][-1] = (value, status == 200)
            ledger.statuses[status] += 1
        except NO_ANSWER:
            # The server is down or restarting: the request may or may not have been stored.
            ledger.statuses["no answer"] += 1
            time.sleep(0.05)
        except AssertionError:  # a login or page fetch cut short: start over
            ready = False
            ledger.statuses["setup retried"] += 1
            time.sleep(0.05)


def allowed_values(attempts: list[tuple[int, bool]]) -> set[int | None]:
    """The values the stored vote may have after these attempts, in the order sent.

    The last acknowledged value, or any value sent after it whose answer never came (it may
    have been committed just before the crash); with nothing acknowledged, also no vote.
    """
    acked = [i for i, (_, ok) in enumerate(attempts) if ok]
    if not acked:
        return {None} | {v for v, _ in attempts}
    last = acked[-1]
    return {attempts[last][0]} | {v for v, _ in attempts[last + 1 :]}


@dataclass
class CrashRun:
    """The outcome of `crash_under_load`."""

    ledgers: list[Ledger]
    server: ProcessGroup
    worker: ProcessGroup
    crashes: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    acknowledged_at_last_restart: int = 0
    duration: float = 0.0
    stop_status: tuple[int | None, int | None] = (None, None)

    @property
    def statuses(self) -> Counter:
        return sum((ledger.statuses for ledger in self.ledgers), Counter())

    @property
    def acknowledged(self) -> int:
        return sum(ledger.acknowledged for ledger in self.ledgers)


def crash_under_load(
    *,
    port: int,
    env: dict[str, str],
    log_dir: Path,
    round_id: int,
    statement_ids: list[int],
    members: list[tuple[int, str, str]],
    crashes: int,
    progress: int = 20,
    pause: tuple[float, float] = (0.2, 1.0),
    tail_seconds: float = 0.5,
    caught_up: Callable[[], bool] | None = None,
    rng: random.Random | None = None,
) -> CrashRun:
    """Drive the members (user id, email, password) while crashing and restarting everything.

    Each crash comes at a random moment (`pause` seconds, uniformly) after the members got
    `progress` more requests acknowledged since the last start, so that every crash happens
    under load however slow the machine is. After the last restart the members go on until
    `progress` more and for `tail_seconds`; then, if given, the worker
    must make `caught_up()` true within a minute, and both are stopped with SIGTERM (their exit
    statuses in `stop_status`). Every process is gone when this returns, whatever happened.
    """
    rng = rng or random.Random()
    server = gunicorn_server(port, env, log_dir / "gunicorn.log")
    worker = worker_process(env, log_dir / "worker.log")
    run = CrashRun([Ledger(user_id) for user_id, _, _ in members], server, worker)
    stop = threading.Event()
    clients = [
        threading.Thread(
            target=drive,
            args=(HttpMember(port, email, password), round_id, statement_ids, ledger, stop, n),
            name=f"member-{n}",
            daemon=True,
        )
        for n, ((_, email, password), ledger) in enumerate(zip(members, run.ledgers, strict=True))
    ]
    started = time.monotonic()
    try:
        server.start()
        worker.start()
        wait_until_serving(server, port)
        for client in clients:
            client.start()
        for _ in range(crashes):
            _await_progress(run, progress)
            time.sleep(rng.uniform(*pause))
            victims = [server, worker]
            rng.shuffle(victims)
            down = time.monotonic()
            for victim in victims:
                victim.kill()
            if server.group_alive() or worker.group_alive():
                raise AssertionError("a process survived kill -9 of its group")
            run.crashes += 1
            server.start()
            worker.start()
            wait_until_serving(server, port)
            run.restart_seconds.append(time.monotonic() - down)
            run.acknowledged_at_last_restart = run.acknowledged
        _await_progress(run, progress)
        time.sleep(tail_seconds)
        stop.set()
        for client in clients:
            client.join(15)
        if any(client.is_alive() for client in clients):
            raise AssertionError("a member thread did not stop")
        if caught_up is not None and not wait_for(caught_up, timeout=60):
            raise AssertionError(f"the worker did not catch up:\n{worker.log_tail()}")
        run.stop_status = (server.stop(), worker.stop())
    finally:
        stop.set()
        server.close()
        worker.close()
        run.duration = time.monotonic() - started
    return run


def _await_progress(run: CrashRun, progress: int, timeout: float = 60.0) -> None:
    target = run.acknowledged_at_last_restart + progress
    if not wait_for(lambda: run.acknowledged >= target, timeout=timeout, step=0.02):
        raise AssertionError(
            f"the members made no progress ({run.statuses}):\n{run.server.log_tail()}"
        )


def lost_acknowledged(db, round_id: int, statement_ids: list[int], ledgers) -> list[str]:
    """What the database does not hold as acknowledged: votes, then statements (read only)."""
    problems = []
    stored = {
        (u, s): v
        for u, s, v in db.session.execute(
            select(Vote.user_id, Vote.statement_id, Vote.value).where(Vote.round_id == round_id)
        )
    }
    for ledger in ledgers:
        for statement_id in statement_ids:
            attempts = ledger.votes.get(statement_id, [])
            value = stored.get((ledger.user_id, statement_id))
            if value not in allowed_values(attempts):
                problems.append(
                    f"vote of member {ledger.user_id} on {statement_id}: stored {value}, "
                    f"sent (value, acknowledged) {attempts}"
                )
    texts = Counter(
        db.session.scalars(select(Statement.text).where(Statement.round_id == round_id))
    )
    for ledger in ledgers:
        for text, acked in ledger.statements:
            if texts[text] > 1:
                problems.append(f"statement stored {texts[text]} times: {text}")
            elif acked and texts[text] == 0:
                problems.append(f"acknowledged statement lost: {text}")
    return problems
