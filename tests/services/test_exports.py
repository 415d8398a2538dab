"""Exports: Pol.is-format CSVs, the snapshot as JSON, privacy and streaming."""

from __future__ import annotations

import csv
import io
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Role, Statement, User, Vote, VoteEvent
from deliberate.polis_io import read_polis_folder, writers
from deliberate.services import exports
from deliberate.services.errors import NotAllowed, NotFound
from deliberate.services.polis_import import import_polis_folder
from deliberate.services.snapshots import refresh_snapshot
from deliberate.services.voting import cast_vote
from tests.conftest import SHARED_DATA

SEATTLE = SHARED_DATA / "polis-opendata" / "15-per-hour-seattle"


def _text(chunks) -> str:
    return b"".join(chunks).decode("utf-8")


def _csv(chunks) -> list[list[str]]:
    return list(csv.reader(io.StringIO(_text(chunks))))


def _polis_header(name: str) -> list[str]:
    with open(SEATTLE / name, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


@pytest.fixture
def people(factory):
    org = factory.organisation("Harbour Legal Aid")
    return {
        "facilitator": factory.user(Role.FACILITATOR, organisation=org),
        "leadership": factory.user(Role.LEADERSHIP, organisation=org),
        "member": factory.user(Role.MEMBER, organisation=org),
        "org": org,
    }


def _vote_round(factory, db, voters: int = 6, texts=None):
    """A round where `voters` members vote on four statements (member i: pattern by parity)."""
    texts = texts or [
        '=HYPERLINK("http://evil.example","click")',
        "+1 for free legal advice",
        "-10% of the budget goes to detention",
        "@everyone should see this",
    ]
    round_ = factory.round(statements=texts)
    org = factory.organisation()
    members = [factory.user(Role.MEMBER, organisation=org) for _ in range(voters)]
    statements = db.session.scalars(
        select(Statement).where(Statement.round_id == round_.id).order_by(Statement.id)
    ).all()
    for i, member in enumerate(members):
        for j, statement in enumerate(statements):
            value = (1, -1, 0)[(i + j) % 3] if i % 2 else (-1 if j == 0 else 1)
            cast_vote(member, statement.id, value)
    return round_, members, statements


# ------------------------------------------------------------------------------- writers


def test_headers_are_exactly_polis(app, db, factory, people):
    round_, _members, statements = _vote_round(factory, db)
    refresh_snapshot(round_.id, force=True)
    fac = people["facilitator"]
    assert _csv(exports.export_csv(fac, round_.id, "votes.csv"))[0] == _polis_header("votes.csv")
    assert _csv(exports.export_csv(fac, round_.id, "comments.csv"))[0] == _polis_header(
        "comments.csv"
    )
    pv = _csv(exports.export_csv(fac, round_.id, "participants-votes.csv"))[0]
    assert pv[:6] == _polis_header("participants-votes.csv")[:6]
    assert pv[6:] == [str(s.id) for s in statements]
    summary = _csv(exports.export_csv(fac, round_.id, "summary.csv"))
    keys = [row[0] for row in summary]
    polis_summary = (SEATTLE / "summary.csv").read_text(encoding="utf-8")
    assert keys[:9] == [row[0] for row in csv.reader(io.StringIO(polis_summary))]
    cg = _csv(exports.export_csv(fac, round_.id, "comment-groups.csv"))[0]
    assert cg[:6] == [
        "comment-id",
        "comment",
        "total-votes",
        "total-agrees",
        "total-disagrees",
        "total-passes",
    ]
    assert all(
        col.split("-")[0] == "group" and col.rsplit("-", 1)[1] in writers.GROUP_COLUMNS
        for col in cg[6:]
    )
    assert cg[6:10] == ["group-a-votes", "group-a-agrees", "group-a-disagrees", "group-a-passes"]


def test_sign_is_agree_one(app, db, factory, people):
    round_ = factory.round(statements=["We should work with MPs of every party."])
    statement = round_.statements[0]
    yes, no, meh = (factory.user(Role.MEMBER) for _ in range(3))
    cast_vote(yes, statement.id, 1)
    cast_vote(no, statement.id, -1)
    cast_vote(meh, statement.id, 0)
    rows = _csv(exports.export_csv(people["facilitator"], round_.id, "votes.csv"))[1:]
    # participants are numbered in order of first vote: yes=0, no=1, meh=2
    assert [(r[3], r[4]) for r in rows] == [("0", "1"), ("1", "-1"), ("2", "0")]
    pv = _csv(exports.export_csv(people["facilitator"], round_.id, "participants-votes.csv"))
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in pv[1:]] == [
        ("0", "1", "1", "0", "1"),
        ("1", "1", "0", "1", "-1"),
        ("2", "1", "0", "0", "0"),
    ]
    comments = _csv(exports.export_csv(people["facilitator"], round_.id, "comments.csv"))
    assert comments[1][4:7] == ["1", "1", "1"]  # agrees, disagrees, moderated (accepted)


