"""Exports of a round's data: Pol.is-format CSVs (one by one or zipped) and the snapshot as JSON.

Who may export: facilitators, leadership and admins (and the system, `actor=None`, for the
command line); members never. Every export is recorded in the audit log (`export.csv`,
`export.json`) with its format.

Privacy:
- **pseudonymous by default**: participants appear as stable per-round numbers, 0, 1, 2... in
  the order of their first vote (members who only wrote statements come after, in the order of
  their first statement). A later export keeps everyone's number; user ids and emails never
  appear. Only a facilitator (or the system) may add `participants.csv`, the key from those
  numbers to names, emails and organisations (`identities=True`), and that choice is recorded
  as `export.identities`;
- **small cells**: the aggregated figures of comment-groups.csv (and of the JSON's groups and
  organisations) about fewer than `privacy.MIN_CELL` people are left blank; summary.csv says so.

Streaming: the public CSV functions check, audit and commit at once, then return a generator
that reads the database on its own read-only connection in chunks of FETCH_CHUNK rows (the
driver's `fetchmany`: a named server-side cursor on PostgreSQL, SQLite's stepwise cursor; the
small queries use SQLAlchemy's `yield_per`), so a million votes never sit in memory at once and
voters are never blocked (on SQLite the read transaction takes no write lock). No ORM object
crosses into the generator: a streamed response is iterated after the view has returned.
"""

# The two big queries are raw SQL for speed; they only ever interpolate parameter placeholders
# ("?" or "%s") and fixed fragments, never values.
# ruff: noqa: S608
from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.engine import Connection

from ..database import set_write_intent
from ..extensions import db
from ..models import (
    GroupName,
    Organisation,
    Round,
    Snapshot,
    Statement,
    StatementState,
    User,
    Vote,
    VoteEvent,
)
from ..polis_io import writers
from . import audit
from .authz import require_report_reader
from .errors import NotAllowed, NotFound
from .privacy import MIN_CELL, cell, is_small
from .snapshots import latest_snapshot

CSV_FILES = writers.CSV_FILES
IDENTITIES_FILE = "participants.csv"
IDENTITIES_HEADER = ("participant", "name", "email", "organisation")
# Rows fetched from the database per round trip.
FETCH_CHUNK = 10_000
SUPPRESSED = f"fewer than {MIN_CELL}"
POLIS_ATTRIBUTION = (
    "Data gathered using the Polis software (compdemocracy.org/polis), sub-licensed under "
    "CC BY 4.0 with attribution to The Computational Democracy Project."
)
_MODERATED = {
    StatementState.ACCEPTED.value: 1,
    StatementState.PENDING.value: 0,
    StatementState.REJECTED.value: -1,
}

Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# Authorisation and audit


def _authorise(actor: User | None, *, identities: bool = False) -> User | None:
    """Return the actor if they may export (None is the system, from the command line)."""
    if actor is None:
        return None
    user = require_report_reader(actor)
    if identities and not user.is_facilitator:
        raise NotAllowed("Only facilitators may export participants' identities.")
    return user


def _round(round_id: int) -> Round:
    round_ = db.session.get(Round, round_id)
    if round_ is None:
        raise NotFound("No such round.")
    return round_


def _record(actor: User | None, action: str, round_id: int, **details: Any) -> None:
    """Record the export (and an identities choice) and commit at once."""
    try:
        audit.record(
            actor, action, round_id=round_id, target_type="round", target_id=round_id, **details
        )
        if details.get("identities"):
            audit.record(
                actor,
                "export.identities",
                round_id=round_id,
                target_type="round",
                target_id=round_id,
                format=details.get("format"),
            )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise


def check_export(actor: User | None, round_id: int, *, identities: bool = False) -> None:
    """Raise NotAllowed or NotFound unless the actor may export the round (nothing recorded)."""
    _authorise(actor, identities=identities)
    _round(round_id)


def check_csv_name(name: str, *, identities: bool = False) -> str:
    """Return a known export file name or raise NotFound."""
    if name in CSV_FILES or (identities and name == IDENTITIES_FILE):
        return name
    raise NotFound(f"There is no export called {name}.")


def export_filename(round_id: int, name: str) -> str:
    """The download name of an export file: 'round-12-votes.csv'."""
    return f"round-{round_id}-{name}"


# ---------------------------------------------------------------------------------------------
# Reading


