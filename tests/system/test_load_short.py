"""A short load run against the real server: no errors, and no acknowledged vote lost.

The small version of bench/load.py (bench/README-load.md): the app under gunicorn with the
production settings and rate limits on (values raised for the simulated members), a
`deliberate worker` process, a few simulated members voting, changing votes and posting
statements for about two seconds, then the integrity checks. Figures are never asserted.
Runs on SQLite, and on PostgreSQL when DELIBERATE_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("system")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_load", module)
    spec.loader.exec_module(module)
    return module


load = _load_bench()


def test_short_load_run_has_no_errors_and_keeps_every_acknowledged_vote(database_url, tmp_path):
    opts = load.parse_args(
        [
            "--database-url", database_url,
            "--members", "80",
            "--statements", "12",
            "--seed-voters", "10",
            "--concurrency", "8",
            "--duration", "2",
            "--warmup", "0.3",
            "--ceiling-duration", "0.5",
            "--workers", "2",
            "--threads", "4",
            "--change-rate", "0.2",
            "--statement-rate", "0.05",
            "--workdir", str(tmp_path),
            "--quiet",
        ]
    )  # fmt: skip
    figures, seeded, stats = load.run_with_details(opts)

    assert figures["errors"] == 0, figures["error_examples"]
    assert figures["get_errors"] == 0
    assert figures["logins"] >= 8
    assert figures["votes"] > 0 and figures["acknowledged"] > 0
    assert figures["integrity"]["ok"], figures["integrity_summary"]
    assert figures["problems"] == [] and figures["ok"]
    # Every acknowledged vote is stored once (checked inside), and the counts add up.
    assert figures["integrity"]["votes"] == seeded.seed_votes + len(stats.acks)

    # The acknowledged-votes comparison does catch a lost or altered vote.
    (user_id, statement_id), value = next(iter(stats.acks.items()))
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE votes SET value = :value WHERE user_id = :user AND statement_id = :s"),
            {"value": -1 if value != -1 else 1, "user": user_id, "s": statement_id},
        )
    engine.dispose()
    check = load.check_acknowledged(database_url, tmp_path / "instance", seeded, stats)
    assert not check["ok"]
    assert any("another value" in problem for problem in check["problems"])
