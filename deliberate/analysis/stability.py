"""Stability by bootstrap over participants (a deliberate addition; Pol.is has none).

Method (kept cheap so it runs on every snapshot, even at 35 million votes):

* **Buckets.** Participants are dealt at random (seeded) into ``M`` buckets (``M`` =
  ``Params.bootstrap_buckets``, fewer when the conversation is wide; with ``n <= M``
  participants every participant is its own bucket, i.e. the classical bootstrap). A replicate
  draws a Poisson(1) weight per bucket (by inverse CDF from seeded uniforms) - the "Poisson
  bootstrap" over random groups of
  participants. Participants are i.i.d. in buckets, so this estimates the same sampling
  variability, with Monte-Carlo noise that shrinks with ``M``.
* All per-bucket sums (votes per group and statement, base-cluster sizes and projection sums)
  are taken in ONE pass over the votes (``np.bincount``); each replicate is then a small matrix
  product ``weights (R x M) @ sums (M x ...)``. Cost: O(votes) + O(R x M x groups x statements).
  (Small conversations take the same integer sums as participant weights times the 0/1 vote
  matrix, which is smaller then.)
* **Members.** Each replicate reweights the base clusters (sizes and centres) and reclusters
  them at the snapshot's k, warm-started from the snapshot's groups (as the next update would
  be). Base clusters absent from a replicate go to the nearest replicate group centre. Replicate
  groups are matched to the snapshot's groups by member overlap. A member's stability is the
  fraction of replicates in which they land in their snapshot group. All replicates' k-means
  run as one batch (``_replicate_membership``).
* **Statements.** With group membership fixed, each replicate recomputes per-group counts, then
  GAC, bridging and the overall agree share (agree / seen over all participants), and whether the
  statement is in Pol.is's consensus list (same direction as in the snapshot, or any direction
  when it is not listed). Intervals are percentile intervals at ``Params.stability_level``,
  widened if needed so that lo <= point estimate <= hi.
"""

from __future__ import annotations

import numpy as np

from .clustering import (
    _BOUNDS_MIN_POINTS,
    _kmeans_batch,
    clean_start,
    match_ids,
    polis_kmeans,
)
from .matrix import Votes
from .stats import Z90, prop_test

__all__ = ["bootstrap"]


# Poisson(1) cumulative probabilities P(X <= j), j = 0..; P(X > 20) < 1e-19 (never drawn).
_POISSON1_CDF = np.cumsum(
    [np.exp(-1.0) / float(np.prod(np.arange(1, j + 1, dtype=np.float64))) for j in range(21)]
)


# The first few CDF values, shaped to broadcast against the uniforms (see _poisson1).
_POISSON1_HEAD = _POISSON1_CDF[:4].reshape(4, 1, 1).copy()


