"""Benchmark of the Pol.is CSV export on a generated 1-million-vote round.

It builds a temporary SQLite database with one round (by default 20,000 participants x 100
statements, each participant voting on half of them: 1,000,000 current votes, plus 2% changed
votes in the history), bulk-inserted with the stdlib sqlite3 module. Then, for each measured
file, a fresh child process starts the app against that database and streams the export to a
temporary file through `deliberate.services.exports.export_csv` (as the web view and the
command line do), and reports:

* wall time of the export (`time.perf_counter`, from the call to the last chunk written);
* peak resident memory of the child (VmHWM from /proc/self/status; `resource.getrusage(
  RUSAGE_SELF).ru_maxrss` where /proc is missing, and in the JSON), and its resident memory
  just before the export (interpreter, Flask, SQLAlchemy), so the export's own share is
  visible.

Targets: under 5 s and under 200 MB per file. Benchmarks print figures; they never assert.

Usage: ``.venv/bin/python bench/exports.py [--participants 20000] [--statements 100]
[--share 0.5] [--keep DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
FILES = ("votes.csv", "participants-votes.csv")
TARGET_SECONDS = 5.0
TARGET_MB = 200.0


def _config(db_file: Path, tmp: Path) -> dict:
    return {
        "DELIBERATE_ENV": "testing",
        "SECRET_KEY": "bench-secret",
        "INSTANCE_PATH": str(tmp / "instance"),
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_file}",
        "ANALYSIS_WORKER": "off",
        "RATELIMIT_ENABLED": False,
        "TESTING": True,
    }


def _stamp(moment: datetime) -> str:
    # The format SQLAlchemy stores DateTime values in on SQLite.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def generate(db_file: Path, tmp: Path, participants: int, statements: int, share: float) -> dict:
    """Create the schema through the app, then bulk-insert the round with sqlite3."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from deliberate import create_app
    from deliberate.extensions import db

    app = create_app(_config(db_file, tmp))
    with app.app_context():
        db.create_all()
        db.engine.dispose()

    rng = random.Random(2026)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conn = sqlite3.connect(db_file)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now = _stamp(start)
    with conn:
        conn.execute(
            "INSERT INTO rounds (id, question, context, state, allow_member_statements, "
            "moderation, statement_max_length, results_visibility, author_display, created_at, "
            "updated_at) VALUES (1, 'A generated round of a million votes', '', 'closed', 1, "
            "'pre', 280, 'after_voting', 'anonymous', ?, ?)",
            (now, now),
        )
        conn.executemany(
            "INSERT INTO users (id, email, name, role, active, auth_version, created_at) "
            "VALUES (?, ?, ?, 'member', 1, 1, ?)",
            (
                (i, f"p{i}@bench.invalid", f"Participant {i}", now)
                for i in range(1, participants + 1)
            ),
        )
        conn.executemany(
            "INSERT INTO statements (id, round_id, text, normalised_text, origin, "
            "moderation_state, is_meta, hidden_in_report, created_at) "
            "VALUES (?, 1, ?, ?, 'seed', 'accepted', 0, 0, ?)",
            (
                (s, f"Generated statement {s}", f"generated statement {s}", now)
                for s in range(1, statements + 1)
            ),
        )
    per_person = max(1, round(statements * share))
    n_votes = n_events = 0
    vote_rows: list[tuple] = []
    event_rows: list[tuple] = []
    clock = start

    def flush() -> None:
        with conn:
            conn.executemany(
                "INSERT INTO votes (round_id, statement_id, user_id, value, created_at, "
                "updated_at) VALUES (1, ?, ?, ?, ?, ?)",
                vote_rows,
            )
            conn.executemany(
                "INSERT INTO vote_events (round_id, statement_id, user_id, value, "
                "previous_value, created_at) VALUES (1, ?, ?, ?, ?, ?)",
                event_rows,
            )
        vote_rows.clear()
        event_rows.clear()

    ids = list(range(1, statements + 1))
    for user in range(1, participants + 1):
        lean = rng.random()
        for sid in rng.sample(ids, per_person):
            clock += timedelta(milliseconds=rng.randint(5, 400))
            r = rng.random()
            value = 1 if r < lean * 0.8 else (-1 if r < 0.8 else 0)
            when = _stamp(clock)
            if rng.random() < 0.02:  # a changed vote: two events, the latest stands
                first = -value if value else 1
                event_rows.append((sid, user, first, None, when))
                clock += timedelta(milliseconds=rng.randint(5, 400))
                later = _stamp(clock)
                event_rows.append((sid, user, value, first, later))
                vote_rows.append((sid, user, value, when, later))
                n_events += 2
            else:
                event_rows.append((sid, user, value, None, when))
                vote_rows.append((sid, user, value, when, when))
                n_events += 1
            n_votes += 1
        if len(vote_rows) >= 200_000:
            flush()
    flush()
    conn.execute("ANALYZE")
    conn.close()
    return {
        "participants": participants,
        "statements": statements,
        "votes": n_votes,
        "vote_events": n_events,
        "db_mb": round(db_file.stat().st_size / 1e6, 1),
    }


