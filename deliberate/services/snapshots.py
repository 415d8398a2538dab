"""Analysis snapshots: run the opinion analysis over a round's votes, off the request path.

A snapshot is the stored outcome of one `run_analysis` over a round's current votes, with the
engine's state (the next run continues from it), the parameters and two watermarks:

- the **vote watermark**: the highest `VoteEvent.id` of the round included. Every first vote
  and every change appends an event, so the round needs a new analysis when its highest event
  id moves past the stored one;
- the **moderation watermark**: a 31-bit hash of the round's moderated-out statements (rejected
  ids and meta ids; accepting a statement does not change the math, see
  `deliberate.analysis.Moderation`). It moves when a statement is rejected, restored, or
  marked meta.

`refresh_snapshot` reads everything it needs in one read-only transaction that never takes the
write lock (SQLite WAL readers do not block the writer), closes it, computes with no database
transaction open, then stores the snapshot in one short write transaction. Voting is never
blocked by an analysis, and a failed analysis leaves the previous snapshot in place.

numpy and the analysis engine are imported lazily, so that web and CLI processes that never
run an analysis (and `deliberate worker`, which pins BLAS threads first) do not load them early.
"""

# Raw SQL here only ever interpolates parameter placeholders ("?" or "%s"), never values.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import delete, select
from sqlalchemy.orm import defer

from ..extensions import db
from ..models import Round, RoundState, Snapshot, StatementState
from .errors import NotFound

log = logging.getLogger(__name__)

# Snapshots kept per round (older ones are deleted when a new one is stored).
KEEP_SNAPSHOTS = 20
# Rows fetched per round trip when loading votes.
FETCH_CHUNK = 65_536
# The analysis is seeded so that the same votes and state give the same snapshot.
ANALYSIS_SEED = 0


class AnalysisFailed(RuntimeError):
    """The analysis of a round raised; the previous snapshot stays (the error is logged)."""


@dataclass
class RoundInputs:
    """Everything one analysis run reads from the database, as plain data."""

    round_id: int
    vote_watermark: int
    moderation_watermark: int
    previous_id: int | None
    previous_state: dict | None
    participant: Any  # (n,) int64 user ids, one per current vote, in order of first vote
    statement: Any  # (n,) int64 statement ids
    value: Any  # (n,) int8 in {-1, 0, +1}
    rejected: frozenset[int]
    meta: frozenset[int]
    accepted: frozenset[int]
    statement_ids: list[int]  # every statement that is not rejected (with or without votes)
    organisation_of: dict[int, int] | None

    @property
    def n_votes(self) -> int:
        return int(self.value.size)


# ---------------------------------------------------------------------------------------------
# Reading without blocking writers


@contextmanager
def _read_cursor() -> Iterator[tuple[Any, str]]:
    """Yield a DBAPI cursor inside a read-only transaction, and the parameter placeholder.

    The app's SQLite set-up starts every SQLAlchemy transaction with BEGIN IMMEDIATE (the write
    lock), which would make voters wait while a large round's votes are read. A plain BEGIN on
    the raw connection is a deferred, read-only snapshot under WAL; PostgreSQL gets a
    REPEATABLE READ, READ ONLY transaction. Either way the reads are mutually consistent.
    """
    engine = db.engine
    dialect = engine.dialect.name
    placeholder = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if dialect == "sqlite":
            cursor.execute("BEGIN")
        elif dialect == "postgresql":
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            yield cursor, placeholder
        finally:
            try:
                if dialect == "sqlite":
                    cursor.execute("ROLLBACK")
                else:
                    raw.rollback()
            finally:
                cursor.close()
    finally:
        raw.close()


def _json_value(raw: Any) -> Any:
    """Decode a JSON column read through the raw driver (SQLite gives text, psycopg objects)."""
    if raw is None:
        return None
    if isinstance(raw, str | bytes):
        return json.loads(raw)
    return raw


