"""`deliberate export`: Pol.is CSVs (folder or zip), JSON, Markdown and PDF, from the CLI."""

from __future__ import annotations

import csv
import json
import zipfile

import pytest
from sqlalchemy import select

from deliberate.cli.exports import export
from deliberate.models import AuditEvent, Role
from deliberate.polis_io.writers import CSV_FILES
from deliberate.services.snapshots import refresh_snapshot
from deliberate.services.voting import cast_vote


@pytest.fixture
def voted_round(app, db, factory):
    round_ = factory.round(statements=["Safe routes first.", "Work with every party."])
    for i, voter in enumerate(factory.user(Role.MEMBER) for _ in range(5)):
        for statement in round_.statements:
            cast_vote(voter, statement.id, (1, -1, 0)[i % 3])
    refresh_snapshot(round_.id, force=True)
    return round_


def _run(app, *args):
    return app.test_cli_runner().invoke(export, [str(a) for a in args])


def test_csv_folder_as_the_system(app, db, voted_round, tmp_path):
    out = tmp_path / "csv"
    result = _run(app, voted_round.id, "--format", "csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(CSV_FILES)
    with open(out / "votes.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["timestamp", "datetime", "comment-id", "voter-id", "vote"]
    assert len(rows) == 1 + 5 * 2
    event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "export.csv")).one()
    assert event.actor_id is None and event.details["format"] == "folder"
    assert "Exporting votes" in result.output


def test_csv_zip_with_identities(app, db, voted_round, tmp_path, factory):
    facilitator = factory.user(Role.FACILITATOR)
    out = tmp_path / "export.zip"
    result = _run(app, voted_round.id, "--out", out, "--identities", "--by", facilitator.email)
    assert result.exit_code == 0, result.output
    names = zipfile.ZipFile(out).namelist()
    assert sorted(names) == sorted([*CSV_FILES, "participants.csv"])
    actions = [
        (e.action, e.actor_id)
        for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))
    ]
    assert ("export.identities", facilitator.id) in actions


def test_json_markdown_and_pdf(app, voted_round, tmp_path):
    result = _run(app, voted_round.id, "--format", "json", "--out", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["round"]["id"] == voted_round.id and data["snapshot"]["result"]
    result = _run(app, voted_round.id, "--format", "markdown", "--out", tmp_path / "p.md")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.md").read_text().startswith("# Board paper:")
    result = _run(app, voted_round.id, "--format", "pdf", "--out", tmp_path / "p.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")


def test_refusals(app, voted_round, tmp_path, factory):
    member = factory.user(Role.MEMBER)
    result = _run(app, voted_round.id, "--out", tmp_path / "x", "--by", member.email)
    assert result.exit_code == 1 and "not an active facilitator" in result.output
    leader = factory.user(Role.LEADERSHIP)
    result = _run(
        app, voted_round.id, "--out", tmp_path / "y", "--identities", "--by", leader.email
    )
    assert result.exit_code == 1
    result = _run(app, 99999, "--out", tmp_path / "z")
    assert result.exit_code == 2
    result = _run(app, voted_round.id, "--format", "xml", "--out", tmp_path / "z")
    assert result.exit_code == 2
    result = _run(app, voted_round.id, "--format", "json", "--identities", "--out", tmp_path / "j")
    assert result.exit_code == 2