def test_formula_cells_are_neutralised_but_numbers_are_not(app, db, factory, people):
    round_, _members, statements = _vote_round(factory, db)
    refresh_snapshot(round_.id, force=True)
    fac = people["facilitator"]
    comments = _csv(exports.export_csv(fac, round_.id, "comments.csv"))
    bodies = [row[7] for row in comments[1:]]
    assert bodies == [
        '\'=HYPERLINK("http://evil.example","click")',
        "'+1 for free legal advice",
        "'-10% of the budget goes to detention",
        "'@everyone should see this",
    ]
    groups = _csv(exports.export_csv(fac, round_.id, "comment-groups.csv"))
    assert [row[1][:2] for row in groups[1:]] == ["'=", "'+", "'-", "'@"]
    # numeric cells keep their sign: votes of -1 are numbers, not text
    votes = _csv(exports.export_csv(fac, round_.id, "votes.csv"))
    assert "-1" in {row[4] for row in votes[1:]}
    pv = _csv(exports.export_csv(fac, round_.id, "participants-votes.csv"))
    assert "-1" in {cell for row in pv[1:] for cell in row[6:]}
    assert not any(cell.startswith("'") for row in pv for cell in row)


def test_neutralise_rules():
    assert writers.neutralise("=1+1") == "'=1+1"
    assert writers.neutralise("\tx") == "'\tx"
    assert writers.neutralise("\rx") == "'\rx"
    assert writers.neutralise("plain") == "plain"
    assert writers.neutralise(-1) == -1
    assert writers.neutralise(None) is None
    summary = b"".join(writers.write_summary([("topic", "=cmd|' /C calc'!A0"), ("voters", -1)]))
    assert summary.decode() == "topic,'=cmd|' /C calc'!A0\nvoters,-1\n"


def test_polis_conversation_reimports_to_the_same_votes(app, db, tmp_path):
    original = import_polis_folder(None, SEATTLE)
    refresh_snapshot(original.id, force=True)
    folder = tmp_path / "export"
    written = exports.write_csv_folder(None, original.id, folder)
    assert sorted(Path(p).name for p in written) == sorted(writers.CSV_FILES)

    # the reader of Pol.is exports reads our files
    conversation = read_polis_folder(folder)
    assert (
        conversation.value.size
        == db.session.query(VoteEvent).filter_by(round_id=original.id).count()
    )

    again = import_polis_folder(None, folder, force=True)
    pseudonym = exports.participant_pseudonyms(None, original.id)
    statement_of = {
        s.id: int(s.external_id)
        for s in db.session.scalars(select(Statement).where(Statement.round_id == again.id))
    }
    names = {row.id: row.name for row in db.session.execute(select(User.id, User.name))}

    def current(round_id, user_key, statement_key):
        return {
            (user_key(u), statement_key(s), v)
            for u, s, v in db.session.execute(
                select(Vote.user_id, Vote.statement_id, Vote.value).where(Vote.round_id == round_id)
            )
        }

    before = current(original.id, lambda u: pseudonym[u], lambda s: s)
    after = current(
        again.id, lambda u: int(names[u].removeprefix("Participant ")), lambda s: statement_of[s]
    )
    assert len(before) > 1000
    assert before == after
    # and the original Pol.is file's latest-wins matrix has as many votes
    with open(SEATTLE / "participants-votes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(int(r["n-votes"]) for r in rows) == len(before)
    summary = dict(r[:2] for r in csv.reader(io.StringIO((folder / "summary.csv").read_text())))
    assert "Polis" in summary["attribution"]


def test_pseudonymous_by_default(app, db, factory, people):
    round_, members, _ = _vote_round(factory, db)
    refresh_snapshot(round_.id, force=True)
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(exports.export_zip(people["leadership"], round_.id)))
    )
    assert sorted(archive.namelist()) == sorted(writers.CSV_FILES)
    everything = "".join(archive.read(n).decode() for n in archive.namelist())
    for member in members:
        assert member.email not in everything
        assert member.name not in everything
    pv = list(csv.reader(io.StringIO(archive.read("participants-votes.csv").decode())))
    assert [r[0] for r in pv[1:]] == [str(i) for i in range(len(members))]
    assert not db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "export.identities")
    ).first()
    data = exports.export_json(people["leadership"], round_.id)
    text = exports.json_bytes(data).decode()
    assert all(m.email not in text for m in members)
    projections = data["snapshot"]["result"]["projections"]
    assert sorted(projections) == [str(i) for i in range(len(members))]


