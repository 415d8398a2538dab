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
blocked by an analysis, and a failed analysis leaves the previous snapshot in place. The store
refuses a result older than the stored one: if another worker stored a snapshot at least as
recent (by vote watermark) while this one computed, the result is dropped.

Several workers (threads of several web processes, `deliberate worker` processes, on one
database) share the rounds through claims, one row per round in `analysis_leases`:
`claim_analysis` takes a round for one owner until a lease expires (PostgreSQL: the row is
locked with SELECT ... FOR UPDATE SKIP LOCKED, so a contended claim is skipped, never waited
for; SQLite: the conditional UPDATE runs under BEGIN IMMEDIATE, the database's write lock);
`renew_analysis` extends it while a long computation runs; `release_analysis` gives it back
after storing, optionally holding the round for a while (the debounce, or the back-off after a
failure) so that no other worker analyses it again at once. A killed worker's claim simply
lapses when its lease expires, and the next worker takes the round over.

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
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from ..extensions import db
from ..models import AnalysisLease, Round, RoundState, Snapshot, StatementState, utcnow
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
    # When the round's personal data was purged (retention), as read; see `_store`.
    purged_at: datetime | None = None

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
        cursor.execute(
            f"SELECT id, personal_data_purged_at FROM rounds WHERE id = {ph}", (round_id,)
        )
        round_row = cursor.fetchone()
        if round_row is None:
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
        purged_at=_as_utc(round_row[1]),
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
        query = select(Round.personal_data_purged_at).where(Round.id == round_id)
        if db.engine.dialect.name == "postgresql":
            # Serialise concurrent workers (and a retention purge) writing the same round.
            # FOR NO KEY UPDATE, not FOR UPDATE: every vote being written holds FOR KEY SHARE
            # on its round's row (the foreign key), which FOR UPDATE would wait for, and new
            # votes would then queue behind this lock until the snapshot commits.
            query = query.with_for_update(key_share=True)
        if db.session.execute(query).scalar_one_or_none() != inputs.purged_at:
            # The round's personal data was purged while we computed: this result still names
            # the people; the purge rewrote the stored snapshot, and the next pass recomputes.
            db.session.rollback()
            return None
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
# Claims: which worker analyses a round (see the module docstring)

_LEASES = AnalysisLease.__table__


def _as_utc(value: Any) -> datetime | None:
    """A timestamp read through the raw driver as an aware UTC datetime (SQLite gives text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _insert_lease_row(round_id: int, now: datetime) -> None:
    """Create the round's lease row unless it exists (concurrent inserts are harmless)."""
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    db.session.execute(
        insert(_LEASES)
        .values(round_id=round_id, owner=None, leased_until=None, attempts=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["round_id"])
    )


def claim_analysis(
    round_id: int, owner: str, lease_seconds: float, *, respect_hold: bool = True
) -> bool:
    """Claim the round's analysis for `owner` for `lease_seconds`; return whether it is ours.

    The claim is free when nobody holds it or the holder's lease expired (a killed worker);
    the owner's own claim is renewed. A round released with a hold (`release_analysis`) stays
    unclaimable until the hold ends, unless `respect_hold` is False (a drain). Never waits for
    another worker: a claim being taken at the same moment counts as taken.
    """
    now = utcnow()
    free = or_(
        _LEASES.c.leased_until.is_(None),
        _LEASES.c.leased_until <= now,
        _LEASES.c.owner == owner,
    )
    if not respect_hold:
        free = or_(free, _LEASES.c.owner.is_(None))
    condition = and_(_LEASES.c.round_id == round_id, free)
    try:
        _insert_lease_row(round_id, now)
        if db.engine.dialect.name == "postgresql":
            # Lock the row if it is free; a row another worker is claiming right now is skipped.
            locked = db.session.execute(
                select(_LEASES.c.round_id).where(condition).with_for_update(skip_locked=True)
            ).first()
            if locked is None:
                db.session.rollback()
                return False
        # SQLite: this transaction began with BEGIN IMMEDIATE, so the check and the update are
        # one atomic step under the database's write lock.
        taken = db.session.execute(
            update(_LEASES)
            .where(condition)
            .values(
                owner=owner,
                leased_until=now + timedelta(seconds=lease_seconds),
                attempts=_LEASES.c.attempts + 1,
                updated_at=now,
            )
        ).rowcount
        db.session.commit()
    except IntegrityError:  # the round was deleted meanwhile
        db.session.rollback()
        return False
    except Exception:
        db.session.rollback()
        raise
    return taken == 1


def renew_analysis(round_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend the owner's claim to `lease_seconds` from now; False when it is no longer ours."""
    now = utcnow()
    try:
        renewed = db.session.execute(
            update(_LEASES)
            .where(_LEASES.c.round_id == round_id, _LEASES.c.owner == owner)
            .values(leased_until=now + timedelta(seconds=lease_seconds), updated_at=now)
        ).rowcount
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return renewed == 1


def release_analysis(
    round_id: int, owner: str, *, hold_seconds: float = 0.0, succeeded: bool = True
) -> bool:
    """Give the owner's claim back; keep others off the round for `hold_seconds`.

    `succeeded` resets the attempt count (claims taken without a successful release, for
    example by workers killed while computing). Returns False when the claim was no longer
    the owner's (it lapsed and another worker took it).
    """
    now = utcnow()
    values: dict[str, Any] = {
        "owner": None,
        "leased_until": now + timedelta(seconds=hold_seconds) if hold_seconds > 0 else None,
        "updated_at": now,
    }
    if succeeded:
        values["attempts"] = 0
    try:
        released = db.session.execute(
            update(_LEASES)
            .where(_LEASES.c.round_id == round_id, _LEASES.c.owner == owner)
            .values(**values)
        ).rowcount
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return released == 1


@dataclass(frozen=True)
class LeaseInfo:
    """A round's claim as stored: who holds it, until when, how many unfinished claims."""

    round_id: int
    owner: str | None
    leased_until: datetime | None
    attempts: int


def analysis_leases() -> list[LeaseInfo]:
    """Return every round's claim (for operators and tests), read without the write lock."""
    with _read_cursor() as (cursor, _ph):
        cursor.execute(
            "SELECT round_id, owner, leased_until, attempts FROM analysis_leases ORDER BY round_id"
        )
        rows = cursor.fetchall()
    return [LeaseInfo(r, o, _as_utc(u), int(a or 0)) for r, o, u, a in rows]


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
    log.info(
        "analysing round %s: %d votes, watermark %d",
        round_id,
        inputs.n_votes,
        inputs.vote_watermark,
    )
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


def rounds_needing_analysis(*, skip_claimed: bool = False) -> list[int]:
    """Return the ids of rounds (not drafts) whose votes or moderation moved past their snapshot.

    With `skip_claimed`, leave out rounds whose claim is live (another worker computes them,
    or holds them after its last snapshot): a worker then does not try to claim them in vain.
    """
    now = utcnow()
    with _read_cursor() as (cursor, ph):
        cursor.execute(
            "SELECT r.id,"
            " (SELECT max(e.id) FROM vote_events e WHERE e.round_id = r.id),"
            " (SELECT max(s.id) FROM snapshots s WHERE s.round_id = r.id),"
            " (SELECT l.leased_until FROM analysis_leases l WHERE l.round_id = r.id)"
            f" FROM rounds r WHERE r.state != {ph} ORDER BY r.id",
            (RoundState.DRAFT.value,),
        )
        rounds = [
            (r, int(w or 0), s)
            for r, w, s, until in cursor.fetchall()
            if not (skip_claimed and until is not None and _as_utc(until) > now)
        ]
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
