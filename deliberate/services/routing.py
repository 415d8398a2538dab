"""Which statement a member is shown next: Pol.is's priority-weighted draw (spec §7.3).

Each candidate's weight is its priority in the round's latest analysis snapshot: Pol.is's
formula (new, agreed-with, extreme statements first; meta statements 49). A statement absent
from the snapshot (no votes yet, or newer than the snapshot) gets the engine's explicit prior,
`Params.unseen_priority` = 5.0625 (the formula at S = 0, E = 0), or 49 if it is meta. This is a
deliberate difference from Pol.is, which gives such statements a weight of 1 so they are almost
never shown. The draw itself is Pol.is's: cumulative sums of the weights in candidate order,
r = uniform x total, the first candidate whose cumulative sum exceeds r.

Until a round has a snapshot, statements with the fewest votes come first (ties: oldest first),
so that every statement gathers votes evenly.

The hot path costs one indexed query for the id of the latest snapshot (none when the caller
read it already, as the vote path does in its candidates query); its priorities (a small
column) are loaded once per snapshot and process and kept in memory.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Connection, bindparam, func, select

from ..extensions import db
from ..models import Round, Snapshot, Statement, Vote

# Fallbacks if a snapshot predates these parameters (the engine's documented values).
UNSEEN_PRIORITY = 5.0625
META_PRIORITY = 7.0
_CACHE_SIZE = 256


@dataclass(frozen=True, eq=False)
class RoutingWeights:
    """The routing weights of one snapshot."""

    snapshot_id: int
    priorities: Mapping[str, float]
    unseen: float
    meta: float

    def weight(self, statement: Statement) -> float:
        """Return the statement's weight: its priority, or the prior when it has none."""
        value = self._by_id.get(statement.id)
        if value is None:
            return self.meta if statement.is_meta else self.unseen
        return value

    @cached_property
    def _by_id(self) -> dict[int, float]:
        # The usable priorities by integer id, made once per snapshot (the JSON keys are text).
        out = {}
        for key, value in self.priorities.items():
            if value is not None and value > 0 and str(key).isdigit():
                out[int(key)] = float(value)
        return out


_cache: OrderedDict[tuple[object, int], RoutingWeights] = OrderedDict()
_cache_lock = threading.Lock()


_LATEST_SNAPSHOT = select(func.max(Snapshot.id)).where(Snapshot.round_id == bindparam("round_id"))
LATEST_SNAPSHOT_ID = _LATEST_SNAPSHOT.scalar_subquery()  # for callers that read it with more

# "The caller did not read the latest snapshot's id": routing_weights queries it.
UNKNOWN = object()


def routing_weights(
    round_id: int, snapshot_id: object = UNKNOWN, connection: Connection | None = None
) -> RoutingWeights | None:
    """Return the routing weights of the round's latest snapshot, or None without one.

    `snapshot_id` is the id of the round's latest snapshot (None: it has none) when the caller
    has just read it, in the current transaction (see LATEST_SNAPSHOT_ID). `connection`: the
    connection to read on (by default the session's).
    """
    conn = db.session.connection() if connection is None else connection
    if snapshot_id is UNKNOWN:
        snapshot_id = conn.scalar(_LATEST_SNAPSHOT, {"round_id": round_id})
    if snapshot_id is None:
        return None
    # Keyed by database too: tests (and some deployments) run several apps in one process.
    key = (conn.engine.url, round_id)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None and cached.snapshot_id == snapshot_id:
            _cache.move_to_end(key)
            return cached
    row = conn.execute(
        select(Snapshot.priorities, Snapshot.params).where(Snapshot.id == snapshot_id)
    ).first()
    if row is None:  # pruned between the two queries: the next call sees the newer one
        return None
    params = row.params or {}
    weights = RoutingWeights(
        snapshot_id=snapshot_id,
        priorities=dict(row.priorities or {}),
        unseen=float(params.get("unseen_priority") or UNSEEN_PRIORITY),
        meta=float(params.get("meta_priority") or META_PRIORITY) ** 2,
    )
    with _cache_lock:
        _cache[key] = weights
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return weights


def weighted_draw(
    candidates: Sequence[Statement], weights: Sequence[float], rng: random.Random
) -> Statement:
    """Pick a candidate with probability proportional to its weight (Pol.is's draw)."""
    total = 0.0
    cumulative = []
    for w in weights:
        total += w
        cumulative.append(total)
    if total <= 0:
        return candidates[rng.randrange(len(candidates))]
    r = rng.random() * total
    for candidate, c in zip(candidates, cumulative, strict=True):
        if c > r:
            return candidate
    return candidates[-1]  # r == total by rounding


def _fewest_votes_first(candidates: Sequence[Statement], conn: Connection) -> Statement:
    ids = [s.id for s in candidates]
    counts = dict(
        conn.execute(
            select(Vote.statement_id, func.count())
            .where(Vote.statement_id.in_(ids))
            .group_by(Vote.statement_id)
        ).all()
    )
    return min(candidates, key=lambda s: (counts.get(s.id, 0), s.id))


def pick_next(
    round_: Round,
    candidates: Sequence[Statement],
    rng: random.Random | None = None,
    *,
    snapshot_id: object = UNKNOWN,
    connection: Connection | None = None,
) -> Statement | None:
    """Choose the next statement among the candidates (visible, unvoted, not the member's own).

    `snapshot_id`: the round's latest snapshot id if the caller read it; `connection`: the
    connection to read on (by default the session's); see routing_weights.
    """
    if not candidates:
        return None
    conn = db.session.connection() if connection is None else connection
    weights = routing_weights(round_.id, snapshot_id, conn)
    if weights is None:
        return _fewest_votes_first(candidates, conn)
    # Without a generator of the caller's: the random module's shared one (seeded once, and
    # again in each forked worker), not a new Random() seeded from os.urandom every call.
    return weighted_draw(candidates, [weights.weight(s) for s in candidates], rng or random)