def _poisson1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Poisson(1) draws as float64, by inverse CDF from uniforms (several times faster than
    ``rng.poisson`` for the few thousand draws a bootstrap needs; the same distribution).

    The draw is ``searchsorted(_POISSON1_CDF, u, side="right")``, i.e. the number of CDF
    values <= u (the CDF is non-decreasing). It is counted over the first four values with
    one broadcast comparison (a binary search per draw is several times slower); only the
    draws with u >= CDF[3] (about 2 %) can exceed 3, and they get the full search."""
    u = rng.random(shape)
    h = _POISSON1_HEAD.shape[0]
    out = np.add.reduce(u >= _POISSON1_HEAD, axis=0, dtype=np.float64)
    tail = np.flatnonzero(u >= _POISSON1_CDF[h - 1])
    if tail.size:
        out.flat[tail] = np.searchsorted(_POISSON1_CDF, u.flat[tail], side="right")
    return out


def _intervals(samples: np.ndarray, point: np.ndarray, level: float) -> list[np.ndarray]:
    """Percentile intervals of several statistics at once, each widened to contain its point.

    samples : (n_stats, R, n); point : (n_stats, n). Returns n_stats arrays (n, 2). The
    quantiles are numpy's default ("linear") ones, from one sort of all samples.
    """
    n_r = samples.shape[1]
    srt = np.sort(samples, axis=1)
    out = []
    bounds = []
    for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        pos = q * (n_r - 1)
        lo_i = min(int(np.floor(pos)), n_r - 1)
        hi_i = min(lo_i + 1, n_r - 1)
        t = pos - lo_i
        a, b = srt[:, lo_i], srt[:, hi_i]
        diff = b - a
        # numpy's _lerp: a + (b - a) t, or b - (b - a)(1 - t) when t >= 0.5
        bounds.append(b - diff * (1.0 - t) if t >= 0.5 else a + diff * t)
    for i in range(samples.shape[0]):
        lo = np.minimum(bounds[0][i], point[i])
        hi = np.maximum(bounds[1][i], point[i])
        out.append(np.stack([lo, hi], axis=1))
    return out


def _consensus_members(
    agree: np.ndarray, disagree: np.ndarray, seen: np.ndarray, mod_out: np.ndarray, max_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (R, n_cols) membership of the consensus agree / disagree lists per replicate.

    Both lists at once: agree and disagree stacked as 2R rows (elementwise the same scores,
    row by row the same stable sort)."""
    n_r, n = agree.shape
    succ = np.stack([agree, disagree]).reshape(2 * n_r, n)
    seen2 = np.concatenate([seen, seen])
    p = (succ + 1.0) / (seen2 + 2.0)
    t = prop_test(succ, seen2)
    score = np.where((p > 0.5) & (t > Z90) & ~mod_out[None, :], p * t, -np.inf)
    member = np.zeros(score.shape, dtype=bool)
    if n:
        kk = min(max_n, n)
        top = np.argsort(-score, axis=1, kind="stable")[:, :kk]
        rows = np.arange(2 * n_r)[:, None]
        member[rows, top] = np.isfinite(score[rows, top])
    return member[:n_r], member[n_r:]


def _greedy_match(ov: np.ndarray) -> np.ndarray:
    """:func:`clustering.match_ids` for many replicates at once, with square overlaps.

    ov : (R, k, k) member overlaps (replicate group x snapshot group), integer-valued.
    Returns (R, k): the snapshot group each replicate group takes, or -1 (a fresh id). Greedy in
    the order of ``match_ids``: largest overlap first, ties to the lower new then lower previous
    index (row-major argmax), only positive overlaps, one-to-one.
    """
    n_r, k, _ = ov.shape
    work = ov.reshape(n_r, k * k).astype(np.float64, copy=True)
    out = np.full((n_r, k), -1, np.int64)
    rows = np.arange(n_r)
    for _ in range(k):
        best = work.argmax(axis=1)
        ok = work[rows, best] > 0
        if not ok.any():
            break
        i, j = best // k, best % k
        r = rows[ok]
        out[r, i[ok]] = j[ok]
        w3 = work.reshape(n_r, k, k)
        w3[r, i[ok], :] = -1.0
        w3[r, :, j[ok]] = -1.0
    return out