@contextmanager
def _read_connection() -> Iterator[Connection]:
    """A connection in a read-only transaction (on SQLite a deferred BEGIN: no write lock)."""
    set_write_intent(False)
    try:
        with db.engine.connect() as conn:
            conn.execute(select(1))  # begins the read transaction now, without the write lock
            set_write_intent(True)
            try:
                yield conn
            finally:
                conn.rollback()
    finally:
        set_write_intent(True)


def _rows(conn: Connection, query: Any) -> Iterator[Any]:
    """Iterate a query's rows in chunks of FETCH_CHUNK (never all at once)."""
    result = conn.execution_options(yield_per=FETCH_CHUNK).execute(query)
    try:
        for partition in result.partitions():
            yield from partition
    finally:
        result.close()


def _epoch_ms() -> Callable[[Any], int | None]:
    """Return a converter from a stored timestamp (SQLite text or a datetime) to epoch ms.

    Votes come in time order, so the epoch seconds are computed once per distinct second.
    """
    last_key: str | None = None
    last_base = 0

    def convert(raw: Any) -> int | None:
        nonlocal last_key, last_base
        if raw is None:
            return None
        if isinstance(raw, datetime):
            moment = raw if raw.tzinfo else raw.replace(tzinfo=UTC)
            return int(moment.timestamp() * 1000)
        text = str(raw)
        key = text[:19]
        if key != last_key:
            moment = datetime.fromisoformat(key).replace(tzinfo=UTC)
            last_key, last_base = key, int(moment.timestamp()) * 1000
        millis = text[20:23] if len(text) > 20 and text[19] == "." else ""
        return last_base + (int(millis.ljust(3, "0")) if millis.isdigit() else 0)

    return convert


# Participant numbers: users in the order of their first vote event in the round (0, 1, 2...).
_FIRST_VOTES = (
    "SELECT user_id, MIN(id) AS first_vote FROM vote_events WHERE round_id = {ph} GROUP BY user_id"
)


def _placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _epoch_ms_sql(conn: Connection, column: str) -> str:
    """SQL for a stored UTC timestamp as milliseconds since the epoch."""
    if conn.dialect.name == "postgresql":
        return f"CAST(FLOOR(EXTRACT(EPOCH FROM {column}) * 1000) AS BIGINT)"
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): seconds, plus the first 3 decimals.
    return (
        f"(CAST(strftime('%s', {column}) AS INTEGER) * 1000"
        f" + CAST(substr({column}, 21, 3) AS INTEGER))"
    )


def _raw_batches(conn: Connection, sql: str, params: tuple) -> Iterator[list[tuple]]:
    """Yield a query's rows in lists of FETCH_CHUNK straight from the driver's cursor.

    A server-side (named) cursor on PostgreSQL, SQLite's stepwise cursor otherwise: the rows
    are never all in memory, and no ORM or Result objects are made per row.
    """
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi.cursor(name=f"deliberate_export_{id(conn)}")
    else:
        cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        while True:
            batch = cursor.fetchmany(FETCH_CHUNK)
            if not batch:
                break
            yield batch
    finally:
        cursor.close()


def _pseudonyms(conn: Connection, round_id: int) -> dict[int, int]:
    """Map user id -> participant number: order of first vote, then authors who never voted."""
    ph = _placeholder(conn)
    mapping: dict[int, int] = {}
    for user_id, _first in conn.exec_driver_sql(
        _FIRST_VOTES.format(ph=ph) + " ORDER BY first_vote", (round_id,)
    ):
        mapping[user_id] = len(mapping)
    statements = Statement.__table__.c
    for (author_id,) in conn.execute(
        select(statements.author_id)
        .where(statements.round_id == round_id, statements.author_id.is_not(None))
        .group_by(statements.author_id)
        .order_by(func.min(statements.id))
    ):
        if author_id not in mapping:
            mapping[author_id] = len(mapping)
    return mapping


def participant_pseudonyms(actor: User | None, round_id: int) -> dict[int, int]:
    """Return {user id: participant number} as the exports number participants."""
    _authorise(actor, identities=True)
    _round(round_id)
    with _read_connection() as conn:
        return _pseudonyms(conn, round_id)


@dataclass(frozen=True)
class _RoundInfo:
    """The round's fields the files need, as plain data (no ORM object outlives a request)."""

    id: int
    question: str
    context: str
    source: str | None


