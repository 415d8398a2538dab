"""Load benchmark: the real app under gunicorn, driven by many simulated members.

What it does (see bench/README-load.md):
1. Set up a database (a fresh SQLite file, or --database-url): migrate, insert N members with
   direct inserts, one open round with S seed statements, earlier votes by some members, and
   one analysis snapshot so that routing uses the snapshot's priorities.
2. Start gunicorn on loopback (gthread workers) and a `deliberate worker` process for the
   analysis, as in production.
3. Drive it with M concurrent simulated members over raw keep-alive HTTP/1.1 connections
   (asyncio streams, no client library): log in, open the round page, fetch the next statement
   (JSON), then vote → vote (the vote's answer carries the next statement), sometimes changing
   an earlier vote, sometimes posting a statement; a member who has voted on everything is
   replaced by the next one (who logs in). Bounded by --duration and --max-votes.
4. Measure, on the same server in the same run with the same connections, a trivial GET
   (/healthz) as the ceiling.
5. Stop the server and worker, then check integrity: deliberate.services.integrity plus a
   comparison of every acknowledged vote with the database.

Exit status: 0 when the run had no errors and the integrity checks passed, 1 otherwise.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

PASSWORD = "load-test password"
# Rate limits stay ENABLED in the bench (their cost is real); these raise the values so that
# simulated members on one address are not throttled. Names per deliberate/config.py.
RAISED_LIMITS = {
    "DELIBERATE_RATELIMIT_ENABLED": "1",
    "DELIBERATE_RATELIMIT_LOGIN": "100000 per minute",
    "DELIBERATE_RATELIMIT_LOGIN_PER_ADDRESS": "1000000 per minute",
    "DELIBERATE_RATELIMIT_VOTE": "100000 per minute",
    "DELIBERATE_RATELIMIT_VOTE_PER_ADDRESS": "10000000 per minute",
    "DELIBERATE_RATELIMIT_STATEMENT": "100000 per hour",
    "DELIBERATE_RATELIMIT_STATEMENT_PER_ADDRESS": "10000000 per hour",
}
CSRF_META = re.compile(rb'<meta name="csrf-token" content="([^"]+)"')
CSRF_INPUT = re.compile(
    rb'name="csrf_token" type="hidden" value="([^"]+)"|'
    rb'type="hidden" name="csrf_token" value="([^"]+)"|'
    rb'name="csrf_token" value="([^"]+)"'
)


# ---------------------------------------------------------------------------------------------
# Setup


@dataclass
class Seeded:
    database_url: str
    round_id: int
    members: list[tuple[int, str]]  # (user id, email) of members the driver may log in as
    statements: int
    seed_votes: int


def _app(database_url: str, instance: Path):
    from deliberate import create_app

    return create_app(
        {
            "DELIBERATE_ENV": "production",
            "SECRET_KEY": "bench-setup",
            "INSTANCE_PATH": str(instance),
            "SQLALCHEMY_DATABASE_URI": database_url,
            "ANALYSIS_WORKER": "off",
            "RATELIMIT_ENABLED": False,
        }
    )


def _reset(database_url: str) -> None:
    """Drop every table of the database (only with --reset)."""
    from sqlalchemy import MetaData, create_engine, text

    engine = create_engine(database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        else:
            meta = MetaData()
            meta.reflect(conn)
            meta.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def seed_database(
    database_url: str,
    instance: Path,
    *,
    members: int,
    statements: int,
    seed_voters: int,
    seed_fraction: float = 0.6,
    seed: int = 0,
) -> Seeded:
    """Migrate the database and fill it with direct inserts; run the analysis once."""
    from flask_migrate import upgrade
    from sqlalchemy import func, insert, select
    from werkzeug.security import generate_password_hash

    from deliberate.extensions import db
    from deliberate.models import (
        Organisation,
        Round,
        Statement,
        User,
        Vote,
        VoteEvent,
        utcnow,
    )
    from deliberate.services.snapshots import refresh_snapshot

    rng = random.Random(seed)
    app = _app(database_url, instance)
    with app.app_context():
        upgrade()
        if db.session.scalar(select(func.count(User.id))):
            raise SystemExit("the database already has users: use a fresh one or --reset")
        now = utcnow()
        org = Organisation(name="Load test coalition")
        db.session.add(org)
        db.session.flush()
        # A cheap hash (one PBKDF2 iteration) so that logging members in measures the app,
        # not scrypt; real accounts use scrypt (services/passwords.py).
        cheap = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1")
        db.session.execute(
            insert(User),
            [
                {
                    "email": f"member{i}@load.example",
                    "name": f"Member {i}",
                    "password_hash": cheap,
                    "role": "member",
                    "organisation_id": org.id,
                    "active": True,
                    "auth_version": 1,
                    "created_at": now,
                }
                for i in range(1, members + 1)
            ],
        )
        round_ = Round(
            question="What should the coalition ask for first?",
            state="open",
            allow_member_statements=True,
            moderation="pre",
        )
        db.session.add(round_)
        db.session.flush()
        db.session.execute(
            insert(Statement),
            [
                {
                    "round_id": round_.id,
                    "text": f"Seed statement number {i}: we should prioritise item {i}.",
                    "normalised_text": f"seed statement number {i}: we should prioritise item {i}.",
                    "origin": "seed",
                    "moderation_state": "accepted",
                    "is_meta": False,
                    "hidden_in_report": False,
                    "created_at": now,
                }
                for i in range(1, statements + 1)
            ],
        )
        db.session.commit()
        users = db.session.execute(select(User.id, User.email).order_by(User.id)).all()
        statement_ids = list(
            db.session.scalars(select(Statement.id).where(Statement.round_id == round_.id))
        )
        # Earlier votes by the first seed_voters members, two opinion groups plus noise.
        votes, events = [], []
        for n, (user_id, _) in enumerate(users[:seed_voters]):
            side = 1 if n % 2 else -1
            for sid in rng.sample(statement_ids, int(len(statement_ids) * seed_fraction)):
                lean = side if sid % 2 else -side
                value = lean if rng.random() < 0.7 else rng.choice((-1, 0, 1))
                row = {"round_id": round_.id, "statement_id": sid, "user_id": user_id}
                votes.append({**row, "value": value, "created_at": now, "updated_at": now})
                events.append({**row, "value": value, "previous_value": None, "created_at": now})
        for start in range(0, len(votes), 5000):
            db.session.execute(insert(Vote), votes[start : start + 5000])
            db.session.execute(insert(VoteEvent), events[start : start + 5000])
        db.session.commit()
        refresh_snapshot(round_.id, force=True)
        db.session.commit()
        seeded = Seeded(
            database_url=database_url,
            round_id=round_.id,
            members=[(u.id, u.email) for u in users[seed_voters:]],
            statements=len(statement_ids),
            seed_votes=len(votes),
        )
        db.session.remove()
        db.engine.dispose()
    return seeded


# ---------------------------------------------------------------------------------------------
# Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    gunicorn: subprocess.Popen
    worker: subprocess.Popen | None
    port: int
    log: Path

    def pids(self) -> list[int]:
        """The gunicorn master, its workers and the analysis worker."""
        pids = [self.gunicorn.pid]
        try:
            children = Path(f"/proc/{self.gunicorn.pid}/task/{self.gunicorn.pid}/children")
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            pass
        if self.worker is not None:
            pids.append(self.worker.pid)
        return pids

    def stop(self) -> None:
        for proc in (self.gunicorn, self.worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.gunicorn, self.worker):
            if proc is not None:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def start_server(
    database_url: str,
    instance: Path,
    *,
    workers: int,
    threads: int,
    analysis: str,
    cpus: str | None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start gunicorn (and a `deliberate worker` unless analysis is 'thread' or 'none')."""
    port = free_port()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DELIBERATE_", "FLASK_", "GUNICORN_"))
    }
    env = {
        **inherited,
        "DELIBERATE_ENV": "production",
        "DELIBERATE_SECRET_KEY": secrets.token_hex(32),
        "DELIBERATE_SECURE_COOKIES": "0",  # plain HTTP on loopback
        "DELIBERATE_DATABASE_URL": database_url,
        "DELIBERATE_ANALYSIS_WORKER": "thread" if analysis == "thread" else "off",
        "DELIBERATE_ACCESS_LOG": "",  # no access log line per request (see README-load.md)
        **RAISED_LIMITS,
        **(extra_env or {}),
    }
    bindir = Path(sys.executable).parent
    log = instance / "server.log"
    instance.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 - kept open for the child's life
    pin = ["taskset", "-c", cpus] if cpus else []
    # The production settings (deliberate/serving.py, as `make serve`), with the bench's
    # address, processes and threads.
    gunicorn = subprocess.Popen(
        [
            *pin,
            str(bindir / "gunicorn"),
            "-c",
            "python:deliberate.serving",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--backlog",
            "2048",
            "--log-level",
            "warning",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    worker = None
    if analysis == "process":
        worker = subprocess.Popen(
            [*pin, str(bindir / "deliberate"), "worker"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    server = Server(gunicorn, worker, port, log)
    deadline = time.monotonic() + 120  # generous: a busy machine starts slowly
    while time.monotonic() < deadline:
        if gunicorn.poll() is not None:
            raise SystemExit(f"gunicorn exited early; see {log}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                answered = sock.recv(64).startswith(b"HTTP/1.1 200")
            # Every worker process forked (the CPU figures read them from /proc).
            if answered and len(server.pids()) >= 1 + workers + (worker is not None):
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise SystemExit(f"gunicorn did not answer on port {port}; {log}:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------------------------------------
# A small HTTP/1.1 keep-alive client on asyncio streams


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Connection:
    """One keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.cookies: dict[str, str] = {}

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if self.cookies:
            head.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        for attempt in range(2):
            if self.writer is None:
                await self._connect()
            try:
                self.writer.write(data)
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                # The server closed an idle keep-alive connection: retry once on a new one.
                # (Were a request's answer lost instead, sending it again is harmless for a
                # vote: the same value again is "unchanged".)
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "set-cookie":
                cookie = value.split(";", 1)[0]
                key, _, val = cookie.partition("=")
                if val == "" or "expires=thu, 01 jan 1970" in value.lower():
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
            headers[name] = value
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                body += await self.reader.readexactly(size + 2)
                body = body[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, dict(self.cookies), body)


# ---------------------------------------------------------------------------------------------
# Simulated members


@dataclass
class Stats:
    """What the driver saw; `acks` holds the last acknowledged value per (member, statement)."""

    vote_latencies: list[float] = field(default_factory=list)
    votes: int = 0
    changes: int = 0
    statuses: Counter = field(default_factory=Counter)
    events_expected: int = 0
    acks: dict[tuple[int, int], int] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    logins: int = 0
    login_latencies: list[float] = field(default_factory=list)
    statements_posted: int = 0
    other_requests: int = 0
    get_latencies: list[float] = field(default_factory=list)
    members_done: int = 0

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail[:300]}")


class MemberPool:
    def __init__(self, members: list[tuple[int, str]]):
        self.members = list(members)
        self.next = 0

    def take(self) -> tuple[int, str] | None:
        if self.next >= len(self.members):
            return None
        member = self.members[self.next]
        self.next += 1
        return member


class SimulatedMember:
    """One concurrent client: logs in as a member, votes until told to stop."""

    def __init__(self, port: int, round_id: int, pool: MemberPool, stats: Stats, rng, opts):
        self.conn = Connection(port)
        self.round_id = round_id
        self.pool = pool
        self.stats = stats
        self.rng = rng
        self.opts = opts
        self.user_id: int | None = None
        self.csrf = ""
        self.next: dict | None = None
        self.mine: dict[int, int] = {}  # statement id -> value acknowledged for this member

    async def login(self) -> bool:
        """Log in as the pool's next member and open the round; False when the pool is empty."""
        member = self.pool.take()
        if member is None:
            return False
        user_id, email = member
        self.conn.cookies.clear()
        started = time.perf_counter()
        page = await self.conn.request("GET", "/login")
        match = CSRF_META.search(page.body)
        if page.status != 200 or not match:
            self.stats.error("login-page", f"{page.status}")
            return False
        form = urlencode(
            {"csrf_token": match.group(1).decode(), "email": email, "password": PASSWORD}
        )
        answer = await self.conn.request(
            "POST",
            "/login",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if answer.status not in (302, 303):
            self.stats.error("login", f"{answer.status} {answer.body[:200]!r}")
            return False
        page = await self.conn.request("GET", f"/rounds/{self.round_id}")
        match = CSRF_META.search(page.body)
        if page.status != 200 or not match:
            self.stats.error("round-page", f"{page.status}")
            return False
        self.csrf = match.group(1).decode()
        started_next = time.perf_counter()
        answer = await self.conn.request("GET", f"/api/rounds/{self.round_id}/next")
        self.stats.get_latencies.append(time.perf_counter() - started_next)
        if answer.status != 200:
            self.stats.error("next", f"{answer.status} {answer.body[:200]!r}")
            return False
        self.next = answer.json()["next"]
        self.user_id = user_id
        self.mine = {}
        self.stats.logins += 1
        self.stats.other_requests += 4
        self.stats.login_latencies.append(time.perf_counter() - started)
        return True

    async def vote(self, statement_id: int, value: int, record: bool) -> bool:
        body = json.dumps({"statement_id": statement_id, "value": value}).encode()
        started = time.perf_counter()
        answer = await self.conn.request(
            "POST",
            f"/api/rounds/{self.round_id}/votes",
            body,
            {"Content-Type": "application/json", "X-CSRFToken": self.csrf},
        )
        elapsed = time.perf_counter() - started
        if answer.status != 200:
            self.stats.error(f"vote-{answer.status}", answer.body.decode("utf-8", "replace"))
            return False
        data = answer.json()
        if data.get("statement_id") != statement_id or data.get("value") != value:
            self.stats.error("vote-answer", repr(data)[:300])
            return False
        # Acknowledged: from here on this value must be in the database.
        self.stats.acks[(self.user_id, statement_id)] = value
        self.mine[statement_id] = value
        if data["status"] != "unchanged":
            self.stats.events_expected += 1
        if record:
            self.stats.votes += 1
            self.stats.statuses[data["status"]] += 1
            self.stats.vote_latencies.append(elapsed)
        self.next = data["next"]
        return True

    async def post_statement(self) -> None:
        text = f"Posted under load {secrets.token_hex(6)}: we should meet more often."
        form = urlencode({"csrf_token": self.csrf, "text": text})
        answer = await self.conn.request(
            "POST",
            f"/rounds/{self.round_id}/statements",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.stats.other_requests += 1
        if answer.status not in (302, 303):
            self.stats.error(f"statement-{answer.status}", answer.body[:300].decode("latin-1"))
        else:
            self.stats.statements_posted += 1

    async def run(self, phase: dict) -> None:
        """Vote until phase['stop'] is set (or the pool and this member run out)."""
        rng = self.rng
        try:
            if not await self.login():
                return
            while not phase["stop"]:
                record = phase["measure"]
                roll = rng.random()
                if roll < self.opts.statement_rate:
                    await self.post_statement()
                    continue
                if roll < self.opts.statement_rate + self.opts.change_rate and self.mine:
                    sid = rng.choice(list(self.mine))
                    value = rng.choice([v for v in (-1, 0, 1) if v != self.mine[sid]])
                    if await self.vote(sid, value, record) and record:
                        self.stats.changes += 1
                    continue
                if self.next is None:
                    self.stats.members_done += 1
                    if not await self.login():
                        return
                    continue
                value = rng.choice((1, 1, -1, -1, 0))
                await self.vote(self.next["id"], value, record)
                if phase["count"] is not None and self.stats.votes >= phase["count"]:
                    phase["stop"] = True
        except Exception as exc:  # a broken connection or a bad answer: counted, never hidden
            self.stats.error(type(exc).__name__, str(exc))


async def _ceiling(conns: list[Connection], duration: float) -> tuple[int, list[float], Counter]:
    """Hammer GET /healthz on the same connections for `duration` seconds."""
    latencies: list[float] = []
    errors: Counter = Counter()
    stop = time.perf_counter() + duration

    async def loop(conn: Connection):
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                answer = await conn.request("GET", "/healthz")
            except Exception as exc:
                errors[type(exc).__name__] += 1
                continue
            if answer.status != 200:
                errors[f"healthz-{answer.status}"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(loop(c) for c in conns))
    return len(latencies), latencies, errors


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class DriveResult:
    stats: Stats
    vote_seconds: float
    vote_rate: float
    get_rate: float
    get_count: int
    get_latencies: list[float]
    get_errors: Counter
    cpu: dict[str, float]
    wall: dict[str, float]


def _server_env(opts) -> dict[str, str]:
    """The extra NAME=VALUE settings of the server (--env)."""
    return dict(e.split("=", 1) for e in opts.env)


async def drive(server: Server, seeded: Seeded, opts) -> DriveResult:
    """Log the members in, let them vote (warm-up, then measured), then measure the ceiling."""
    stats = Stats()
    pool = MemberPool(seeded.members)
    rng = random.Random(opts.seed)
    members = [
        SimulatedMember(
            server.port, seeded.round_id, pool, stats, random.Random(rng.random()), opts
        )
        for _ in range(opts.concurrency)
    ]
    phase = {"stop": False, "measure": False, "count": None}
    wall = {}
    started = time.perf_counter()
    tasks = [asyncio.create_task(m.run(phase)) for m in members]
    # Logins happen first (each member logs in at the start of run()); wait for them.
    while stats.logins + sum(stats.errors.values()) < opts.concurrency and not all(
        t.done() for t in tasks
    ):
        await asyncio.sleep(0.02)
    wall["logins"] = time.perf_counter() - started
    await asyncio.sleep(opts.warmup)
    # Measured vote phase.
    cpu_before = cpu_seconds(server.pids())
    driver_before = time.process_time()
    phase["count"] = None if opts.max_votes is None else opts.max_votes
    phase["measure"] = True
    vote_started = time.perf_counter()
    deadline = vote_started + opts.duration
    while time.perf_counter() < deadline and not phase["stop"] and not all(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    phase["stop"] = True
    vote_seconds = time.perf_counter() - vote_started
    cpu_after = cpu_seconds(server.pids())
    driver_after = time.process_time()
    await asyncio.gather(*tasks)
    wall["votes"] = vote_seconds
    # The ceiling: GET /healthz on the same connections, same concurrency.
    conns = [m.conn for m in members]
    ceiling_before = cpu_seconds(server.pids())
    driver_ceiling_before = time.process_time()
    get_started = time.perf_counter()
    get_count, get_latencies, get_errors = await _ceiling(conns, opts.ceiling_duration)
    get_seconds = time.perf_counter() - get_started
    ceiling_after = cpu_seconds(server.pids())
    driver_ceiling_after = time.process_time()
    wall["ceiling"] = get_seconds
    for conn in conns:
        await conn.close()
    cpu = {
        "server_votes": sum(cpu_after.get(p, 0) - cpu_before.get(p, 0) for p in cpu_before),
        "driver_votes": driver_after - driver_before,
        "server_ceiling": sum(
            ceiling_after.get(p, 0) - ceiling_before.get(p, 0) for p in ceiling_before
        ),
        "driver_ceiling": driver_ceiling_after - driver_ceiling_before,
    }
    if server.worker is not None:
        wpid = server.worker.pid
        cpu["analysis_worker_votes"] = cpu_after.get(wpid, 0) - cpu_before.get(wpid, 0)
    return DriveResult(
        stats=stats,
        vote_seconds=vote_seconds,
        vote_rate=stats.votes / vote_seconds if vote_seconds else 0.0,
        get_rate=get_count / get_seconds if get_seconds else 0.0,
        get_count=get_count,
        get_latencies=get_latencies,
        get_errors=get_errors,
        cpu=cpu,
        wall=wall,
    )


# ---------------------------------------------------------------------------------------------
# Integrity


def check_acknowledged(database_url: str, instance: Path, seeded: Seeded, stats: Stats) -> dict:
    """Run check_integrity and compare every acknowledged vote with the database."""
    from sqlalchemy import func, select

    from deliberate.extensions import db
    from deliberate.models import Statement, Vote, VoteEvent
    from deliberate.services.integrity import check_integrity

    app = _app(database_url, instance)
    problems: list[str] = []
    with app.app_context():
        report = check_integrity()
        driven = {uid for uid, _ in seeded.members}
        stored: dict[tuple[int, int], int] = {}
        counts: Counter = Counter()
        for user_id, statement_id, value in db.session.execute(
            select(Vote.user_id, Vote.statement_id, Vote.value).where(
                Vote.round_id == seeded.round_id
            )
        ):
            if user_id in driven:
                counts[(user_id, statement_id)] += 1
                stored[(user_id, statement_id)] = value
        duplicated = [k for k, n in counts.items() if n > 1]
        missing = [k for k in stats.acks if k not in stored]
        wrong = [k for k, v in stats.acks.items() if k in stored and stored[k] != v]
        unacknowledged = [k for k in stored if k not in stats.acks]
        events = (
            db.session.scalar(select(func.count(VoteEvent.id)).where(VoteEvent.user_id.in_(driven)))
            if len(driven) < 30000
            else None
        )
        posted = db.session.scalar(
            select(func.count(Statement.id)).where(
                Statement.round_id == seeded.round_id, Statement.origin == "member"
            )
        )
        if duplicated:
            problems.append(f"{len(duplicated)} (member, statement) pairs stored more than once")
        if missing:
            problems.append(f"{len(missing)} acknowledged votes missing, e.g. {missing[:3]}")
        if wrong:
            problems.append(f"{len(wrong)} acknowledged votes with another value, e.g. {wrong[:3]}")
        if unacknowledged:
            # Possible only after an error (a request whose answer was lost); reported.
            problems.append(f"{len(unacknowledged)} stored votes never acknowledged")
        if events is not None and events != stats.events_expected:
            problems.append(
                f"vote history has {events} events for the driven members, "
                f"the acknowledgements imply {stats.events_expected}"
            )
        if posted != stats.statements_posted:
            problems.append(f"{posted} member statements stored, {stats.statements_posted} posted")
        db.session.remove()
        db.engine.dispose()
    return {
        "integrity": report.as_dict(),
        "integrity_summary": report.summary(),
        "acknowledged": len(stats.acks),
        "problems": problems,
        "ok": report.ok and not problems,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def _run_in_fresh_loop(coroutine):
    """asyncio.run in a thread of its own: works even where the caller's thread already runs
    an event loop (as in a test process that also ran Playwright's sync API)."""
    import threading

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed back to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="load-driver")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run(opts) -> dict:
    """Set up, serve, drive, check; return the figures (also printed unless --quiet)."""
    return run_with_details(opts)[0]


def run_with_details(opts) -> tuple[dict, Seeded, Stats]:
    """As run(), also returning what was seeded and what the driver saw."""
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="deliberate-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    instance = workdir / "instance"
    database_url = opts.database_url or f"sqlite:///{workdir / 'load.db'}"
    if opts.reset:
        _reset(database_url)
    t0 = time.perf_counter()
    seeded = seed_database(
        database_url,
        instance,
        members=opts.members,
        statements=opts.statements,
        seed_voters=opts.seed_voters,
        seed=opts.seed,
    )
    setup_seconds = time.perf_counter() - t0
    server = start_server(
        database_url,
        instance,
        workers=opts.workers,
        threads=opts.threads,
        analysis=opts.analysis,
        cpus=opts.server_cpus,
        extra_env=_server_env(opts),
    )
    if opts.driver_cpus:
        os.sched_setaffinity(0, {int(c) for c in opts.driver_cpus.split(",")})
    load_before = os.getloadavg()[0]
    try:
        result = _run_in_fresh_loop(drive(server, seeded, opts))
    finally:
        server.stop()
    load_after = os.getloadavg()[0]
    check = check_acknowledged(database_url, instance, seeded, result.stats)
    s = result.stats
    lat = s.vote_latencies
    figures = {
        "database": database_url.split("://", 1)[0],
        "members": opts.members,
        "statements": seeded.statements,
        "seed_votes": seeded.seed_votes,
        "concurrency": opts.concurrency,
        "server": f"gunicorn gthread {opts.workers} workers x {opts.threads} threads, CPU "
        f"affinity {_server_env(opts).get('DELIBERATE_WEB_CPU_AFFINITY', 'auto')}",
        "analysis": opts.analysis,
        "setup_seconds": round(setup_seconds, 2),
        "logins": s.logins,
        "login_p50_ms": round(percentile(s.login_latencies, 50) * 1000, 1),
        "votes": s.votes,
        "vote_seconds": round(result.vote_seconds, 2),
        "votes_per_second": round(result.vote_rate, 1),
        "vote_statuses": dict(s.statuses),
        "changes": s.changes,
        "statements_posted": s.statements_posted,
        "members_finished": s.members_done,
        "p50_ms": round(percentile(lat, 50) * 1000, 2),
        "p95_ms": round(percentile(lat, 95) * 1000, 2),
        "p99_ms": round(percentile(lat, 99) * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
        "errors": sum(s.errors.values()),
        "error_kinds": dict(s.errors),
        "error_examples": s.error_examples,
        "get_per_second": round(result.get_rate, 1),
        "get_p50_ms": round(percentile(result.get_latencies, 50) * 1000, 2),
        "get_p99_ms": round(percentile(result.get_latencies, 99) * 1000, 2),
        "get_errors": sum(result.get_errors.values()),
        "vote_to_get_ratio": round(result.vote_rate / result.get_rate, 3)
        if result.get_rate
        else None,
        "cpu_seconds": {k: round(v, 2) for k, v in result.cpu.items()},
        "server_cpu_ms_per_vote": round(result.cpu["server_votes"] / s.votes * 1000, 2)
        if s.votes
        else None,
        "server_cpu_ms_per_get": round(result.cpu["server_ceiling"] / result.get_count * 1000, 2)
        if result.get_count
        else None,
        "cpus": os.cpu_count(),
        # Other work on the machine shares its CPUs: the 1-minute load average around the run.
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "server_cpus": opts.server_cpus or "all",
        "driver_cpus": opts.driver_cpus or "all",
        **check,
        "workdir": str(workdir),
    }
    if not opts.quiet:
        print_report(figures)
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2))
    return figures, seeded, result.stats


def print_report(f: dict) -> None:
    cpu = f["cpu_seconds"]
    vs = f["vote_seconds"] or 1
    print(
        f"deliberate load: {f['database']}, {f['members']} members, {f['statements']} "
        f"statements, {f['seed_votes']} earlier votes, {f['concurrency']} concurrent members"
    )
    print(
        f"  server: {f['server']}, analysis worker: {f['analysis']}; setup "
        f"{f['setup_seconds']} s; {f['logins']} logins (p50 {f['login_p50_ms']} ms)"
    )
    print(
        f"  votes:   {f['votes']} in {f['vote_seconds']} s = {f['votes_per_second']} votes/s "
        f"({f['vote_statuses']}, {f['changes']} changes, {f['statements_posted']} statements "
        f"posted, {f['members_finished']} members finished)"
    )
    print(
        f"  latency: p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms, p99 {f['p99_ms']} ms, "
        f"max {f['max_ms']} ms"
    )
    print(f"  errors:  {f['errors']} {f['error_kinds'] or ''}")
    for example in f["error_examples"]:
        print(f"    {example}")
    print(
        f"  ceiling: GET /healthz {f['get_per_second']} req/s (p50 {f['get_p50_ms']} ms, p99 "
        f"{f['get_p99_ms']} ms, {f['get_errors']} errors)"
    )
    print(f"  ratio:   votes/s ÷ GET/s = {f['vote_to_get_ratio']}")
    print(
        f"  cpu:     during votes server {cpu['server_votes']} s "
        f"({cpu['server_votes'] / vs:.2f} cores), driver {cpu['driver_votes']} s "
        f"({cpu['driver_votes'] / vs:.2f} cores)"
        + (
            f", analysis worker {cpu['analysis_worker_votes']} s"
            if "analysis_worker_votes" in cpu
            else ""
        )
        + f"; machine has {f['cpus']} CPUs (load average {f['load_average'][0]} before, "
        f"{f['load_average'][1]} after); server on {f['server_cpus']}, driver on "
        f"{f['driver_cpus']}"
    )
    print(
        f"  server CPU per request: {f['server_cpu_ms_per_vote']} ms per vote (all requests of "
        f"the vote phase / votes), {f['server_cpu_ms_per_get']} ms per GET /healthz"
    )
    print(f"  {f['integrity_summary']}")
    print(
        f"  acknowledged votes: {f['acknowledged']}; "
        + (
            "all in the database exactly once with the acknowledged value"
            if not f["problems"]
            else "PROBLEMS: " + "; ".join(f["problems"])
        )
    )
    print("  RESULT: " + ("OK" if f["ok"] and not f["errors"] else "FAILED"))


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="default: a fresh SQLite file in the work directory")
    p.add_argument("--reset", action="store_true", help="drop every table of --database-url first")
    p.add_argument("--members", "-N", type=int, default=2000)
    p.add_argument("--statements", type=int, default=150)
    p.add_argument(
        "--seed-voters", type=int, default=300, help="members with earlier votes (not driven)"
    )
    p.add_argument("--concurrency", "-M", type=int, default=64)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measured voting")
    p.add_argument("--max-votes", type=int, default=None, help="stop after this many votes")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured voting")
    p.add_argument(
        "--ceiling-duration",
        type=float,
        default=None,
        help="seconds of GET /healthz (default: half of --duration)",
    )
    p.add_argument("--change-rate", type=float, default=0.05)
    p.add_argument("--statement-rate", type=float, default=0.002)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument(
        "--analysis",
        choices=("process", "thread", "none"),
        default="process",
        help="a `deliberate worker` process (default), the in-process thread, none",
    )
    p.add_argument("--server-cpus", help="pin the server, e.g. 0,1 (taskset -c)")
    p.add_argument("--driver-cpus", help="pin the driver, e.g. 1")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    p.add_argument("--workdir", help="where the SQLite file and logs go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--quiet", action="store_true")
    opts = p.parse_args(argv)
    if opts.ceiling_duration is None:
        opts.ceiling_duration = max(1.0, opts.duration / 2)
    return opts


def main(argv: list[str] | None = None) -> int:
    figures = run(parse_args(argv))
    return 0 if figures["ok"] and not figures["errors"] and not figures["get_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