def _replicate_membership(
    bw: np.ndarray,
    bx: np.ndarray,
    by: np.ndarray,
    base_ids: np.ndarray,
    base_centers: np.ndarray,
    group_of_base: np.ndarray,
    n_groups: int,
    sizes: np.ndarray,
    group_iters: int,
) -> np.ndarray:
    """(R, n_base) bool: whether each base cluster lands in its snapshot group, per replicate.

    Each replicate reweights the base clusters (weights ``bw``, weighted projection sums
    ``bx``, ``by``), reclusters the present ones (weight > 0) at the snapshot's k warm-started
    from the snapshot's groups (``clean_start``: each group recentred on its present members),
    sends each absent base cluster to the nearest replicate centre and matches the replicate's
    groups to the snapshot's by member overlap (``match_ids``).

    All replicates run together: the absent base clusters stay in the batch with weight 0
    (they move no centre), the starting centres are per-group weighted sums, the k-means is
    :func:`clustering._kmeans_batch` and the matching :func:`_greedy_match`. A replicate the
    batch cannot take (a snapshot group with no present member, two identical starting
    centres, a cluster that empties) is done alone, exactly as before.
    """
    n_r, n_base = bw.shape
    k = n_groups
    present = bw > 0
    same = np.zeros((n_r, n_base), dtype=bool)
    onehot = np.zeros((n_base, k))
    onehot[np.arange(n_base), group_of_base] = 1.0
    safe = np.where(present, bw, 1.0)
    # (R, n_base, 2): the replicate's centre of each present base cluster; an absent one keeps
    # its snapshot centre (with weight 0 it moves no centre; its label is set below)
    pts = np.empty((n_r, n_base, 2))
    np.divide(bx, safe, out=pts[:, :, 0])
    np.divide(by, safe, out=pts[:, :, 1])
    np.copyto(pts, base_centers[None, :, :], where=~present[:, :, None])
    gw = bw @ onehot  # (R, k) replicate weight of each snapshot group
    init = np.stack([bx @ onehot, by @ onehot], axis=2) / np.where(gw > 0, gw, 1.0)[:, :, None]
    ok = (gw > 0).all(axis=1)
    if k > 1:
        dup = np.zeros(n_r, dtype=bool)
        for a in range(k):
            for b in range(a + 1, k):
                dup |= (init[:, a, 0] == init[:, b, 0]) & (init[:, a, 1] == init[:, b, 1])
        ok &= ~dup
    batched = np.flatnonzero(ok)
    labels = np.zeros((n_r, n_base), np.int64)
    alone: list[int] = np.flatnonzero(~ok).tolist()
    if batched.size and n_base < _BOUNDS_MIN_POINTS and n_base * k <= 262_144:
        ok_b, lab_b, cen_b = _kmeans_batch(
            pts[batched], bw[batched], init[batched], group_iters, stacked=True
        )
        alone.extend(batched[~ok_b].tolist())
        good = batched[ok_b]
        labels[good] = lab_b[ok_b]
        init[good] = cen_b[ok_b]  # final centres
        good_a = good
        if good_a.size:
            cen = init[good_a]  # (G, k, 2)
            # absent base clusters: nearest final centre (the first on a tie, as np.argmin)
            d = base_centers[None, None, :, 0] - cen[:, :, 0:1]  # (G, k, n_base)
            d *= d
            e = base_centers[None, None, :, 1] - cen[:, :, 1:2]
            e *= e
            d += e
            mn = np.minimum.reduce(d, axis=1)
            first = np.arange(k, 0, -1, dtype=np.int64)[None, :, None]  # k - j
            near = k - np.maximum.reduce((d == mn[:, None, :]) * first, axis=1)
            lab = np.where(present[good_a], labels[good_a], near)
            key = (np.arange(good_a.size)[:, None] * k + lab) * k + group_of_base[None, :]
            ov = np.bincount(
                key.ravel(),
                weights=np.broadcast_to(sizes, lab.shape).ravel(),
                minlength=good_a.size * k * k,
            ).reshape(good_a.size, k, k)
            mapped = _greedy_match(ov)
            rows = np.arange(good_a.size)[:, None]
            same[good_a] = mapped[rows, lab] == group_of_base[None, :]
    else:
        alone.extend(batched.tolist())
    if alone:
        prev = [(g, base_ids[group_of_base == g].tolist()) for g in range(k)]
        for r in sorted(alone):
            same[r] = _one_replicate(
                bw[r],
                pts[r],
                present[r],
                base_ids,
                base_centers,
                group_of_base,
                k,
                sizes,
                prev,
                group_iters,
            )
    return same