@dataclass
class _Export:
    """What every file of one export needs, read once in one read transaction."""

    conn: Connection
    round_: _RoundInfo
    result: dict
    snapshot_at: datetime | None
    pseudonyms: dict[int, int]
    statement_ids: list[int] = field(default_factory=list)

    def pid(self, user_id: int | None) -> int | None:
        if user_id is None:
            return None
        number = self.pseudonyms.get(user_id)
        if number is None:  # a voter whose current votes are gone: numbered after the rest
            number = self.pseudonyms[user_id] = len(self.pseudonyms)
        return number

    @property
    def groups(self) -> list[dict]:
        return sorted(self.result.get("groups") or [], key=lambda g: g.get("id", 0))


def _open_export(conn: Connection, round_id: int) -> _Export:
    """Read the round, its latest snapshot and the pseudonyms on the export's connection."""
    rounds, snapshots = Round.__table__.c, Snapshot.__table__.c
    row = conn.execute(
        select(rounds.id, rounds.question, rounds.context, rounds.source).where(
            rounds.id == round_id
        )
    ).first()
    if row is None:
        raise NotFound("No such round.")
    snapshot = conn.execute(
        select(snapshots.result, snapshots.created_at)
        .where(snapshots.round_id == round_id)
        .order_by(snapshots.id.desc())
        .limit(1)
    ).first()
    statements = Statement.__table__.c
    ids = list(
        conn.scalars(
            select(statements.id).where(statements.round_id == round_id).order_by(statements.id)
        )
    )
    return _Export(
        conn=conn,
        round_=_RoundInfo(row.id, row.question, row.context or "", row.source),
        result=(snapshot.result or {}) if snapshot is not None else {},
        snapshot_at=snapshot.created_at if snapshot is not None else None,
        pseudonyms=_pseudonyms(conn, round_id),
        statement_ids=ids,
    )


# ---------------------------------------------------------------------------------------------
# The files


def _summary(ex: _Export) -> Iterator[bytes]:
    c = ex.conn
    rid = ex.round_.id
    votes, statements = Vote.__table__.c, Statement.__table__.c
    voters = c.scalar(select(func.count(func.distinct(votes.user_id))).where(votes.round_id == rid))
    commenters = c.scalar(
        select(func.count(func.distinct(statements.author_id))).where(
            statements.round_id == rid, statements.author_id.is_not(None)
        )
    )
    in_conv = ex.result.get("in_conversation")
    groups = ex.groups
    base_url = str(current_app.config.get("BASE_URL") or "").rstrip("/")
    items: list[tuple[str, Any]] = [
        ("topic", ex.round_.question),
        ("url", f"{base_url}/rounds/{rid}"),
        ("views", None),
        ("voters", voters or 0),
        ("voters-in-conv", len(in_conv) if in_conv is not None else voters or 0),
        ("commenters", commenters or 0),
        ("comments", len(ex.statement_ids)),
        ("groups", len(groups)),
        ("conversation-description", ex.round_.context or ""),
        (
            "participant-ids",
            "pseudonymous: participants are numbered in the order of their first vote",
        ),
        (
            "small-cells",
            "comment-groups.csv leaves blank every count about fewer than "
            f"{MIN_CELL} people (groups of fewer than {MIN_CELL} members, and statements "
            f"fewer than {MIN_CELL} of a group voted on)",
        ),
        ("vote-sign", "agree = 1, disagree = -1, pass = 0"),
        ("analysis", ex.snapshot_at.isoformat() if ex.snapshot_at else "not yet run"),
    ]
    if (ex.round_.source or "").startswith("polis:"):
        items.append(("attribution", POLIS_ATTRIBUTION))
    return writers.write_summary(items)


def _comments(ex: _Export) -> Iterator[bytes]:
    rid = ex.round_.id
    events, statements = VoteEvent.__table__.c, Statement.__table__.c
    counts = {
        sid: (int(a or 0), int(d or 0))
        for sid, a, d in ex.conn.execute(
            select(
                events.statement_id,
                func.sum((events.value == 1).cast(db.Integer)),
                func.sum((events.value == -1).cast(db.Integer)),
            )
            .where(events.round_id == rid)
            .group_by(events.statement_id)
        )
    }
    to_ms = _epoch_ms()

    def rows() -> Iterator[tuple]:
        for sid, created, author, state, text in _rows(
            ex.conn,
            select(
                statements.id,
                type_coerce(statements.created_at, String),
                statements.author_id,
                statements.moderation_state,
                statements.text,
            )
            .where(statements.round_id == rid)
            .order_by(statements.id),
        ):
            agrees, disagrees = counts.get(sid, (0, 0))
            yield (
                to_ms(created),
                sid,
                ex.pid(author),
                agrees,
                disagrees,
                _MODERATED.get(state, 0),
                text,
            )

    return writers.write_comments(rows())


