"""Deterministic synthetic conversations with known opinion groups, for the benchmarks.

A conversation has ``n_groups`` latent opinion groups. Every group has, for every statement, a
probability of agreeing, disagreeing and passing. Some statements are consensus statements (all
groups lean the same way, with a little noise), the rest are divisive (each group has its own
stance). Each participant belongs to one group and votes on a random subset of statements:

* by default a fraction drawn uniformly from ``vote_fraction`` (10-60 % of the statements), each
  statement kept independently with that probability (so the count is Binomial around it);
* or, when ``total_votes`` is given, an exact per-participant count drawn from a heavy-tailed
  (log-normal) distribution like real Pol.is participation, rescaled so that the counts sum to
  exactly ``total_votes``; the subset is then exactly that many distinct statements.

Votes are returned as flat per-vote arrays in deliberate's sign (agree = +1, disagree = -1,
pass = 0): ``participant`` and ``statement`` as int32, ``value`` as int8. There is at most one vote
per (participant, statement). Everything is generated from one seeded ``numpy`` generator, in
chunks of participants, so 50,000 x 2,000 (about 35 million votes) takes a few seconds and the
memory is the output arrays (9 bytes per vote) plus one chunk of scratch space.

Only numpy and the standard library; run ``python bench/synthetic.py 50000 2000`` for a quick
timing and summary.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Conversation", "generate", "adjusted_rand_index"]

# Scratch space per chunk is about CHUNK_CELLS * 13 bytes (random keys, mask, indices).
CHUNK_CELLS = 8_000_000


@dataclass(frozen=True)
class Conversation:
    """A synthetic conversation: flat vote arrays plus the generator's ground truth."""

    participant: np.ndarray  # int32, participant index 0..n_participants-1 per vote
    statement: np.ndarray  # int32, statement index 0..n_statements-1 per vote
    value: np.ndarray  # int8, +1 agree / -1 disagree / 0 pass
    group: np.ndarray  # int16, latent group per participant
    n_participants: int
    n_statements: int
    n_groups: int
    seed: int

    @property
    def n_votes(self) -> int:
        return int(self.value.shape[0])

    def nbytes(self) -> int:
        return self.participant.nbytes + self.statement.nbytes + self.value.nbytes


def _propensities(
    rng: np.random.Generator,
    n_groups: int,
    n_statements: int,
    consensus_share: float,
    layout: str,
) -> np.ndarray:
    """Cumulative (P[agree], P[agree] + P[disagree]) per group and statement, float32 (g, s, 2).

    ``layout="planar"``: the groups sit evenly on a circle in a 2-D latent opinion space and a
    divisive statement's stance for a group is its (random) 2-D loading dotted with the group's
    position, so the groups differ along two directions, as the Pol.is model assumes (PCA to 2-D,
    then k-means); ``"independent"``: each group has its own random stance on every divisive
    statement (groups need more than two dimensions to separate).
    """
    consensus = rng.random(n_statements) < consensus_share
    shared = rng.uniform(-1.0, 1.0, n_statements)
    noise = rng.normal(0.0, 0.15, (n_groups, n_statements))
    if layout == "planar":
        angle = 2 * np.pi * (np.arange(n_groups) / n_groups) + rng.uniform(0, 2 * np.pi)
        position = np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (g, 2)
        loading = rng.normal(0.0, 1.0, (n_statements, 2))
        own = np.tanh(1.5 * position @ loading.T) + noise
    elif layout == "independent":
        own = rng.uniform(-1.0, 1.0, (n_groups, n_statements))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    stance = np.where(consensus[None, :], shared[None, :] + noise, own)
    stance = np.clip(stance, -1.0, 1.0)
    p_pass = rng.uniform(0.05, 0.30, (n_groups, n_statements))
    p_agree = (1.0 - p_pass) * (0.5 + 0.45 * stance)
    p_disagree = (1.0 - p_pass) - p_agree
    cum = np.stack([p_agree, p_agree + p_disagree], axis=-1)
    return cum.astype(np.float32)


def _exact_counts(
    rng: np.random.Generator, n_participants: int, n_statements: int, total_votes: int
) -> np.ndarray:
    """Heavy-tailed per-participant vote counts in [1, n_statements] summing to total_votes."""
    if not n_participants <= total_votes <= n_participants * n_statements:
        raise ValueError("total_votes must lie in [n_participants, n_participants * n_statements]")
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_participants)
    # Find a scale so that the clipped, rounded counts sum close to the target (bisection).
    lo, hi = 0.0, float(n_statements) * 4.0 / raw.min()
    for _ in range(100):
        mid = (lo + hi) / 2.0
        s = np.clip(np.rint(raw * mid), 1, n_statements).sum()
        if s < total_votes:
            lo = mid
        else:
            hi = mid
    counts = np.clip(np.rint(raw * hi), 1, n_statements).astype(np.int64)
    # Fix the remainder one vote at a time on random participants that have room.
    diff = int(total_votes - counts.sum())
    while diff != 0:
        step = 1 if diff > 0 else -1
        room = np.flatnonzero(counts < n_statements) if step > 0 else np.flatnonzero(counts > 1)
        take = rng.choice(room, size=min(abs(diff), room.size), replace=False)
        counts[take] += step
        diff -= step * take.size
    return counts