def moderation_signature(rejected: Iterable[int], meta: Iterable[int]) -> int:
    """Return the moderation watermark: a stable 31-bit hash of the moderated-out sets."""
    payload = json.dumps([sorted(set(rejected)), sorted(set(meta))], separators=(",", ":"))
    digest = hashlib.blake2b(payload.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def _load_votes(cursor: Any, ph: str, round_id: int) -> tuple[Any, Any, Any]:
    """Load the round's current votes as three numpy arrays, without building ORM objects.

    Ordered by vote id: a member's row appears in the order of their first vote, like the rows
    of Pol.is's matrix, and the order is deterministic. Each vote travels as one 64-bit integer
    (user id << 32 | statement id << 2 | value + 1): a third of the Python objects of a
    three-column row, which is most of the cost of reading a million votes.
    """
    import numpy as np

    cursor.execute(f"SELECT max(statement_id) FROM votes WHERE round_id = {ph}", (round_id,))
    packed = int(cursor.fetchone()[0] or 0) < (1 << 30)  # user ids are 32-bit columns
    if packed:
        cursor.execute(
            "SELECT user_id * 4294967296 + statement_id * 4 + (value + 1)"
            f" FROM votes WHERE round_id = {ph} ORDER BY id",
            (round_id,),
        )
        parts = []
        while rows := cursor.fetchmany(FETCH_CHUNK):
            parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
        codes = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return codes >> 32, (codes >> 2) & 0x3FFFFFFF, ((codes & 3) - 1).astype(np.int8)
    cursor.execute(
        f"SELECT user_id, statement_id, value FROM votes WHERE round_id = {ph} ORDER BY id",
        (round_id,),
    )
    parts = []
    while rows := cursor.fetchmany(FETCH_CHUNK):
        parts.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
    table = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    return (
        np.ascontiguousarray(table[:, 0]),
        np.ascontiguousarray(table[:, 1]),
        table[:, 2].astype(np.int8),
    )


def _read_inputs(round_id: int, *, force: bool) -> RoundInputs | None:
    """Read what the analysis of a round needs; None when its snapshot is already current."""
    with _read_cursor() as (cursor, ph):
        cursor.execute(f"SELECT id FROM rounds WHERE id = {ph}", (round_id,))
        if cursor.fetchone() is None:
            raise NotFound("No such round.")
        cursor.execute(
            f"SELECT max(id) FROM vote_events WHERE round_id = {ph}",
            (round_id,),
        )
        vote_watermark = int(cursor.fetchone()[0] or 0)
        cursor.execute(
            f"SELECT id, moderation_state, is_meta FROM statements WHERE round_id = {ph}"
            " ORDER BY id",
            (round_id,),
        )
        statements = cursor.fetchall()
        rejected = frozenset(s for s, st, _ in statements if st == StatementState.REJECTED)
        meta = frozenset(s for s, _, m in statements if m)
        accepted = frozenset(s for s, st, _ in statements if st == StatementState.ACCEPTED)
        moderation_watermark = moderation_signature(rejected, meta)
        cursor.execute(
            "SELECT id, vote_watermark, moderation_watermark FROM snapshots"
            f" WHERE round_id = {ph} ORDER BY id DESC LIMIT 1",
            (round_id,),
        )
        latest = cursor.fetchone()
        if (
            latest is not None
            and not force
            and (latest[1] == vote_watermark and latest[2] == moderation_watermark)
        ):
            return None
        if vote_watermark == 0:
            return None  # nothing to analyse yet
        previous_state = None
        if latest is not None:
            cursor.execute(f"SELECT state FROM snapshots WHERE id = {ph}", (latest[0],))
            previous_state = _json_value(cursor.fetchone()[0]) or None
        participant, statement, value = _load_votes(cursor, ph, round_id)
        cursor.execute("SELECT id, organisation_id FROM users WHERE organisation_id IS NOT NULL")
        organisations = dict(cursor.fetchall())
    organisation_of = None
    if organisations and participant.size:
        import numpy as np

        voters = np.unique(participant).tolist()
        organisation_of = {u: organisations[u] for u in voters if u in organisations} or None
    return RoundInputs(
        round_id=round_id,
        vote_watermark=vote_watermark,
        moderation_watermark=moderation_watermark,
        previous_id=latest[0] if latest is not None else None,
        previous_state=previous_state,
        participant=participant,
        statement=statement,
        value=value,
        rejected=rejected,
        meta=meta,
        accepted=accepted,
        statement_ids=[s for s, st, _ in statements if st != StatementState.REJECTED],
        organisation_of=organisation_of,
    )


# ---------------------------------------------------------------------------------------------
# Computing


def json_safe(value: Any) -> Any:
    """Return `value` as plain JSON data: numpy scalars unwrapped, NaN and infinities as None.

    PostgreSQL's JSON type refuses NaN, and NaN is not JSON; string keys as JSON requires.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    raise TypeError(f"not JSON data: {type(value).__name__}")


def analysis_params() -> Any:
    """Return the analysis parameters: the engine's defaults, overridden by ANALYSIS_PARAMS."""
    from ..analysis import Params

    return Params.from_dict(current_app.config.get("ANALYSIS_PARAMS") or None)


def _compute(inputs: RoundInputs, params: Any) -> tuple[dict, dict, dict]:
    """Run the analysis (no database access here); return (result, state, priorities) as JSON."""
    from ..analysis import Moderation, Votes, run_analysis

    votes = Votes.from_arrays(inputs.participant, inputs.statement, inputs.value)
    result = run_analysis(
        votes,
        moderation=Moderation(rejected=inputs.rejected, meta=inputs.meta, accepted=inputs.accepted),
        state=inputs.previous_state,
        params=params,
        organisation_of=inputs.organisation_of,
        seed=ANALYSIS_SEED,
        statements=inputs.statement_ids,
    )
    result_dict = json_safe(result.to_dict())
    state = json_safe(result.state)
    priorities = {str(k): v for k, v in json_safe(result.priorities).items() if v is not None}
    return result_dict, state, priorities


# ---------------------------------------------------------------------------------------------
# Storing


def _store(
    inputs: RoundInputs,
    params: Any,
    result: dict,
    state: dict,
    priorities: dict,
    duration_ms: int,
    *,
    force: bool,
) -> Snapshot | None:
    """Store the snapshot and prune old ones in one short transaction."""
    round_id = inputs.round_id
    try:
        if db.engine.dialect.name == "postgresql":
            # Serialise concurrent workers storing a snapshot of the same round.
            db.session.execute(select(Round.id).where(Round.id == round_id).with_for_update())
        latest = db.session.execute(
            select(Snapshot.id, Snapshot.vote_watermark, Snapshot.moderation_watermark)
            .where(Snapshot.round_id == round_id)
            .order_by(Snapshot.id.desc())
            .limit(1)
        ).first()
        if (
            not force
            and latest is not None
            and latest.id != inputs.previous_id
            and latest.vote_watermark >= inputs.vote_watermark
        ):
            # Another worker stored a snapshot at least as recent while we computed.
            db.session.rollback()
            return None
        snapshot = Snapshot(
            round_id=round_id,
            vote_watermark=inputs.vote_watermark,
            moderation_watermark=inputs.moderation_watermark,
            n_votes=inputs.n_votes,
            params=json_safe(params.to_dict()),
            state=state,
            result=result,
            priorities=priorities,
            duration_ms=duration_ms,
        )
        db.session.add(snapshot)
        db.session.flush()
        cutoff = db.session.scalar(
            select(Snapshot.id)
            .where(Snapshot.round_id == round_id)
            .order_by(Snapshot.id.desc())
            .offset(KEEP_SNAPSHOTS - 1)
            .limit(1)
        )
        if cutoff is not None:
            db.session.execute(
                delete(Snapshot).where(Snapshot.round_id == round_id, Snapshot.id < cutoff)
            )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return snapshot


# ---------------------------------------------------------------------------------------------
# Public functions


def refresh_snapshot(round_id: int, *, force: bool = False) -> Snapshot | None:
    """Recompute the round's snapshot if its votes or moderation moved; return the new one.

    Returns None when the latest snapshot is current (or the round has no votes yet). With
    `force`, recomputes even when nothing moved. Raises NotFound for an unknown round and
    AnalysisFailed (after logging it) when the analysis raises; the previous snapshot stays.
    """
    inputs = _read_inputs(round_id, force=force)
    if inputs is None:
        return None
    params = analysis_params()
    started = time.perf_counter()
    try:
        result, state, priorities = _compute(inputs, params)
    except Exception as exc:
        log.exception(
            "analysis of round %s failed (%d votes); keeping the previous snapshot",
            round_id,
            inputs.n_votes,
        )
        raise AnalysisFailed(f"The analysis of round {round_id} failed: {exc}") from exc
    duration_ms = int(round((time.perf_counter() - started) * 1000))
    snapshot = _store(inputs, params, result, state, priorities, duration_ms, force=force)
    if snapshot is not None:
        log.info(
            "analysed round %s: %d votes, watermark %d, %d ms",
            round_id,
            inputs.n_votes,
            inputs.vote_watermark,
            duration_ms,
        )
    return snapshot


def latest_snapshot(round_id: int) -> Snapshot | None:
    """Return the round's newest snapshot (its engine state not loaded), or None."""
    return db.session.scalar(
        select(Snapshot)
        .options(defer(Snapshot.state))
        .where(Snapshot.round_id == round_id)
        .order_by(Snapshot.id.desc())
        .limit(1)
    )


def rounds_needing_analysis() -> list[int]:
    """Return the ids of rounds (not drafts) whose votes or moderation moved past their snapshot."""
    with _read_cursor() as (cursor, ph):
        cursor.execute(
            "SELECT r.id,"
            " (SELECT max(e.id) FROM vote_events e WHERE e.round_id = r.id),"
            " (SELECT max(s.id) FROM snapshots s WHERE s.round_id = r.id)"
            f" FROM rounds r WHERE r.state != {ph} ORDER BY r.id",
            (RoundState.DRAFT.value,),
        )
        rounds = [(r, int(w or 0), s) for r, w, s in cursor.fetchall()]
        with_votes = [(r, w, s) for r, w, s in rounds if w > 0]
        snapshot_ids = [s for _, _, s in with_votes if s is not None]
        latest: dict[int, tuple[int, int]] = {}
        moderated: dict[int, tuple[set[int], set[int]]] = {}
        if snapshot_ids:
            marks = ", ".join([ph] * len(snapshot_ids))
            cursor.execute(
                "SELECT round_id, vote_watermark, moderation_watermark FROM snapshots"
                f" WHERE id IN ({marks})",
                snapshot_ids,
            )
            latest = {r: (v, m) for r, v, m in cursor.fetchall()}
            round_ids = list(latest)
            marks = ", ".join([ph] * len(round_ids))
            cursor.execute(
                "SELECT round_id, id, moderation_state, is_meta FROM statements"
                f" WHERE round_id IN ({marks}) AND (moderation_state = {ph} OR is_meta = {ph})",
                [*round_ids, StatementState.REJECTED.value, True],
            )
            for r, s, state, meta in cursor.fetchall():
                rejected, metas = moderated.setdefault(r, (set(), set()))
                if state == StatementState.REJECTED:
                    rejected.add(s)
                if meta:
                    metas.add(s)
    due = []
    for round_id, watermark, snapshot_id in with_votes:
        if snapshot_id is None or round_id not in latest:
            due.append(round_id)
            continue
        vote_mark, moderation_mark = latest[round_id]
        rejected, metas = moderated.get(round_id, (set(), set()))
        # != rather than >: votes deleted with their statement lower the watermark.
        if watermark != vote_mark or moderation_signature(rejected, metas) != moderation_mark:
            due.append(round_id)
    return due