def test_identities_only_when_chosen_by_a_facilitator_and_logged(app, db, factory, people):
    round_, members, _ = _vote_round(factory, db)
    with pytest.raises(NotAllowed):
        exports.export_zip(people["leadership"], round_.id, identities=True)
    with pytest.raises(NotFound):
        exports.export_csv(people["facilitator"], round_.id, "participants.csv")
    rows = _csv(
        exports.export_csv(people["facilitator"], round_.id, "participants.csv", identities=True)
    )
    assert rows[0] == ["participant", "name", "email", "organisation"]
    assert [r[2] for r in rows[1:]] == [m.email for m in members]
    events = db.session.scalars(
        select(AuditEvent).where(AuditEvent.round_id == round_.id).order_by(AuditEvent.id)
    ).all()
    assert [e.action for e in events][-2:] == ["export.csv", "export.identities"]
    assert events[-1].actor_id == people["facilitator"].id
    archive = zipfile.ZipFile(
        io.BytesIO(b"".join(exports.export_zip(people["facilitator"], round_.id, identities=True)))
    )
    assert "participants.csv" in archive.namelist()


def test_every_export_is_audited_with_its_format(app, db, factory, people):
    round_, _members, _ = _vote_round(factory, db)
    refresh_snapshot(round_.id, force=True)
    lead = people["leadership"]
    b"".join(exports.export_csv(lead, round_.id, "votes.csv"))
    b"".join(exports.export_zip(lead, round_.id))
    exports.export_json(lead, round_.id)
    events = db.session.scalars(
        select(AuditEvent).where(AuditEvent.round_id == round_.id).order_by(AuditEvent.id)
    ).all()
    assert [(e.action, e.details.get("format"), e.actor_id) for e in events] == [
        ("export.csv", "csv", lead.id),
        ("export.csv", "zip", lead.id),
        ("export.json", "json", lead.id),
    ]
    assert events[0].details["file"] == "votes.csv"


def test_members_cannot_export(app, db, factory, people):
    round_, members, _ = _vote_round(factory, db)
    for call in (
        lambda: exports.export_csv(members[0], round_.id, "votes.csv"),
        lambda: exports.export_zip(members[0], round_.id),
        lambda: exports.export_json(members[0], round_.id),
    ):
        with pytest.raises(NotAllowed) as error:
            call()
        assert error.value.status_code == 403
    assert not db.session.scalars(select(AuditEvent).where(AuditEvent.round_id == round_.id)).all()


def test_unknown_round_and_file(app, db, people):
    with pytest.raises(NotFound):
        exports.export_csv(people["facilitator"], 999, "votes.csv")
    with pytest.raises(NotFound):
        exports.export_csv(people["facilitator"], 999, "passwords.csv")


def test_small_groups_are_blank_in_comment_groups(app, db, factory, people, monkeypatch):
    round_, _members, statements = _vote_round(factory, db)
    snapshot = refresh_snapshot(round_.id, force=True)
    # A crafted result: one group of 5 members, one of 2; statement 2 seen by only 2 of group a.
    s1, s2 = str(statements[0].id), str(statements[1].id)
    crafted = dict(snapshot.result)
    crafted["statement_stats"] = {
        s1: {"agree": 4, "disagree": 2, "pass": 1, "seen": 7},
        s2: {"agree": 1, "disagree": 1, "pass": 0, "seen": 2},
    }
    crafted["groups"] = [
        {
            "id": 0,
            "members": [],
            "n_members": 5,
            "votes": {
                s1: {"agree": 4, "disagree": 0, "pass": 1, "seen": 5},
                s2: {"agree": 1, "disagree": 1, "pass": 0, "seen": 2},
            },
        },
        {
            "id": 1,
            "members": [],
            "n_members": 2,
            "votes": {
                s1: {"agree": 0, "disagree": 2, "pass": 0, "seen": 2},
            },
        },
    ]
    snapshot.result = crafted
    db.session.commit()
    rows = _csv(exports.export_csv(people["facilitator"], round_.id, "comment-groups.csv"))
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id[s1][2:] == ["7", "4", "2", "1", "5", "4", "0", "1", "", "", "", ""]
    assert by_id[s2][2:] == [""] * 12
    summary = dict(
        r[:2] for r in _csv(exports.export_csv(people["facilitator"], round_.id, "summary.csv"))
    )
    assert "fewer than 3" in summary["small-cells"]
    data = exports.export_json(people["facilitator"], round_.id)
    small = data["snapshot"]["result"]["groups"][1]
    assert small["votes"] is None and "fewer than 3" in small["suppressed"]