def generate(
    n_participants: int,
    n_statements: int,
    *,
    n_groups: int = 4,
    seed: int = 0,
    vote_fraction: tuple[float, float] = (0.10, 0.60),
    total_votes: int | None = None,
    consensus_share: float = 0.3,
    group_concentration: float = 4.0,
    shuffle: bool = True,
    layout: str = "planar",
) -> Conversation:
    """Generate a conversation. Same arguments, same arrays (bit for bit).

    ``layout`` places the groups' opinions (see ``_propensities``): "planar" (default) or
    "independent".

    ``group_concentration`` is the Dirichlet parameter of the group sizes (higher = more even).
    ``shuffle`` interleaves the votes in a random order, as a database would return them in time
    order, instead of grouped by participant.
    """
    if n_participants < 1 or n_statements < 1 or n_groups < 1:
        raise ValueError("sizes must be positive")
    rng = np.random.default_rng(seed)
    cum = _propensities(rng, n_groups, n_statements, consensus_share, layout)
    shares = rng.dirichlet(np.full(n_groups, group_concentration))
    group = rng.choice(n_groups, size=n_participants, p=shares).astype(np.int16)

    if total_votes is None:
        frac = rng.uniform(vote_fraction[0], vote_fraction[1], n_participants).astype(np.float32)
        counts = None
    else:
        counts = _exact_counts(rng, n_participants, n_statements, total_votes)
        frac = None

    chunk = max(1, CHUNK_CELLS // n_statements)
    parts_p: list[np.ndarray] = []
    parts_s: list[np.ndarray] = []
    parts_v: list[np.ndarray] = []
    for start in range(0, n_participants, chunk):
        stop = min(n_participants, start + chunk)
        keys = rng.random((stop - start, n_statements), dtype=np.float32)
        if counts is None:
            mask = keys < frac[start:stop, None]
        else:
            k = counts[start:stop]
            # The k-th smallest key of each row is its threshold: exactly k statements per row.
            kth = np.sort(keys, axis=1)[np.arange(stop - start), k - 1]
            mask = keys <= kth[:, None]
        del keys
        rows, cols = np.nonzero(mask)
        del mask
        rows = rows.astype(np.int32)
        cols = cols.astype(np.int32)
        rows += start
        c = cum[group[rows], cols]
        u = rng.random(rows.shape[0], dtype=np.float32)
        val = np.where(u < c[:, 0], 1, np.where(u < c[:, 1], -1, 0)).astype(np.int8)
        del c, u
        parts_p.append(rows)
        parts_s.append(cols)
        parts_v.append(val)

    participant = np.concatenate(parts_p)
    del parts_p
    statement = np.concatenate(parts_s)
    del parts_s
    value = np.concatenate(parts_v)
    del parts_v
    if shuffle and participant.size > 1:
        order = rng.permutation(participant.size)
        participant = participant[order]
        statement = statement[order]
        value = value[order]
        del order
    return Conversation(
        participant=participant,
        statement=statement,
        value=value,
        group=group,
        n_participants=n_participants,
        n_statements=n_statements,
        n_groups=n_groups,
        seed=seed,
    )


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie), numpy only."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("labelings differ in length")
    n = a.size
    if n < 2:
        return 1.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def comb2(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    index = comb2(table)
    sum_a = comb2(table.sum(axis=1))
    sum_b = comb2(table.sum(axis=0))
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("participants", type=int)
    ap.add_argument("statements", type=int)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-votes", type=int, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    conv = generate(
        args.participants,
        args.statements,
        n_groups=args.groups,
        seed=args.seed,
        total_votes=args.total_votes,
    )
    dt = time.perf_counter() - t0
    per = np.bincount(conv.participant, minlength=conv.n_participants)
    print(
        f"{conv.n_participants} x {conv.n_statements}: {conv.n_votes:,} votes in {dt:.2f} s, "
        f"{conv.nbytes() / 2**20:.0f} MiB; votes per participant min {per.min()} "
        f"median {int(np.median(per))} max {per.max()}; group sizes "
        f"{np.bincount(conv.group).tolist()}; values (-1, 0, +1) "
        f"{np.bincount(conv.value + 1, minlength=3).tolist()}"
    )


if __name__ == "__main__":
    _main()