def _one_replicate(
    bw_r: np.ndarray,
    pts_r: np.ndarray,
    present: np.ndarray,
    base_ids: np.ndarray,
    base_centers: np.ndarray,
    group_of_base: np.ndarray,
    n_groups: int,
    sizes: np.ndarray,
    prev: list,
    group_iters: int,
) -> np.ndarray:
    """One replicate of :func:`_replicate_membership`, on its present base clusters only."""
    n_base = bw_r.size
    out = np.zeros(n_base, dtype=bool)
    if not present.any():
        return out
    weights_r = bw_r[present]
    pts = pts_r[present]
    init = clean_start(pts, base_ids[present], n_groups, prev, weights=weights_r)
    if init is None:
        cl = polis_kmeans(pts, n_groups, group_iters, weights=weights_r)
    else:
        cl = polis_kmeans(
            pts, n_groups, group_iters, weights=weights_r, init_ids=init[0], init_centers=init[1]
        )
    lab = np.empty(n_base, np.int64)
    lab[present] = cl.labels
    if not present.all():
        d = ((base_centers[~present, None, :] - cl.centers[None, :, :]) ** 2).sum(axis=2)
        lab[~present] = np.argmin(d, axis=1)
    # integer-valued sizes: the sums are exact in any order (as np.add.at's)
    ov = np.bincount(
        lab * n_groups + group_of_base, weights=sizes, minlength=cl.ids.size * n_groups
    ).reshape(cl.ids.size, n_groups)
    mapped = match_ids(
        ov, list(range(n_groups)), fresh_ids=list(range(n_groups, n_groups + cl.ids.size))
    )
    return np.asarray(mapped)[lab] == group_of_base


def _replicate_counts(
    votes: Votes,
    stat_groups: np.ndarray,
    g1: int,
    bucket: np.ndarray,
    m: int,
    w: np.ndarray,
) -> np.ndarray:
    """(R, g1, 3, n_cols) agree / pass / disagree counts (in that order: category
    1 - value) per replicate, group + 1 (0 = no group) and statement: one pass over the votes
    gives the per (bucket, group + 1, category, column) counts, then each replicate's counts
    are its bucket weights ``w`` (R, m) times those. Every value is an integer (and partial
    sums only grow), so the product is exact in float32 as long as the largest possible
    count, max(w) x participants, is below 2^24: then float32 (half the memory traffic),
    else float64. Returned in that dtype (integer values, exact in either): the caller takes
    its float64 sums and rates with ``dtype=np.float64`` (no float64 copy of the whole array,
    which a fresh process pays in page faults)."""
    n_cols = votes.n_cols
    replicates = w.shape[0]
    size = m * g1 * 3 * n_cols
    exact32 = float(w.max(initial=0.0)) * max(votes.n_rows, 1) < 2.0**24
    dtype = np.float32 if exact32 else np.float64
    if (
        votes.n_rows <= _PARTICIPANT_FACTOR * m * g1
        and votes.n_rows * 3 * n_cols <= _PARTICIPANT_CELLS
    ):
        return _replicate_counts_by_participant(votes, stat_groups, g1, bucket, w, dtype)
    key_row = bucket * g1 + stat_groups.astype(np.int64) + 1  # (n_rows,)
    per = None
    for a, b in votes.entry_chunks(max(1 << 20, size)):
        # category 0 agree, 1 pass, 2 disagree (= 1 - value)
        key = (key_row[votes.row[a:b]] * 3 + (1 - votes.value[a:b])) * n_cols + votes.col[a:b]
        cnt = np.bincount(key, minlength=size)
        if per is None:
            per = cnt
        else:
            per += cnt
    if per is None:
        per = np.zeros(size, np.int64)
    rep = w.astype(dtype) @ per.reshape(m, -1).astype(dtype)
    return rep.reshape(replicates, g1, 3, n_cols)


# Participants x (3 x statements) cells up to which _replicate_counts may take the participant
# route (a dense 0/1 matrix of that many float32 cells).
_PARTICIPANT_CELLS = 4_000_000
_PARTICIPANT_FACTOR = 2


