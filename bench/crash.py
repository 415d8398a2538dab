"""The long crash test: kill -9 the server and the worker many times under load, then check.

The same scenario as tests/system/test_crash.py (which runs a short form in CI), for longer
and with more members: gunicorn with the production settings (deliberate.serving) and a
separate `deliberate worker` on a fresh database; members log in and vote, change votes and
post statements over real HTTP; at random moments both process groups are killed with
SIGKILL and started again. At the end:

- every acknowledged vote is stored with its last acknowledged value (a later vote whose
  answer was lost in a crash may or may not be stored), every acknowledged statement exists
  once;
- `check_integrity()` passes (vote history consistent, counts consistent);
- the worker caught up (a snapshot of every vote) after its restarts.

Prints the figures and exits 1 if anything was lost or inconsistent. Not run in CI.

    .venv/bin/python bench/crash.py                        # SQLite, 20 crashes, 16 members
    .venv/bin/python bench/crash.py --crashes 50 --members 32
    .venv/bin/python bench/crash.py --database-url postgresql+psycopg://user:pw@host/db

A PostgreSQL database given with --database-url must be empty or migrated; it is migrated to
the latest revision and the run adds its own users and round to it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from deliberate import create_app  # noqa: E402
from deliberate.extensions import db  # noqa: E402
from deliberate.models import Round, Snapshot, Statement, User, VoteEvent  # noqa: E402
from deliberate.services.integrity import check_integrity  # noqa: E402
from deliberate.services.passwords import hash_password  # noqa: E402
from tests.system.crashing import crash_under_load, lost_acknowledged  # noqa: E402
from tests.system.servers import free_port, server_env  # noqa: E402

PASSWORD = "correct horse battery staple"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=20, help="kill -9 cycles (default 20)")
    parser.add_argument("--members", type=int, default=16, help="simulated members (16)")
    parser.add_argument("--statements", type=int, default=30, help="seed statements (30)")
    parser.add_argument(
        "--pause",
        type=float,
        nargs=2,
        default=(0.5, 3.0),
        metavar=("MIN", "MAX"),
        help="seconds of load before each crash, uniformly (default 0.5 3.0)",
    )
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a new SQLite file)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the crash times")
    parser.add_argument("--keep", action="store_true", help="keep the logs and SQLite file")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def prepare(database_url: str, workdir: Path, members: int, statements: int):
    """Migrate the database, add the members and an open round; return the app and ids."""
    app = create_app(
        {
            "DELIBERATE_ENV": "production",
            "SECRET_KEY": "bench-crash",
            "SQLALCHEMY_DATABASE_URI": database_url,
            "INSTANCE_PATH": str(workdir / "instance"),
            "ANALYSIS_WORKER": "off",
        }
    )
    tag = uuid.uuid4().hex[:8]
    with app.app_context():
        upgrade()
        password_hash = hash_password(PASSWORD)
        users = [
            User(
                email=f"crash{i}-{tag}@example.org", name=f"Crash {i}", password_hash=password_hash
            )
            for i in range(members)
        ]
        round_ = Round(question=f"Crash run {tag}?", state="open")
        db.session.add_all([*users, round_])
        db.session.flush()
        seeds = [
            Statement(
                round_id=round_.id,
                text=f"Seed statement {i} of run {tag}",
                normalised_text=f"seed statement {i} of run {tag}",
                origin="seed",
                moderation_state="accepted",
            )
            for i in range(statements)
        ]
        db.session.add_all(seeds)
        db.session.commit()
        member_rows = [(u.id, u.email, PASSWORD) for u in users]
        ids = round_.id, [s.id for s in seeds]
        db.session.remove()
        db.engine.dispose()
    return app, ids[0], ids[1], member_rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="deliberate-crash-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'crash.db'}"
    app, round_id, statement_ids, members = prepare(
        database_url, workdir, args.members, args.statements
    )

    def caught_up() -> bool:
        with app.app_context():
            try:
                events = db.session.scalar(
                    select(func.max(VoteEvent.id)).where(VoteEvent.round_id == round_id)
                )
                latest = db.session.scalar(
                    select(Snapshot.vote_watermark)
                    .where(Snapshot.round_id == round_id)
                    .order_by(Snapshot.id.desc())
                    .limit(1)
                )
                return latest is not None and latest == events
            finally:
                db.session.remove()

    print(
        f"crash run: {args.crashes} crashes, {args.members} members, "
        f"{'PostgreSQL' if database_url.startswith('postgresql') else 'SQLite'}; logs in {workdir}",
        file=sys.stderr,
    )
    started = time.monotonic()
    run = crash_under_load(
        port=free_port(),
        env=server_env(database_url, DELIBERATE_ANALYSIS_DEBOUNCE="1"),
        log_dir=workdir,
        round_id=round_id,
        statement_ids=statement_ids,
        members=members,
        crashes=args.crashes,
        pause=tuple(args.pause),
        tail_seconds=2.0,
        caught_up=caught_up,
        rng=random.Random(args.seed),
    )
    with app.app_context():
        problems = lost_acknowledged(db, round_id, statement_ids, run.ledgers)
        report = check_integrity()
        db.session.remove()
        db.engine.dispose()
    statuses = {str(k): v for k, v in sorted(run.statuses.items(), key=str)}
    figures = {
        "crashes": run.crashes,
        "seconds": round(time.monotonic() - started, 1),
        "acknowledged": run.acknowledged,
        "statuses": statuses,
        "restart_seconds": {
            "median": sorted(run.restart_seconds)[len(run.restart_seconds) // 2]
            if run.restart_seconds
            else None,
            "max": max(run.restart_seconds, default=None),
        },
        "lost_or_wrong": len(problems),
        "integrity": report.as_dict(),
        "clean_stop": run.stop_status == (0, 0),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"crashes            {run.crashes} in {figures['seconds']} s")
        print(f"acknowledged       {run.acknowledged} (votes and statements)")
        print(f"answers            {statuses}")
        median, worst = figures["restart_seconds"].values()
        if median is not None:
            print(f"restart to serving median {median:.2f} s, max {worst:.2f} s")
        print(f"lost or wrong      {len(problems)}")
        for problem in problems[:10]:
            print(f"  {problem}")
        print(report.summary())
        print(f"clean stop at end  {figures['clean_stop']} {run.stop_status}")
    ok = not problems and report.ok and figures["clean_stop"]
    if not args.keep and ok:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
