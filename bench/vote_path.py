"""In-process micro-benchmark of the vote path: CPU and SQL statements per request.

Seeds a database as bench/load.py does (its seed_database), logs members in through the app
(Flask test client, CSRF on, production settings), then times, one request after another in
this process:

- POST /api/rounds/<id>/votes (vote -> vote, as the load driver: the answer carries the next
  statement; a share of the steps changes an earlier vote instead),
- GET /api/rounds/<id>/next,
- GET /healthz (the reference: a request that does no database work).

For each it prints the CPU time of this process per request (Python and, on SQLite, SQLite's
own work), the wall time, the SQL statements per request (a before_cursor_execute listener),
the transactions (commits/rollbacks) per request and the connection checkouts (each one a
pre-ping round trip on PostgreSQL). On PostgreSQL it also prints the CPU the database backends
used per request (read from /proc when the server runs on this machine).
It prints figures; it asserts nothing.

    .venv/bin/python bench/vote_path.py                      # SQLite in a temporary directory
    .venv/bin/python bench/vote_path.py --database-url \
        postgresql+psycopg://bench:bench@127.0.0.1:54330/deliberate_load --reset
    .venv/bin/python bench/vote_path.py --profile /tmp/vote.prof   # cProfile of the vote phase
"""

from __future__ import annotations

