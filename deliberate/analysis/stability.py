"""Stability by bootstrap over participants (a deliberate addition; Pol.is has none).

Method (kept cheap so it runs on every snapshot, even at 35 million votes):

* **Buckets.** Participants are dealt at random (seeded) into ``M`` buckets (``M`` =
  ``Params.bootstrap_buckets``, fewer when the conversation is wide; with ``n <= M``
  participants every participant is its own bucket, i.e. the classical bootstrap). A replicate
  draws a Poisson(1) weight per bucket - the "Poisson bootstrap" over random groups of
  participants. Participants are i.i.d. in buckets, so this estimates the same sampling
  variability, with Monte-Carlo noise that shrinks with ``M``.
* All per-bucket sums (votes per group and statement, base-cluster sizes and projection sums)
  are taken in ONE pass over the votes (``np.bincount``); each replicate is then a small matrix
  product ``weights (R x M) @ sums (M x ...)``. Cost: O(votes) + O(R x M x groups x statements).
* **Members.** Each replicate reweights the base clusters (sizes and centres) and reclusters
  them at the snapshot's k, warm-started from the snapshot's groups (as the next update would
  be). Base clusters absent from a replicate go to the nearest replicate group centre. Replicate
  groups are matched to the snapshot's groups by member overlap. A member's stability is the
  fraction of replicates in which they land in their snapshot group.
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
    Clustering,
    _kmeans_batch,
    clean_start,
    match_ids,
    polis_kmeans,
)
from .matrix import Votes
from .stats import Z90, prop_test

__all__ = ["bootstrap"]


def _consensus_members(
    agree: np.ndarray, disagree: np.ndarray, seen: np.ndarray, mod_out: np.ndarray, max_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (R, n_cols) membership of the consensus agree / disagree lists per replicate."""
    outs = []
    for succ in (agree, disagree):
        p = (succ + 1.0) / (seen + 2.0)
        t = prop_test(succ, seen)
        score = np.where((p > 0.5) & (t > Z90) & ~mod_out[None, :], p * t, -np.inf)
        member = np.zeros(score.shape, dtype=bool)
        if score.shape[1]:
            kk = min(max_n, score.shape[1])
            top = np.argsort(-score, axis=1, kind="stable")[:, :kk]
            rows = np.arange(score.shape[0])[:, None]
            member[rows, top] = np.isfinite(score[rows, top])
        outs.append(member)
    return outs[0], outs[1]