def _replicate_counts_by_participant(
    votes: Votes,
    stat_groups: np.ndarray,
    g1: int,
    bucket: np.ndarray,
    w: np.ndarray,
    dtype: type,
) -> np.ndarray:
    """:func:`_replicate_counts` for conversations with not many more participants than
    buckets x groups: each replicate's counts of a group are its participants' weights (their
    bucket's) times the 0/1 matrix of their votes (participant x (category, statement)). The
    same integer sums as the bucket route (exact in float32 under the same bound, as in
    float64), with a smaller matrix and fewer operations."""
    n_rows, n_cols = votes.n_rows, votes.n_cols
    replicates = w.shape[0]
    width = 3 * n_cols
    grp = stat_groups.astype(np.int64) + 1  # 0 = no group
    order = np.argsort(grp, kind="stable")
    bounds = np.searchsorted(grp[order], np.arange(g1 + 1)).tolist()
    pos = np.empty(n_rows, np.int64)
    pos[order] = np.arange(n_rows)
    # the 0/1 matrix as bytes; each block of rows is converted to ``dtype`` in one reused
    # buffer just before its product (a float matrix of every row costs a fresh process 4-8x
    # the memory in page faults). The blocks' products add up to the same integer sums.
    onehot = np.zeros(n_rows * width, np.uint8)
    for a, b in votes.entry_chunks():
        # category 0 agree, 1 pass, 2 disagree (= 1 - value)
        onehot[(pos[votes.row[a:b]] * 3 + (1 - votes.value[a:b])) * n_cols + votes.col[a:b]] = 1
    onehot = onehot.reshape(n_rows, width)
    wp = w.astype(dtype)[:, bucket[order]]  # (R, participants in group order)
    rep = np.empty((replicates, g1, width), dtype)
    step = max(1, _BLOCK_CELLS // max(width, 1))
    block = np.empty(min(step, max(n_rows, 1)) * width, dtype)
    part = None
    for g in range(g1):
        lo, hi = bounds[g], bounds[g + 1]
        if lo == hi:
            rep[:, g] = 0.0
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            x = block[: (b - a) * width].reshape(b - a, width)
            np.copyto(x, onehot[a:b])
            if a == lo:
                np.matmul(wp[:, a:b], x, out=rep[:, g])
            else:
                if part is None:
                    part = np.empty((replicates, width), dtype)
                np.matmul(wp[:, a:b], x, out=part)
                rep[:, g] += part
    return rep.reshape(replicates, g1, 3, n_cols)


# Cells of one block of the 0/1 matrix in _replicate_counts_by_participant.
_BLOCK_CELLS = 32_768


def bootstrap(
    votes: Votes,
    group_of_row: np.ndarray,
    n_groups: int,
    base_of_row: np.ndarray,
    base_ids: np.ndarray,
    base_centers: np.ndarray,
    projections: np.ndarray,
    group_of_base: np.ndarray,
    group_centers: np.ndarray,
    mod_out: np.ndarray,
    point: dict[str, np.ndarray],
    consensus_direction: np.ndarray,
    in_conv: np.ndarray,
    *,
    replicates: int,
    buckets: int,
    level: float,
    group_iters: int,
    consensus_max: int,
    rng: np.random.Generator,
) -> dict:
    """Bootstrap stability of groups and statement scores.

    Parameters
    ----------
    group_of_row : (n_rows,) group index (0..n_groups-1) or -1.
    base_of_row : (n_rows,) base-cluster index or -1 (not in conversation).
    base_ids, base_centers : (n_base,), (n_base, 2).
    projections : (n_rows, 2).
    group_of_base : (n_base,) group index of each base cluster.
    group_centers : (n_groups, 2).
    point : {"gac", "bridging", "agree_share"}: (n_cols,) full-data values.
    consensus_direction : (n_cols,) +1 listed agree, -1 listed disagree, 0 not listed.
    in_conv : (n_rows,) bool, in-conversation participants.

    Returns
    -------
    {"member_frequency": (n_rows,) (NaN outside groups), "group_frequency": (n_groups,),
     "intervals": {name: (n_cols, 2)}, "consensus_frequency": (n_cols,), "replicates", "buckets"}
    """
    n_rows, n_cols = votes.n_rows, votes.n_cols
    n_base = base_ids.size
    # Statement scores use the groups; with no groups the pipeline scores the in-conversation
    # participants as one group, and so does the bootstrap.
    stat_groups = group_of_row if n_groups else np.where(in_conv, 0, -1)
    g1 = max(n_groups, 1) + 1
    m_cap = max(20, int(2e7 // max(1, g1 * 3 * max(n_cols, 1))))
    m = max(1, min(buckets, n_rows, m_cap))
    bucket = (rng.permutation(n_rows) % m).astype(np.int64)
    w = _poisson1(rng, (replicates, m))

    rep = _replicate_counts(votes, stat_groups, g1, bucket, m, w)

    out: dict = {"replicates": int(replicates), "buckets": int(m)}
    # --- statements (rep's categories: 0 agree, 1 pass, 2 disagree)
    # rep holds integers in float32 or float64 (exact in both): every float64 value below is
    # what it was from a float64 rep (integer sums are exact in any order)
    grp = rep[:, 1:]  # (R, k, 3, n_cols)
    s = grp.sum(axis=2, dtype=np.float64)
    s += 2.0
    rates = np.add(grp[:, :, 0], 1.0, dtype=np.float64)
    rates /= s
    gac = np.prod(rates, axis=1)
    np.log(rates, out=rates)
    bridging = np.exp(rates.mean(axis=1))
    tot = rep.sum(axis=1, dtype=np.float64)  # (R, 3, n_cols) all participants
    seen = tot.sum(axis=1)
    share = np.where(seen > 0, tot[:, 0] / np.where(seen > 0, seen, 1), point["agree_share"])
    gac_iv, bridging_iv, share_iv = _intervals(
        np.stack([gac, bridging, share]),
        np.stack([point["gac"], point["bridging"], point["agree_share"]]),
        level,
    )
    out["intervals"] = {"gac": gac_iv, "bridging": bridging_iv, "agree_share": share_iv}
    in_a, in_d = _consensus_members(tot[:, 0], tot[:, 2], seen, mod_out, consensus_max)
    freq = np.where(
        consensus_direction > 0,
        in_a.mean(axis=0),
        np.where(consensus_direction < 0, in_d.mean(axis=0), (in_a | in_d).mean(axis=0)),
    )
    out["consensus_frequency"] = freq

    # --- members
    member_freq = np.full(n_rows, np.nan)
    group_freq = np.zeros(n_groups)
    if n_groups >= 1 and n_base:
        ic = np.flatnonzero(base_of_row >= 0)
        # per (bucket, quantity, base cluster): the member count, then the projection sums,
        # from one bincount over the members three times (count as weight 1.0: the same
        # integers; each sum adds the same members in the same order)
        n_ic = ic.size
        bk = bucket[ic] * (3 * n_base) + base_of_row[ic]
        keys = np.empty(3 * n_ic, np.int64)
        wts = np.empty(3 * n_ic)
        for q in range(3):
            np.add(bk, q * n_base, out=keys[q * n_ic : (q + 1) * n_ic])
        wts[:n_ic] = 1.0
        wts[n_ic : 2 * n_ic] = projections[ic, 0]
        wts[2 * n_ic :] = projections[ic, 1]
        sums = np.bincount(keys, weights=wts, minlength=m * 3 * n_base).reshape(m, 3, n_base)
        bsum = (w @ sums.reshape(m, 3 * n_base)).reshape(replicates, 3, n_base)
        bw, bx, by = bsum[:, 0], bsum[:, 1], bsum[:, 2]  # (R, n_base)
        sizes = sums[:, 0].sum(axis=0)
        same = _replicate_membership(
            bw, bx, by, base_ids, base_centers, group_of_base, n_groups, sizes, group_iters
        )
        base_freq = same.mean(axis=0)
        member_freq[ic] = base_freq[base_of_row[ic]]
        num = np.bincount(group_of_base, weights=base_freq * sizes, minlength=n_groups)
        den = np.bincount(group_of_base, weights=sizes, minlength=n_groups)
        group_freq = num[:n_groups] / np.maximum(den[:n_groups], 1)
    out["member_frequency"] = member_freq
    out["group_frequency"] = group_freq
    return out