def test_group_ids_in_participants_votes_are_the_snapshots(app, db, factory, people):
    round_, members, _ = _vote_round(factory, db, voters=12)
    snapshot = refresh_snapshot(round_.id, force=True)
    pseudonym = exports.participant_pseudonyms(None, round_.id)
    expected = {}
    for group in snapshot.result["groups"]:
        for member in group["members"]:
            expected[str(pseudonym[int(member)])] = str(group["id"])
    rows = _csv(exports.export_csv(people["facilitator"], round_.id, "participants-votes.csv"))
    assert {r[0]: r[1] for r in rows[1:]} == {
        str(i): expected.get(str(i), "") for i in range(len(members))
    }


def test_votes_export_streams_in_chunks(app, db, factory, people, monkeypatch):
    """The votes are fetched in chunks, and output starts before the rows are all read."""
    round_ = _bulk_round(factory, db, 150, 20)  # 3,000 votes
    total = 150 * 20
    monkeypatch.setattr(exports, "FETCH_CHUNK", 100)
    monkeypatch.setattr(writers, "CHUNK_BYTES", 512)
    fetched = []
    real_batches = exports._raw_batches

    def spy_batches(conn, sql, params):
        for batch in real_batches(conn, sql, params):
            fetched.append(len(batch))
            yield batch

    monkeypatch.setattr(exports, "_raw_batches", spy_batches)
    stream = exports.export_csv(people["facilitator"], round_.id, "votes.csv")
    assert fetched == []  # nothing is read before the response starts
    first = next(stream)
    assert first.startswith(b"timestamp,datetime,comment-id,voter-id,vote\n")
    # output began after one chunk of rows, while the rest were still in the database cursor
    assert fetched == [100]
    rest = b"".join(stream)
    assert fetched == [100] * (total // 100)
    assert (first + rest).count(b"\n") == total + 1


def _bulk_round(factory, db, n_users: int, n_statements: int):
    """A round with n_users x n_statements votes, written with bulk inserts."""
    round_ = factory.round(statements=[f"Statement number {i}" for i in range(n_statements)])
    first = (
        db.session.execute(
            User.__table__.insert().returning(User.__table__.c.id),
            [
                {
                    "email": f"bulk{round_.id}-{i}@example.org",
                    "name": f"Bulk {i}",
                    "role": "member",
                    "active": True,
                    "auth_version": 1,
                }
                for i in range(n_users)
            ],
        )
        .scalars()
        .all()
    )
    rows = [
        {"round_id": round_.id, "statement_id": s.id, "user_id": u, "value": (u + s.id) % 3 - 1}
        for u in first
        for s in round_.statements
    ]
    db.session.execute(VoteEvent.__table__.insert(), rows)
    db.session.execute(Vote.__table__.insert(), rows)
    db.session.commit()
    return round_


def _streaming_peak(round_id: int, actor) -> tuple[int, int]:
    tracemalloc.start()
    try:
        size = 0
        for chunk in exports.export_csv(actor, round_id, "votes.csv"):
            size += len(chunk)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, size


def test_votes_export_memory_does_not_grow_with_the_round(app, db, factory, people, monkeypatch):
    """Streaming 4x the votes needs about the same memory: rows are never all held at once."""
    small = _bulk_round(factory, db, 100, 40)  # 4,000 votes
    large = _bulk_round(factory, db, 400, 40)  # 16,000 votes
    monkeypatch.setattr(exports, "FETCH_CHUNK", 500)
    fac = people["facilitator"]
    b"".join(exports.export_csv(fac, small.id, "votes.csv"))  # warm caches
    small_peak, small_size = _streaming_peak(small.id, fac)
    large_peak, large_size = _streaming_peak(large.id, fac)
    assert large_size > 3.5 * small_size
    assert large_peak < 1.5 * small_peak
