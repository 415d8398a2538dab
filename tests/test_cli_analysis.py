"""The analysis commands: analyze, import-polis, worker, snapshot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from deliberate.models import AuditEvent, Round, Snapshot, Statement, User, Vote, VoteEvent
from deliberate.polis_io import PolisFormatError
from deliberate.services import polis_import
from deliberate.services.errors import Conflict
from deliberate.services.polis_import import import_polis_folder

SHARED_DATA = (Path(__file__).resolve().parent.parent / ".." / "shared" / "data").resolve()
FIXTURE = SHARED_DATA / "polis-math-fixtures" / "below-100-ptpts"
META_FIXTURE = SHARED_DATA / "polis-math-fixtures" / "25ptpt-3gp-no-strict-with-meta"
EXPORT = SHARED_DATA / "polis-opendata" / "london.youth.policing"
EXPORT_2 = SHARED_DATA / "polis-opendata" / "15-per-hour-seattle"

needs_data = pytest.mark.skipif(
    not (FIXTURE.is_dir() and EXPORT.is_dir() and EXPORT_2.is_dir()),
    reason="../shared/data is not available",
)


@pytest.fixture
def app_config(app_config):
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 5}
    return app_config


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def count(db, model, **where) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    return db.session.scalar(query)


def totals(db) -> dict:
    return {m.__name__: count(db, m) for m in (Round, Statement, User, Vote, VoteEvent)}


def expected_counts(folder: Path) -> dict:
    """Count what an import of an export folder must create, straight from the CSV files."""
    with open(folder / "comments.csv", newline="", encoding="utf-8") as fh:
        comments = list(csv.DictReader(fh))
    with open(folder / "votes.csv", newline="", encoding="utf-8") as fh:
        votes = list(csv.DictReader(fh))
    voters = {v["voter-id"] for v in votes}
    authors = {c["author-id"] for c in comments if c["author-id"]}
    return {
        "statements": len(comments),
        "votes": len({(v["voter-id"], v["comment-id"]) for v in votes}),
        "events": len(votes),
        "members": len(voters | authors),
        "voters": len(voters),
        "moderation": {
            state: sum(1 for c in comments if c["moderated"] == code)
            for state, code in (("accepted", "1"), ("pending", "0"), ("rejected", "-1"))
        },
    }


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- analyze --------------------------------------------------------------------------


REQUIRED_KEYS = {
    "participants",
    "statements",
    "in_conversation",
    "pca",
    "projections",
    "groups",
    "consensus",
    "group_informed_consensus",
    "bridging",
    "divisive",
    "priorities",
    "stability",
}


def check_output(data: dict) -> None:
    assert set(data) >= REQUIRED_KEYS
    assert set(data["pca"]) >= {"statements", "center", "components"}
    assert len(data["pca"]["components"]) == 2
    assert len(data["pca"]["center"]) == len(data["pca"]["statements"]) == data["statements"]
    assert data["participants"] == len(data["projections"])
    assert set(data["consensus"]) == {"agree", "disagree"}
    assert data["groups"], "real conversations have groups"
    for group in data["groups"]:
        assert {"id", "members", "representative"} <= set(group)
        for entry in group["representative"]:
            assert {
                "statement",
                "direction",
                "p_success",
                "p_test",
                "repness",
                "repness_test",
            } <= set(entry)
            assert entry["direction"] in ("agree", "disagree")
    in_groups = [p for g in data["groups"] for p in g["members"]]
    assert len(in_groups) == len(set(in_groups))
    assert set(in_groups) <= set(data["in_conversation"])


@needs_data
@pytest.mark.parametrize("folder", [FIXTURE, EXPORT_2], ids=["fixture", "export"])
def test_analyze_prints_the_analysis_as_json(runner, folder):
    result = runner.invoke(args=["analyze", str(folder), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    check_output(data)


@needs_data
def test_analyze_keeps_the_input_ids(runner):
    result = runner.invoke(args=["analyze", str(EXPORT)])
    data = json.loads(result.stdout)
    with open(EXPORT / "votes.csv", newline="") as fh:
        voters = {int(r["voter-id"]) for r in csv.DictReader(fh)}
    assert {int(p) for p in data["projections"]} == voters
    assert data["participants"] == len(voters)


def write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


COMMENTS = (
    "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
    "1,x,0,0,1,0,1,First\n2,x,1,0,0,1,1,Second\n"
)
VOTES = "timestamp,datetime,comment-id,voter-id,vote\n"


def bad_inputs(tmp: Path) -> dict[str, Path]:
    cases = {}
    cases["missing folder"] = tmp / "nowhere"
    write(tmp / "file", "x.txt", "hello")
    cases["a file, not a folder"] = tmp / "file" / "x.txt"
    (tmp / "empty").mkdir()
    cases["empty folder"] = tmp / "empty"
    write(tmp / "no-votes", "comments.csv", COMMENTS)
    cases["missing votes.csv"] = tmp / "no-votes"
    write(tmp / "no-comments", "votes.csv", VOTES + "1,x,0,5,1\n")
    cases["missing comments.csv"] = tmp / "no-comments"
    write(tmp / "columns", "comments.csv", COMMENTS)
    write(tmp / "columns", "votes.csv", "timestamp,comment,voter,vote\n1,0,5,1\n")
    cases["wrong columns"] = tmp / "columns"
    write(tmp / "sign", "comments.csv", COMMENTS)
    write(tmp / "sign", "votes.csv", VOTES + "1,x,0,5,1\n2,x,1,5,2\n")
    cases["unknown sign"] = tmp / "sign"
    write(tmp / "text-sign", "comments.csv", COMMENTS)
    write(tmp / "text-sign", "votes.csv", VOTES + "1,x,0,5,agree\n")
    cases["sign as a word"] = tmp / "text-sign"
    write(tmp / "no-rows", "comments.csv", COMMENTS)
    write(tmp / "no-rows", "votes.csv", VOTES)
    cases["empty conversation"] = tmp / "no-rows"
    write(tmp / "json", "comments.json", "[]")
    write(tmp / "json", "votes.json", '[{"pid": 1, ')
    cases["broken JSON fixture"] = tmp / "json"
    write(tmp / "json-sign", "comments.json", '[{"tid": 0, "txt": "a", "mod": 1}]')
    write(tmp / "json-sign", "votes.json", '[{"pid": 1, "tid": 0, "vote": 5}]')
    cases["unknown sign in a fixture"] = tmp / "json-sign"
    return cases


def test_every_bad_input_is_one_line_and_exit_2(runner, tmp_path):
    for name, path in bad_inputs(tmp_path).items():
        result = runner.invoke(args=["analyze", str(path)])
        assert result.exit_code == 2, (name, result.exit_code, result.output, result.stderr)
        line = one_line_error(result)
        assert line.startswith("Error: "), (name, line)
        assert result.stdout == "", name


def test_analyze_needs_no_database(tmp_path, template_db):
    """analyze works even when the configured database does not exist."""
    from deliberate import create_app

    app = create_app(
        {
            "DELIBERATE_ENV": "testing",
            "SECRET_KEY": "x",
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing/dir/nothing.db",
            "ANALYSIS_WORKER": "off",
            "ANALYSIS_PARAMS": {"bootstrap_replicates": 5},
        }
    )
    folder = tmp_path / "tiny"
    write(folder, "comments.csv", COMMENTS)
    write(folder, "votes.csv", VOTES + "1,x,0,5,1\n2,x,1,5,-1\n3,x,0,6,0\n")
    result = app.test_cli_runner().invoke(args=["analyze", str(folder)])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["participants"] == 2 and data["statements"] == 2
    assert not (tmp_path / "missing").exists()


# --- import-polis ---------------------------------------------------------------------


@needs_data
def test_import_creates_a_closed_round_with_everything(db, runner):
    expected = expected_counts(EXPORT)
    result = runner.invoke(args=["import-polis", str(EXPORT)])
    assert result.exit_code == 0, result.stderr
    round_ = db.session.scalars(select(Round)).one()
    assert f"Imported round {round_.id}" in result.stdout
    assert round_.state == "closed"
    assert round_.question.startswith("What is the best way to engage more young people")
    assert round_.source == "polis:https://pol.is/9xxwa9jpkm"
    assert count(db, Statement, round_id=round_.id) == expected["statements"]
    assert count(db, Vote, round_id=round_.id) == expected["votes"]
    assert count(db, VoteEvent, round_id=round_.id) == expected["events"]
    assert count(db, User) == expected["members"]
    voters = db.session.scalar(
        select(func.count(func.distinct(Vote.user_id))).where(Vote.round_id == round_.id)
    )
    assert voters == expected["voters"]
    for state, n in expected["moderation"].items():
        assert count(db, Statement, round_id=round_.id, moderation_state=state) == n
    # Pseudonymous members who cannot log in.
    users = db.session.scalars(select(User)).all()
    assert all(u.email.endswith("@imported.invalid") and u.password_hash is None for u in users)
    assert all(not u.is_active and u.role == "member" for u in users)
    assert all(u.name.startswith("Participant ") for u in users)
    statements = db.session.scalars(select(Statement)).all()
    assert all(s.origin == "imported" and s.external_id is not None for s in statements)
    assert count(db, AuditEvent, action="round.import") == 1


@needs_data
def test_import_keeps_the_history_and_the_latest_vote(db):
    round_ = import_polis_folder(None, EXPORT_2)
    with open(EXPORT_2 / "votes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Latest timestamp wins, as in participants-votes.csv.
    latest: dict = {}
    for r in sorted(rows, key=lambda r: int(r["timestamp"])):
        latest[(r["voter-id"], r["comment-id"])] = int(r["vote"])
    stored = db.session.execute(
        select(User.name, Statement.external_id, Vote.value)
        .join(User, User.id == Vote.user_id)
        .join(Statement, Statement.id == Vote.statement_id)
        .where(Vote.round_id == round_.id)
    ).all()
    got = {(name.removeprefix("Participant "), ext): v for name, ext, v in stored}
    assert got == latest
    # Events are in time order and keep their original timestamps.
    times = db.session.scalars(
        select(VoteEvent.created_at).where(VoteEvent.round_id == round_.id).order_by(VoteEvent.id)
    ).all()
    assert times == sorted(times)
    assert int(times[0].timestamp() * 1000) == min(int(r["timestamp"]) for r in rows)
    changes = count(db, VoteEvent, round_id=round_.id) - count(db, Vote, round_id=round_.id)
    assert changes == len(rows) - len(latest)


@needs_data
def test_import_of_a_fixture_keeps_meta_and_strictness(db):
    round_ = import_polis_folder(None, META_FIXTURE)
    metas = db.session.scalars(
        select(Statement.external_id).where(Statement.round_id == round_.id, Statement.is_meta)
    ).all()
    comments = json.loads((META_FIXTURE / "comments.json").read_text())
    assert sorted(metas, key=int) == sorted(
        (str(c["statement_id"]) for c in comments if c["is_meta"]), key=int
    )
    assert round_.moderation == "post"  # strict_moderation is false in this conversation
    assert round_.source.startswith("polis:sha256:")


@needs_data
def test_a_second_import_is_refused_unless_forced(db, runner):
    assert runner.invoke(args=["import-polis", str(EXPORT)]).exit_code == 0
    before = totals(db)
    again = runner.invoke(args=["import-polis", str(EXPORT)])
    assert again.exit_code == 1
    assert "already imported" in one_line_error(again)
    assert totals(db) == before

    forced = runner.invoke(args=["import-polis", str(EXPORT), "--force"])
    assert forced.exit_code == 0, forced.stderr
    rounds = db.session.scalars(select(Round).order_by(Round.id)).all()
    assert [r.source for r in rounds] == [
        "polis:https://pol.is/9xxwa9jpkm",
        "polis:https://pol.is/9xxwa9jpkm#2",
    ]
    assert count(db, Statement, round_id=rounds[1].id) == count(
        db, Statement, round_id=rounds[0].id
    )
    with pytest.raises(Conflict):
        import_polis_folder(None, EXPORT)


def test_near_duplicate_statements_are_all_kept(db, tmp_path):
    folder = tmp_path / "dups"
    write(
        folder,
        "comments.csv",
        "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
        "1,x,0,0,1,0,1,Same words\n2,x,1,1,0,1,1,same   WORDS\n3,x,2,1,0,0,-1,\n",
    )
    write(folder, "votes.csv", VOTES + "1,x,0,5,1\n2,x,1,5,-1\n3,x,1,6,0\n")
    round_ = import_polis_folder(None, folder)
    rows = db.session.execute(
        select(Statement.external_id, Statement.text, Statement.normalised_text)
        .where(Statement.round_id == round_.id)
        .order_by(Statement.id)
    ).all()
    assert [r.external_id for r in rows] == ["0", "1", "2"]
    assert rows[1].text == "same   WORDS"
    assert rows[0].normalised_text != rows[1].normalised_text
    assert count(db, User) == 4  # voters 5, 6 and authors 0, 1


@needs_data
def test_an_import_failing_midway_leaves_nothing(db, monkeypatch):
    monkeypatch.setattr(polis_import, "CHUNK", 100)
    before = totals(db)
    calls = []

    def progress(done, total):
        calls.append(done)
        if done > total / 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        import_polis_folder(None, EXPORT_2, progress=progress)
    assert len(calls) > 2  # it really was midway
    db.session.rollback()
    assert totals(db) == before
    assert count(db, AuditEvent) == 0
    # And the same conversation can then be imported normally.
    assert import_polis_folder(None, EXPORT_2).source == "polis:https://pol.is/2demo"


def test_a_corrupt_votes_file_imports_nothing(db, runner, tmp_path):
    folder = tmp_path / "corrupt"
    write(folder, "comments.csv", COMMENTS)
    rows = "".join(f"{i},x,{i % 2},{i},1\n" for i in range(50)) + "99,x,1,7,maybe\n"
    write(folder, "votes.csv", VOTES + rows)
    before = totals(db)
    result = runner.invoke(args=["import-polis", str(folder)])
    assert result.exit_code == 2
    assert "sign" in one_line_error(result)
    assert totals(db) == before


def test_votes_on_unknown_comments_are_refused(db, runner, tmp_path):
    folder = tmp_path / "unknown"
    write(folder, "comments.csv", COMMENTS)
    write(folder, "votes.csv", VOTES + "1,x,0,5,1\n2,x,7,5,1\n")
    result = runner.invoke(args=["import-polis", str(folder)])
    assert result.exit_code == 2
    assert "comment 7" in one_line_error(result)
    assert count(db, Round) == 0


def test_import_bad_folder_is_one_line_exit_2(db, runner, tmp_path):
    result = runner.invoke(args=["import-polis", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    one_line_error(result)
    with pytest.raises(PolisFormatError):
        import_polis_folder(None, tmp_path / "nowhere")


def test_import_by_a_member_is_refused(db, factory, tmp_path):
    from deliberate.models import Role
    from deliberate.services.errors import NotAllowed

    folder = tmp_path / "tiny"
    write(folder, "comments.csv", COMMENTS)
    write(folder, "votes.csv", VOTES + "1,x,0,5,1\n")
    with pytest.raises(NotAllowed):
        import_polis_folder(factory.user(Role.MEMBER), folder)
    facilitator = factory.user(Role.FACILITATOR)
    assert import_polis_folder(facilitator, folder).created_by_id == facilitator.id


# --- worker and snapshot --------------------------------------------------------------


@needs_data
def test_worker_once_and_snapshot_analyse_imported_rounds(db, runner):
    round_ = import_polis_folder(None, EXPORT)
    round_id = round_.id
    db.session.rollback()
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.stderr
    assert "Analysed 1 round(s)" in result.stdout
    assert count(db, Snapshot, round_id=round_id) == 1
    db.session.rollback()
    assert "Analysed 0 round(s)" in runner.invoke(args=["worker", "--once"]).stdout

    forced = runner.invoke(args=["snapshot", str(round_id)])
    assert forced.exit_code == 0, forced.stderr
    assert f"Round {round_id}: snapshot" in forced.stdout and "groups" in forced.stdout
    db.session.rollback()
    assert count(db, Snapshot, round_id=round_id) == 2


def test_snapshot_of_an_unknown_round_is_exit_2(db, runner):
    result = runner.invoke(args=["snapshot", "999"])
    assert result.exit_code == 2
    assert "no round 999" in one_line_error(result)


@needs_data
def test_the_largest_opendata_conversation_imports(db):
    """Every conversation in ../shared/data imports; the largest one is timed in the report."""
    folders = sorted(
        (SHARED_DATA / "polis-opendata").iterdir(), key=lambda p: (p / "votes.csv").stat().st_size
    )
    largest = folders[-1]
    round_ = import_polis_folder(None, largest)
    assert count(db, VoteEvent, round_id=round_.id) == expected_counts(largest)["events"]


@needs_data
def test_analyze_works_without_any_configuration(tmp_path, monkeypatch):
    """`deliberate analyze` needs no secret key, no database, no app."""
    from click.testing import CliRunner

    from deliberate.cli import main

    monkeypatch.chdir(tmp_path)
    env = {"DELIBERATE_ENV": None, "DELIBERATE_SECRET_KEY": None, "DELIBERATE_DATABASE_URL": None}
    result = CliRunner().invoke(main, ["analyze", str(FIXTURE)], env=env)
    assert result.exit_code == 0, result.stderr
    check_output(json.loads(result.stdout))
    bad = CliRunner().invoke(main, ["analyze", str(tmp_path / "nope")], env=env)
    assert bad.exit_code == 2 and one_line_error(bad).startswith("Error: not a folder")
    wrong_format = CliRunner().invoke(main, ["analyze", str(FIXTURE), "--format", "csv"], env=env)
    assert wrong_format.exit_code == 2
    one_line_error(wrong_format)
    assert list(tmp_path.iterdir()) == []  # no instance folder, no database