def _interval(samples: np.ndarray, point: np.ndarray, level: float) -> np.ndarray:
    """(n, 2) percentile intervals over axis 0, widened to contain ``point``."""
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo = np.quantile(samples, lo_q, axis=0)
    hi = np.quantile(samples, hi_q, axis=0)
    return np.stack([np.minimum(lo, point), np.maximum(hi, point)], axis=1)


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
    w = rng.poisson(1.0, size=(replicates, m)).astype(np.float64)

    # One pass over the votes: per (bucket, group + 1, category, column) counts.
    size = m * g1 * 3 * n_cols
    per = np.zeros(size, np.int64)
    key_row = bucket * g1 + stat_groups.astype(np.int64) + 1  # (n_rows,)
    for a, b in votes.entry_chunks(max(1 << 20, size)):
        # category 0 agree, 1 pass, 2 disagree (= 1 - value); reordered below
        key = (key_row[votes.row[a:b]] * 3 + (1 - votes.value[a:b])) * n_cols + votes.col[a:b]
        per += np.bincount(key, minlength=size)
    per = per.reshape(m, -1).astype(np.float64)
    rep = (w @ per).reshape(replicates, g1, 3, n_cols)[:, :, [0, 2, 1], :]
    del per

    out: dict = {"replicates": int(replicates), "buckets": int(m)}
    # --- statements
    grp = rep[:, 1:]  # (R, k, 3, n_cols)
    a = grp[:, :, 0]
    s = grp.sum(axis=2)
    rates = (a + 1.0) / (s + 2.0)
    gac = np.prod(rates, axis=1)
    bridging = np.exp(np.log(rates).mean(axis=1))
    tot = rep.sum(axis=1)  # (R, 3, n_cols) all participants
    seen = tot.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(seen > 0, tot[:, 0] / np.where(seen > 0, seen, 1), point["agree_share"])
    out["intervals"] = {
        "gac": _interval(gac, point["gac"], level),
        "bridging": _interval(bridging, point["bridging"], level),
        "agree_share": _interval(share, point["agree_share"], level),
    }
    in_a, in_d = _consensus_members(tot[:, 0], tot[:, 1], seen, mod_out, consensus_max)
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
        bk = bucket[ic] * n_base + base_of_row[ic]
        cnt = np.bincount(bk, minlength=m * n_base).reshape(m, n_base).astype(np.float64)
        sx = np.bincount(bk, weights=projections[ic, 0], minlength=m * n_base).reshape(m, n_base)
        sy = np.bincount(bk, weights=projections[ic, 1], minlength=m * n_base).reshape(m, n_base)
        bw, bx, by = w @ cnt, w @ sx, w @ sy  # (R, n_base)
        sizes = cnt.sum(axis=0)
        prev = [(g, base_ids[group_of_base == g].tolist()) for g in range(n_groups)]
        same = np.zeros((replicates, n_base), dtype=bool)
        # The replicates' k-means are independent: set them all up first, run those of the same
        # shape together (_kmeans_batch gives each run exactly its polis_kmeans result), then
        # finish each replicate in order.
        setups: list = [None] * replicates
        shapes: dict[tuple[int, int], list[int]] = {}
        present_rb = bw > 0  # (R, n_base)
        n_present = np.count_nonzero(present_rb, axis=1).tolist()
        # Replicates where every base cluster is present: their points all at once (the same
        # elementwise divisions as one replicate at a time).
        full = np.flatnonzero(present_rb.all(axis=1))
        full_pts = np.stack([bx[full], by[full]], axis=2) / bw[full][:, :, None]
        full_at = {int(r): i for i, r in enumerate(full.tolist())}
        for r in range(replicates):
            if not n_present[r]:
                continue
            present = present_rb[r]
            if r in full_at:
                pts = full_pts[full_at[r]]
                weights_r = bw[r]
            else:
                weights_r = bw[r, present]
                pts = np.stack([bx[r, present], by[r, present]], axis=1) / weights_r[:, None]
            keys = base_ids[present]
            init = clean_start(pts, keys, n_groups, prev, weights=weights_r)
            setups[r] = (present, pts, init)
            if init is not None and init[0].size:
                shapes.setdefault((pts.shape[0], init[0].size), []).append(r)
        done: dict[int, Clustering] = {}
        for (n_pts, k_r), rs in shapes.items():
            if len(rs) < 2 or n_pts >= _BOUNDS_MIN_POINTS or n_pts * k_r > 262_144:
                continue
            res = _kmeans_batch(
                np.stack([setups[r][1] for r in rs]),
                np.stack([bw[r, setups[r][0]] for r in rs]),  # (present weights)
                np.stack([setups[r][2][1] for r in rs]),
                group_iters,
            )
            for r, one in zip(rs, res, strict=True):
                if one is not None:
                    done[r] = Clustering(setups[r][2][0], one[1], one[0])
        for r in range(replicates):
            if setups[r] is None:
                continue
            present, pts, init = setups[r]
            if r in done:
                cl = done[r]
            elif init is None:
                cl = polis_kmeans(pts, n_groups, group_iters, weights=bw[r, present])
            else:
                cl = polis_kmeans(
                    pts,
                    n_groups,
                    group_iters,
                    weights=bw[r, present],
                    init_ids=init[0],
                    init_centers=init[1],
                )
            if n_present[r] == n_base:
                lab = cl.labels
            else:
                lab = np.empty(n_base, np.int64)
                lab[present] = cl.labels
            if n_present[r] < n_base:
                d = ((base_centers[~present, None, :] - cl.centers[None, :, :]) ** 2).sum(axis=2)
                lab[~present] = np.argmin(d, axis=1)
            # integer-valued sizes: the sums are exact in any order (as np.add.at's)
            ov = np.bincount(
                lab * n_groups + group_of_base, weights=sizes, minlength=cl.ids.size * n_groups
            ).reshape(cl.ids.size, n_groups)
            mapped = match_ids(
                ov, list(range(n_groups)), fresh_ids=list(range(n_groups, n_groups + cl.ids.size))
            )
            same[r] = np.asarray(mapped)[lab] == group_of_base
        base_freq = same.mean(axis=0)
        member_freq[ic] = base_freq[base_of_row[ic]]
        for g in range(n_groups):
            sel = group_of_base == g
            group_freq[g] = float((base_freq[sel] * sizes[sel]).sum() / max(sizes[sel].sum(), 1))
    out["member_frequency"] = member_freq
    out["group_frequency"] = group_freq
    return out