def _votes(ex: _Export, progress: Progress | None = None) -> Iterator[bytes]:
    conn = ex.conn
    ph = _placeholder(conn)
    sql = (
        f"SELECT {_epoch_ms_sql(conn, 'created_at')}, statement_id, user_id, value"
        f" FROM vote_events WHERE round_id = {ph} ORDER BY id"
    )
    numbers = ex.pseudonyms  # every voter of the round is in it (numbered by vote events)
    texts: dict[int, str] = {}  # Pol.is datetime text per second (votes come in time order)

    def text_of(ms: int) -> str:
        if len(texts) > 4096:
            texts.clear()
        text = texts[ms // 1000] = writers.polis_datetime(ms)
        return text

    def batches() -> Iterator[list[tuple]]:
        number, text = numbers.get, texts.get
        for batch in _raw_batches(conn, sql, (ex.round_.id,)):
            yield [
                (ms, text(ms // 1000) or text_of(ms), sid, number(uid), value)
                for ms, sid, uid, value in batch
            ]
            if progress is not None:
                progress(len(batch))

    return writers.write_vote_batches(batches())


def _participants_votes(ex: _Export, progress: Progress | None = None) -> Iterator[bytes]:
    conn = ex.conn
    rid = ex.round_.id
    ph = _placeholder(conn)
    statements = Statement.__table__.c
    group_of: dict[int, Any] = {}
    for group in ex.groups:
        for member in group.get("members") or []:
            try:
                group_of[int(member)] = group.get("id")
            except (TypeError, ValueError):
                continue
    n_comments = dict(
        conn.execute(
            select(statements.author_id, func.count())
            .where(statements.round_id == rid, statements.author_id.is_not(None))
            .group_by(statements.author_id)
        ).all()
    )
    column = {sid: i for i, sid in enumerate(ex.statement_ids)}
    width = len(ex.statement_ids)
    # In participant order (first vote); the join lets the database sort, not Python.
    sql = (
        "SELECT v.user_id, v.statement_id, v.value FROM votes v"
        f" JOIN ({_FIRST_VOTES.format(ph=ph)}) f ON f.user_id = v.user_id"
        f" WHERE v.round_id = {ph} ORDER BY f.first_vote, v.user_id"
    )

    def rows() -> Iterator[tuple]:
        current: int | None = None
        cells: list[int | None] = []
        for batch in _raw_batches(conn, sql, (rid, rid)):
            for user_id, sid, value in batch:
                if user_id != current:
                    if current is not None:
                        yield (
                            ex.pid(current),
                            group_of.get(current),
                            n_comments.get(current, 0),
                            cells,
                        )
                    current, cells = user_id, [None] * width
                index = column.get(sid)
                if index is not None:
                    cells[index] = value
            if progress is not None:
                progress(len(batch))
        if current is not None:
            yield ex.pid(current), group_of.get(current), n_comments.get(current, 0), cells

    return writers.write_participants_votes(ex.statement_ids, rows())


def _counts(stats: dict | None, small_group: bool = False) -> list[int | None]:
    """[votes, agrees, disagrees, passes] of a cell, all blank when about fewer than 3 people."""
    if small_group or not stats:
        return [None, None, None, None]
    seen = int(stats.get("seen") or 0)
    if is_small(seen):
        return [None, None, None, None]
    return [seen] + [
        cell(int(stats.get(k) or 0), seen).value for k in ("agree", "disagree", "pass")
    ]


def _comment_groups(ex: _Export) -> Iterator[bytes]:
    statements = Statement.__table__.c
    stats = ex.result.get("statement_stats") or {}
    groups = ex.groups

    def rows() -> Iterator[list]:
        for sid, text in _rows(
            ex.conn,
            select(statements.id, statements.text)
            .where(statements.round_id == ex.round_.id)
            .order_by(statements.id),
        ):
            key = str(sid)
            row: list[Any] = [sid, text, *_counts(stats.get(key))]
            for group in groups:
                small = is_small(int(group.get("n_members") or 0))
                row.extend(_counts((group.get("votes") or {}).get(key), small))
            yield row

    return writers.write_comment_groups(len(groups), rows())


def _identities(ex: _Export) -> Iterator[bytes]:
    ids = list(ex.pseudonyms)
    people: dict[int, tuple[str, str, str]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for uid, name, email, org in ex.conn.execute(
            select(User.id, User.name, User.email, Organisation.name)
            .outerjoin(Organisation, Organisation.id == User.organisation_id)
            .where(User.id.in_(chunk))
        ):
            people[uid] = (name, email, org or "")

    def rows() -> Iterator[tuple]:
        for uid, number in sorted(ex.pseudonyms.items(), key=lambda item: item[1]):
            name, email, org = people.get(uid, ("", "", ""))
            yield (
                number,
                writers.neutralise(name),
                writers.neutralise(email),
                writers.neutralise(org),
            )

    return writers.write_rows(IDENTITIES_HEADER, rows())


def _file(ex: _Export, name: str, progress: Progress | None = None) -> Iterator[bytes]:
    if name == "summary.csv":
        return _summary(ex)
    if name == "comments.csv":
        return _comments(ex)
    if name == "votes.csv":
        return _votes(ex, progress)
    if name == "participants-votes.csv":
        return _participants_votes(ex, progress)
    if name == "comment-groups.csv":
        return _comment_groups(ex)
    if name == IDENTITIES_FILE:
        return _identities(ex)
    raise NotFound(f"There is no export called {name}.")


def _stream_files(
    round_id: int, names: list[str], progress: Progress | None = None
) -> Iterator[tuple[str, Iterator[bytes]]]:
    # Everything is read on this one read-only connection: the session (and its ORM objects)
    # may be gone by the time a streamed response is iterated.
    with _read_connection() as conn:
        ex = _open_export(conn, round_id)
        for name in names:
            yield name, _file(ex, name, progress)


# ---------------------------------------------------------------------------------------------
# Public functions


def export_csv(
    actor: User | None,
    round_id: int,
    name: str,
    *,
    identities: bool = False,
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """Check, audit, and return a generator of one Pol.is CSV file's UTF-8 chunks."""
    user = _authorise(actor, identities=identities)
    check_csv_name(name, identities=identities)
    _round(round_id)
    _record(user, "export.csv", round_id, format="csv", file=name, identities=identities)

    def generate() -> Iterator[bytes]:
        for _name, chunks in _stream_files(round_id, [name], progress):
            yield from chunks

    return generate()


class _ZipSink:
    """A write-only file object whose contents are taken out as they are written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def csv_names(*, identities: bool = False) -> list[str]:
    """The files of a full CSV export (with the identity key when chosen)."""
    return [*CSV_FILES, *([IDENTITIES_FILE] if identities else [])]


def export_zip(
    actor: User | None,
    round_id: int,
    *,
    identities: bool = False,
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """Check, audit, and return a generator of a zip of every Pol.is CSV (streamed)."""
    user = _authorise(actor, identities=identities)
    _round(round_id)
    _record(user, "export.csv", round_id, format="zip", identities=identities)
    names = csv_names(identities=identities)

    def generate() -> Iterator[bytes]:
        sink = _ZipSink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
            for name, chunks in _stream_files(round_id, names, progress):
                with archive.open(name, "w", force_zip64=True) as member:
                    for chunk in chunks:
                        member.write(chunk)
                        data = sink.take()
                        if data:
                            yield data
                data = sink.take()
                if data:
                    yield data
        yield sink.take()

    return generate()


def write_csv_folder(
    actor: User | None,
    round_id: int,
    folder: Any,
    *,
    identities: bool = False,
    progress: Progress | None = None,
) -> list[str]:
    """Write every Pol.is CSV into `folder` (created if missing); return the paths written."""
    from pathlib import Path

    user = _authorise(actor, identities=identities)
    _round(round_id)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    _record(user, "export.csv", round_id, format="folder", identities=identities)
    written = []
    for name, chunks in _stream_files(round_id, csv_names(identities=identities), progress):
        path = target / name
        with open(path, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        written.append(str(path))
    return written


def count_export_rows(round_id: int) -> int:
    """Return the number of rows the vote files stream (for progress bars)."""
    events = VoteEvent.__table__.c
    votes = Vote.__table__.c
    n_events = db.session.scalar(select(func.count()).where(events.round_id == round_id)) or 0
    n_votes = db.session.scalar(select(func.count()).where(votes.round_id == round_id)) or 0
    return int(n_events) + int(n_votes)


# ---------------------------------------------------------------------------------------------
# JSON


def _pseudonymise_result(result: dict, pid: Callable[[Any], Any]) -> dict:
    """Return a copy of a snapshot result with participant ids replaced and small cells cut."""
    out = json.loads(json.dumps(result))  # a deep copy of plain JSON data

    def key(p: Any) -> str:
        return str(pid(p))

    if isinstance(out.get("in_conversation"), list):
        out["in_conversation"] = [pid(p) for p in out["in_conversation"]]
    for name in ("user_vote_counts", "projections"):
        if isinstance(out.get(name), dict):
            out[name] = {key(p): v for p, v in out[name].items()}
    stability = out.get("stability")
    if isinstance(stability, dict) and isinstance(stability.get("participants"), dict):
        stability["participants"] = {key(p): v for p, v in stability["participants"].items()}
    for group in out.get("groups") or []:
        group["members"] = [pid(p) for p in group.get("members") or []]
        if is_small(int(group.get("n_members") or 0)):
            group["votes"] = None
            group["representative"] = []
            group["suppressed"] = f"{SUPPRESSED} members: figures left out"
    orgs = out.get("organisations")
    if isinstance(orgs, dict) and isinstance(orgs.get("organisations"), dict):
        for entry in orgs["organisations"].values():
            if isinstance(entry, dict) and is_small(int(entry.get("members") or 0)):
                entry["votes"] = None
                entry["suppressed"] = f"{SUPPRESSED} members: figures left out"
    return out


def export_json(actor: User | None, round_id: int) -> dict:
    """Return the round's latest snapshot with its parameters and the round, pseudonymised."""
    user = _authorise(actor)
    round_ = _round(round_id)
    snapshot = latest_snapshot(round_id)
    with _read_connection() as conn:
        pseudonyms = _pseudonyms(conn, round_id)

    def pid(user_id: Any) -> Any:
        try:
            uid = int(user_id)
        except (TypeError, ValueError):
            return user_id
        if uid not in pseudonyms:
            pseudonyms[uid] = len(pseudonyms)
        return pseudonyms[uid]

    group_names = {
        g.group_id: g.name
        for g in db.session.scalars(select(GroupName).where(GroupName.round_id == round_id))
    }
    data = {
        "format": "deliberate-snapshot",
        "version": 1,
        "exported_at": datetime.now(UTC).isoformat(),
        "participant_ids": "pseudonymous: participants are numbered in the order of their "
        "first vote, as in the Pol.is CSV export of the same round",
        "small_cells": f"figures about {SUPPRESSED} people are left out",
        "vote_sign": "agree = 1, disagree = -1, pass = 0",
        "round": {
            "id": round_.id,
            "question": round_.question,
            "context": round_.context,
            "state": round_.state,
            "opens_at": round_.opens_at.isoformat() if round_.opens_at else None,
            "closes_at": round_.closes_at.isoformat() if round_.closes_at else None,
            "previous_round_id": round_.previous_round_id,
            "results_visibility": round_.results_visibility,
            "group_names": {str(k): v for k, v in sorted(group_names.items())},
            "statements": [
                {
                    "id": s.id,
                    "text": s.text,
                    "moderation_state": s.moderation_state,
                    "is_meta": s.is_meta,
                    "hidden_in_report": s.hidden_in_report,
                    "origin": s.origin,
                    "carried_from_id": s.carried_from_id,
                }
                for s in round_.statements
            ],
        },
        "snapshot": None,
    }
    if (round_.source or "").startswith("polis:"):
        data["attribution"] = POLIS_ATTRIBUTION
    if snapshot is not None:
        data["snapshot"] = {
            "id": snapshot.id,
            "created_at": snapshot.created_at.isoformat() if snapshot.created_at else None,
            "n_votes": snapshot.n_votes,
            "vote_watermark": snapshot.vote_watermark,
            "params": snapshot.params,
            "result": _pseudonymise_result(snapshot.result or {}, pid),
        }
    _record(user, "export.json", round_id, format="json")
    return data


def json_bytes(data: dict) -> bytes:
    """Serialise an export as UTF-8 JSON (NaN refused: snapshots are plain JSON)."""
    return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")