def _rss_mb(field: str = "VmRSS") -> float:
    """A resident-set figure of this process from /proc (VmRSS now, VmHWM peak), in MB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child(db_file: Path, tmp: Path, name: str) -> None:
    """Export one file (in this fresh process) and print the figures as JSON."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from deliberate import create_app
    from deliberate.services import exports

    app = create_app(_config(db_file, tmp))
    out = tmp / f"out-{name}"
    with app.app_context():
        base = _rss_mb()
        started, cpu = time.perf_counter(), time.process_time()
        size = 0
        with open(out, "wb") as handle:
            for chunk in exports.export_csv(None, 1, name):
                handle.write(chunk)
                size += len(chunk)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    # ru_maxrss of an exec'd child can carry over the parent's high-water mark on Linux (the
    # parent grew while generating the data), so VmHWM, this process's own peak, comes first.
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm = _rss_mb("VmHWM")
    peak_mb = hwm if hwm == hwm else maxrss_mb
    print(
        json.dumps(
            {
                "file": name,
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "peak_mb": round(peak_mb, 1),
                "ru_maxrss_mb": round(maxrss_mb, 1),
                "base_mb": round(base, 1),
                "output_mb": round(size / 1e6, 1),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=20_000)
    parser.add_argument("--statements", type=int, default=100)
    parser.add_argument("--share", type=float, default=0.5, help="share of statements voted on")
    parser.add_argument("--keep", type=Path, help="keep the database and outputs in this folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--child", nargs=3, metavar=("DB", "TMP", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.child[2])
        return 0

    holder = None
    if args.keep:
        tmp = args.keep
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        holder = tempfile.TemporaryDirectory(prefix="deliberate-bench-exports-")
        tmp = Path(holder.name)
    db_file = tmp / "bench.db"
    if db_file.exists():
        db_file.unlink()
    started = time.perf_counter()
    shape = generate(db_file, tmp, args.participants, args.statements, args.share)
    shape["generate_seconds"] = round(time.perf_counter() - started, 1)
    results = []
    for name in FILES:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(db_file), str(tmp), name],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append({"file": name, "error": proc.returncode})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps({"shape": shape, "results": results}, indent=1))
    else:
        print(
            f"Round: {shape['participants']:,} participants x {shape['statements']} statements, "
            f"{shape['votes']:,} votes ({shape['vote_events']:,} vote events), "
            f"database {shape['db_mb']} MB, generated in {shape['generate_seconds']} s"
        )
        print(
            f"{'file':<24} {'wall s':>8} {'CPU s':>7} {'peak MB':>9} {'before MB':>10} "
            f"{'output MB':>10}  target"
        )
        for r in results:
            if "error" in r:
                print(f"{r['file']:<24} failed (exit {r['error']})")
                continue
            ok = r["seconds"] < TARGET_SECONDS and r["peak_mb"] < TARGET_MB
            print(
                f"{r['file']:<24} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} "
                f"{r['peak_mb']:>9.1f} {r['base_mb']:>10.1f} "
                f"{r['output_mb']:>10.1f}  {'met' if ok else 'MISSED'} "
                f"(< {TARGET_SECONDS:g} s, < {TARGET_MB:g} MB)"
            )
    if holder is not None:
        holder.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