import argparse
import cProfile
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
for path in (PROJECT_ROOT, PROJECT_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from load import PASSWORD, _reset, seed_database  # noqa: E402 (after the path set-up)

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


class Counters:
    """SQL statements, transactions and pool checkouts seen on the engine."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.counts: Counter = Counter()
        self.backend_pids: set[int] = set()
        self.log: list[str] | None = None  # the statements, while a list

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(conn, cursor, statement, parameters, context, executemany):
            self.counts["statements"] += 1
            if self.log is not None:
                self.log.append(" ".join(statement.split())[:160])

        @event.listens_for(engine, "commit")
        def _commit(conn):
            self.counts["commits"] += 1
            if self.log is not None:
                self.log.append("(commit)")

        @event.listens_for(engine, "rollback")
        def _rollback(conn):
            self.counts["rollbacks"] += 1

        @event.listens_for(engine.pool, "checkout")
        def _checkout(dbapi_connection, record, proxy):
            self.counts["checkouts"] += 1

        if engine.dialect.name == "postgresql":

            @event.listens_for(engine, "connect")
            def _connect(dbapi_connection, record):
                cursor = dbapi_connection.cursor()
                cursor.execute("SELECT pg_backend_pid()")
                self.backend_pids.add(cursor.fetchone()[0])
                cursor.close()

    def snapshot(self) -> Counter:
        return Counter(self.counts)


def backend_cpu_seconds(pids: set[int]) -> float | None:
    """CPU (user + system) used so far by these PostgreSQL backends, if /proc shows them."""
    if not pids:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None  # another machine, or the backend is gone
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wsgi_call(app, method: str, path: str, *, body: bytes = b"", headers=None):
    """Call the app as a WSGI server does, with an environ made by hand (no test client, whose
    own work would be counted): the status and the body."""
    import io

    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "vote-path-bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/json"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []
    chunks = app(environ, lambda s, h, exc_info=None: status.append(s))
    try:
        data = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return int(status[0].split()[0]), data


class Member:
    """A logged-in member's test client and where they are in the round."""

    wsgi = False  # vote by calling the app directly (--wsgi)

    def __init__(self, app, email: str, round_id: int):
        self.app = app
        self.client = app.test_client()
        # The session protection identifier covers the user agent: the same in --wsgi calls.
        self.client.environ_base["HTTP_USER_AGENT"] = "vote-path-bench"
        self.round_id = round_id
        page = self.client.get("/login").get_data(as_text=True)
        token = CSRF_META.search(page).group(1)
        answer = self.client.post(
            "/login", data={"csrf_token": token, "email": email, "password": PASSWORD}
        )
        if answer.status_code not in (302, 303):
            raise SystemExit(f"login failed for {email}: {answer.status_code}")
        page = self.client.get(f"/rounds/{round_id}").get_data(as_text=True)
        self.csrf = CSRF_META.search(page).group(1)
        self.next = self.get_next().get_json()["next"]
        self.mine: dict[int, int] = {}

    def get_next(self):
        return self.client.get(f"/api/rounds/{self.round_id}/next")

    def vote(self, statement_id: int, value: int):
        if self.wsgi:
            return self._vote_wsgi(statement_id, value)
        answer = self.client.post(
            f"/api/rounds/{self.round_id}/votes",
            json={"statement_id": statement_id, "value": value},
            headers={"X-CSRFToken": self.csrf},
        )
        if answer.status_code != 200:
            raise SystemExit(f"vote failed: {answer.status_code} {answer.get_data(as_text=True)}")
        data = answer.get_json()
        self.mine[statement_id] = value
        self.next = data["next"]
        return data


    def _vote_wsgi(self, statement_id: int, value: int):
        import json

        status, body = wsgi_call(
            self.app,
            "POST",
            f"/api/rounds/{self.round_id}/votes",
            body=json.dumps({"statement_id": statement_id, "value": value}).encode(),
            headers={
                "X-CSRFToken": self.csrf,
                "Cookie": f"session={self.client.get_cookie('session').value}",
            },
        )
        if status != 200:
            raise SystemExit(f"vote failed: {status} {body[:300]!r}")
        data = json.loads(body)
        self.mine[statement_id] = value
        self.next = data["next"]
        return data


class Phase:
    """Times a run of requests: CPU and wall clock, engine counters, backend CPU."""

    def __init__(self, name: str, counters: Counters):
        self.name = name
        self.counters = counters

    def __enter__(self):
        self.c0 = self.counters.snapshot()
        self.b0 = backend_cpu_seconds(self.counters.backend_pids)
        self.t0 = time.perf_counter()
        self.p0 = time.process_time()
        self.requests = 0
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.p0
        self.wall = time.perf_counter() - self.t0
        b1 = backend_cpu_seconds(self.counters.backend_pids)
        self.backend = None if b1 is None or self.b0 is None else b1 - self.b0
        self.delta = self.counters.snapshot() - self.c0

    def report(self) -> str:
        n = max(self.requests, 1)
        parts = [
            f"{self.name:<12} {self.requests:6d} requests",
            f"CPU {self.cpu / n * 1000:6.3f} ms/req",
            f"wall {self.wall / n * 1000:6.3f} ms/req",
            f"SQL {self.delta['statements'] / n:5.2f}/req",
            f"commits {self.delta['commits'] / n:4.2f}/req",
            f"rollbacks {self.delta['rollbacks'] / n:4.2f}/req",
            f"checkouts {self.delta['checkouts'] / n:4.2f}/req",
        ]
        if self.backend is not None:
            parts.append(f"db backend CPU {self.backend / n * 1000:6.3f} ms/req")
        return "  ".join(parts)


def make_app(database_url: str, instance: Path, rate_limits: bool):
    from deliberate import create_app

    config = {
        "DELIBERATE_ENV": "production",
        "SECRET_KEY": "bench-vote-path",
        "INSTANCE_PATH": str(instance),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "ANALYSIS_WORKER": "off",
        "SESSION_COOKIE_SECURE": False,
        "REMEMBER_COOKIE_SECURE": False,
        "RATELIMIT_ENABLED": rate_limits,
    }
    if rate_limits:  # raised values, as bench/load.py's RAISED_LIMITS
        config.update(
            RATELIMIT_LOGIN="100000 per minute",
            RATELIMIT_LOGIN_PER_ADDRESS="1000000 per minute",
            RATELIMIT_VOTE="100000 per minute",
            RATELIMIT_VOTE_PER_ADDRESS="10000000 per minute",
        )
    return create_app(config)


def run(opts) -> None:
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="deliberate-vote-path-"))
    workdir.mkdir(parents=True, exist_ok=True)
    instance = workdir / "instance"
    database_url = opts.database_url or f"sqlite:///{workdir / 'vote_path.db'}"
    if opts.reset or not opts.database_url:
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
    print(
        f"database: {database_url.split('://', 1)[0]}; seeded in {time.perf_counter() - t0:.1f} s "
        f"({seeded.statements} statements, {seeded.seed_votes} earlier votes, "
        f"{len(seeded.members)} members to drive); rate limits "
        f"{'on' if opts.rate_limits else 'off'}"
    )
    if database_url.startswith("postgresql"):
        # As autovacuum would soon after the bulk insert: the planner needs the statistics.
        from sqlalchemy import create_engine

        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
    from deliberate.extensions import db

    app = make_app(database_url, instance, opts.rate_limits)
    Member.wsgi = opts.wsgi
    rng = random.Random(opts.seed)
    with app.app_context():
        engine = db.engine
    counters = Counters(engine)
    pool = iter(seeded.members)
    # Members log in before the measurement: enough to replace those who finish the round.
    needed = opts.concurrency + (opts.warmup + opts.votes) // max(seeded.statements, 1) + 2
    spare = [
        Member(app, email, seeded.round_id)
        for _, email in (next(pool, (None, None)) for _ in range(needed))
        if email is not None
    ]
    members = [spare.pop(0) for _ in range(opts.concurrency)]

    def next_member() -> Member:
        if not spare:
            raise SystemExit("out of members: raise --members")
        return spare.pop(0)

    def vote_step(i: int) -> None:
        member = members[i % len(members)]
        if member.mine and rng.random() < opts.change_rate:
            sid = rng.choice(list(member.mine))
            member.vote(sid, rng.choice([v for v in (-1, 0, 1) if v != member.mine[sid]]))
            return
        if member.next is None:  # done: the next member takes this one's place
            member = members[i % len(members)] = next_member()
        member.vote(member.next["id"], rng.choice((1, 1, -1, -1, 0)))

    # Warm-up (compiled-statement caches, the routing weights cache), not measured.
    for i in range(opts.warmup):
        vote_step(i)
    healthz = app.test_client()
    for _ in range(50):
        healthz.get("/healthz")
        members[0].get_next()

    if opts.show_sql:
        for name, request in (
            ("vote", lambda: vote_step(opts.warmup)),
            ("GET next", lambda: members[0].get_next()),
        ):
            counters.log = []
            request()
            print(f"SQL of one {name} request:")
            for line in counters.log:
                print("   ", line)
        counters.log = None

    profiler = cProfile.Profile() if opts.profile else None
    with Phase("vote", counters) as votes:
        if profiler:
            profiler.enable()
        for i in range(opts.votes):
            vote_step(i)
            votes.requests += 1
        if profiler:
            profiler.disable()
    with Phase("next", counters) as nexts:
        for i in range(opts.gets):
            members[i % len(members)].get_next()
            nexts.requests += 1
    with Phase("healthz", counters) as health:
        for _ in range(opts.gets):
            if opts.wsgi:
                wsgi_call(app, "GET", "/healthz")
            else:
                healthz.get("/healthz")
            health.requests += 1
    for phase in (votes, nexts, health):
        print(phase.report())
    if profiler:
        profiler.dump_stats(opts.profile)
        print(f"cProfile of the vote phase written to {opts.profile}")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="default: a fresh SQLite file in --workdir")
    p.add_argument("--reset", action="store_true", help="drop every table of --database-url first")
    p.add_argument("--workdir", help="default: a new temporary directory")
    p.add_argument("--members", type=int, default=400)
    p.add_argument("--statements", type=int, default=150)
    p.add_argument("--seed-voters", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8, help="members voting in turn")
    p.add_argument("--votes", type=int, default=2000, help="measured vote requests")
    p.add_argument("--gets", type=int, default=1000, help="measured GET next and GET /healthz")
    p.add_argument("--warmup", type=int, default=200, help="vote requests before measuring")
    p.add_argument("--change-rate", type=float, default=0.05)
    p.add_argument("--rate-limits", action="store_true", help="keep rate limiting on (raised)")
    p.add_argument("--show-sql", action="store_true", help="print the SQL of one of each")
    p.add_argument(
        "--wsgi",
        action="store_true",
        help="votes and GET /healthz by calling the app with a hand-made environ (as gunicorn "
        "does), not through the test client, whose own work is then not counted",
    )
    p.add_argument("--profile", metavar="FILE", help="write a cProfile of the vote phase")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
