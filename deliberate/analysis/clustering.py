"""Pol.is clustering: k-means with Pol.is's initialisation and stopping rule, base clusters,
weighted group clusters, silhouette, the k smoother and stable group ids.

All points are 2-D (projections or base-cluster centres), so every step is a small dense
numpy operation; nothing is quadratic in participants (the silhouette only ever sees the at
most 100 base-cluster centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Clustering",
    "polis_kmeans",
    "clean_start",
    "silhouette",
    "smooth_k",
    "max_group_k",
    "match_ids",
    "cold_group_clusterings",
]


@dataclass
class Clustering:
    """A k-means result.

    Attributes
    ----------
    ids : (m,) int64 cluster ids (stable across warm-started updates, increasing only).
    centers : (m, 2) weighted member means.
    labels : (n,) int64 index into ``ids`` for each point.
    """

    ids: np.ndarray
    centers: np.ndarray
    labels: np.ndarray

    def members(self, keys: np.ndarray) -> list[np.ndarray]:
        """Point keys per cluster, in cluster order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.ids.size + 1))
        return [keys[order[bounds[i] : bounds[i + 1]]] for i in range(self.ids.size)]


def _reversed_sq_distances(points: np.ndarray, centers: np.ndarray):
    """Yield (a, b, squared distances of points[a:b] to the centres in reverse order).

    Computed directly (not by the x^2 + c^2 - 2xc trick, so ties are exact), in row chunks
    that stay in cache; reversed so that ``argmin``'s first-minimum rule picks the later centre.
    """
    n, m = points.shape[0], centers.shape[0]
    rx = np.ascontiguousarray(centers[::-1, 0])
    ry = np.ascontiguousarray(centers[::-1, 1])
    step = max(1, 262_144 // max(m, 1))
    for a in range(0, n, step):
        b = min(n, a + step)
        d = points[a:b, 0:1] - rx
        d *= d
        e = points[a:b, 1:2] - ry
        e *= e
        d += e
        yield a, b, d


def _assign(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest centre per point; on an exact tie the later centre wins (Pol.is map order)."""
    out = np.empty(points.shape[0], np.int64)
    for a, b, d in _reversed_sq_distances(points, centers):
        out[a:b] = d.argmin(axis=1)
    return centers.shape[0] - 1 - out


def _assign_bounds(
    points: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`_assign`, also returning the distance to the assigned centre (upper bound)
    and to the second-closest centre (lower bound) for Hamerly's pruning."""
    n, m = points.shape[0], centers.shape[0]
    lab = np.empty(n, np.int64)
    up = np.empty(n)
    lo = np.full(n, np.inf)
    for a, b, d in _reversed_sq_distances(points, centers):
        j = d.argmin(axis=1)
        rows = np.arange(b - a)
        lab[a:b] = j
        up[a:b] = d[rows, j]
        if m > 1:
            d[rows, j] = np.inf
            lo[a:b] = d.min(axis=1)
    return m - 1 - lab, np.sqrt(up), np.sqrt(lo)


# Candidate centres examined first when re-assigning a point (see _assign_near).
_NEIGHBOURS = 12


def _assign_near(
    points: np.ndarray,
    centers: np.ndarray,
    cc: np.ndarray,
    labels: np.ndarray,
    up: np.ndarray,
    lo: np.ndarray,
    check: np.ndarray,
) -> np.ndarray:
    """Re-assign the points ``check`` among their centre's nearest centres when that is exact.

    If ``up < reach / 2``, where ``reach`` is the distance from the point's centre ``a`` to its
    ``_NEIGHBOURS``-th nearest other centre, every other centre j is farther than the point's
    own (d(x, c_j) >= d(a, c_j) - up >= reach - up > up), so the nearest centre is among ``a``
    and its neighbours: compute only those distances. Ties go to the later centre, as in
    :func:`_assign`. Updates labels, up and lo in place; returns the points still to do.

    cc : (m, m) centre-centre distances with an infinite diagonal.
    """
    m = centers.shape[0]
    # The L nearest other centres of each centre, in any order: reach is the L-th smallest
    # distance, whichever of several tied centres makes up the set (a tied centre left out is
    # at reach, so farther than ``far`` below bounds, and never the nearest; lo is the same).
    nn = np.argpartition(cc, _NEIGHBOURS - 1, axis=1)[:, :_NEIGHBOURS]  # (m, L)
    reach = cc[np.arange(m)[:, None], nn].max(axis=1)
    a = labels[check]
    guard = up[check] < 0.5 * reach[a] * (1.0 - 1e-9)
    sub = check[guard]
    if not sub.size:
        return check
    a = a[guard]
    # (L + 1, s): a point's candidates down the first axis, so that the minima and maxima over
    # them are elementwise reductions (over a short last axis they are slow); per point the
    # same squared distances (x - c)^2 + (y - c)^2 and the same minima
    cand = np.concatenate([a[None, :], np.take(np.ascontiguousarray(nn.T), a, axis=1)])
    cx = np.ascontiguousarray(centers[:, 0])
    cy = np.ascontiguousarray(centers[:, 1])
    d = points[sub, 0] - cx[cand]
    d *= d
    e = points[sub, 1] - cy[cand]
    e *= e
    d += e
    dmin = np.minimum.reduce(d, axis=0)
    chosen = np.maximum.reduce(np.where(d == dmin, cand, -1), axis=0)  # ties: later centre
    d[cand == chosen] = np.inf
    second = np.sqrt(np.minimum.reduce(d, axis=0))
    far = reach[a] - up[sub]  # lower bound for every non-candidate centre
    labels[sub] = chosen
    up[sub] = np.sqrt(dmin)
    lo[sub] = np.minimum(second, far)
    return check[~guard]


# Above this many points, k-means prunes the assignment step with Hamerly's bounds.
_BOUNDS_MIN_POINTS = 4096


def _same_clustering(old: np.ndarray, new: np.ndarray, threshold: float = 0.01) -> bool:
    """Pol.is ``same-clustering?``: lexicographically sorted centres pairwise closer than 0.01."""
    return _same_sorted(_lex_sorted(old), _lex_sorted(new), threshold)


def _lex_sorted(c: np.ndarray) -> np.ndarray:
    """Centres sorted lexicographically (x, then y), stable."""
    return c[np.lexsort((c[:, 1], c[:, 0]))]


def _same_sorted(a: np.ndarray, b: np.ndarray, threshold: float = 0.01) -> bool:
    """:func:`_same_clustering` on already sorted centres (2 columns: the row sum is x + y)."""
    m = min(a.shape[0], b.shape[0])  # Clojure's zip truncates
    d = (a - b) if a.shape[0] == b.shape[0] else (a[:m] - b[:m])
    d *= d
    return np.count_nonzero(np.sqrt(d[:, 0] + d[:, 1]) < threshold) == m


def _distinct_first(points: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct (x, y) row (as
    ``np.unique(points, axis=0, return_index=True)``, sorted), by one stable lexsort."""
    n = points.shape[0]
    if n == 0:
        return np.zeros(0, np.intp)
    order = np.lexsort((points[:, 1], points[:, 0]))
    s = points[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(s[1:, 0], s[:-1, 0], out=first[1:])
    first[1:] |= s[1:, 1] != s[:-1, 1]
    idx = order[first]
    idx.sort()
    return idx


def _n_distinct(points: np.ndarray) -> int:
    """Number of distinct (x, y) rows (as ``np.unique(points, axis=0).shape[0]``)."""
    n = points.shape[0]
    if n <= 1:
        return n
    order = np.lexsort((points[:, 1], points[:, 0]))
    s = points[order]
    return 1 + int(np.count_nonzero((s[1:, 0] != s[:-1, 0]) | (s[1:, 1] != s[:-1, 1])))


def _first_distinct(points: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` distinct points in input order."""
    return _distinct_first(points)[:k]


# From this many centres and points, the plain Lloyd step only computes each point's distances
# to its previous centre's nearest centres, when that is provably exact (_assign_candidates).
_NEAR_MIN_CENTERS = 32
_NEAR_MIN_POINTS = 768
# Centres x points per distance block of the plain step (_kmeans_small's ``full``).
_FULL_CELLS = 16_384
# Candidate set sizes: first the _CANDIDATES nearest centres of the point's previous centre,
# then (for the points that test fails) the _CANDIDATES_WIDE nearest, then every centre.
_CANDIDATES = 6
_CANDIDATES_WIDE = 24


def _candidate_sets(cc2: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size + 1, m) candidate centres of each centre (itself and its ``size`` nearest others,
    in any order) and an (m, m) penalty, ``out[j, a]`` = +inf if j is a candidate of a, else 0
    (added to the squared centre distances, the column minimum is the nearest non-candidate)."""
    m = cc2.shape[0]
    work = cc2.copy()
    np.fill_diagonal(work, np.inf)
    nn = np.argpartition(work, size - 1, axis=1)[:, :size]  # (m, size), any order
    cand_t = np.concatenate([np.arange(m)[None, :], nn.T], axis=0)
    penalty = np.zeros((m, m))
    penalty[cand_t, np.arange(m)[None, :]] = np.inf
    return cand_t, penalty


def _nearest_of(
    px: np.ndarray, py: np.ndarray, cx: np.ndarray, cy: np.ndarray, cand: np.ndarray
) -> np.ndarray:
    """For each point i, the nearest of the centres ``cand[:, i]`` (the later one on an exact
    tie), with the plain step's arithmetic."""
    d = px - cx[cand]
    d *= d
    e = py - cy[cand]
    e *= e
    d += e
    dmin = np.minimum.reduce(d, axis=0)  # reductions over the first axis are elementwise
    return np.maximum.reduce(np.where(d == dmin, cand, -1), axis=0)  # ties: the later centre


def _assign_candidates(
    px: np.ndarray,
    py: np.ndarray,
    centers: np.ndarray,
    prev: np.ndarray,
    full,
    cache: dict,
) -> np.ndarray:
    """The nearest centre of every point (the later one on an exact tie), as the plain step,
    but searched among the point's previous centre ``a`` and a fixed set of candidate centres
    of ``a`` (its ``_CANDIDATES`` nearest when the set is made) whenever that is exact: with
    ``up`` = d(x, c_a) and ``reach`` = the distance from c_a to the nearest centre that is NOT
    a candidate, every such centre j has d(x, c_j) >= d(c_a, c_j) - up >= reach - up > up when
    up < reach / 2 (with a margin for rounding), so it is strictly farther than c_a and can be
    neither the nearest nor tied. The points that fail the test try a wider candidate set
    (``_CANDIDATES_WIDE``) under the same test, and the rest get the plain step
    (``full(rows)``). The distances are computed with the same operations as the plain step,
    so the labels are identical. ``cache`` keeps the candidate sets between iterations
    (remade when the number of centres changes)."""
    m = centers.shape[0]
    # squared centre-centre distances (symmetric: x - y is exactly -(y - x)); reach from the
    # minimum of the squares (sqrt is monotone, so it is the minimum distance)
    cc2 = _pairwise_sq(centers)
    cx = np.ascontiguousarray(centers[:, 0])
    cy = np.ascontiguousarray(centers[:, 1])
    if cache.get("m") != m:
        sets = [_candidate_sets(cc2, min(_CANDIDATES, m - 1))]
        if m - 1 > _CANDIDATES_WIDE:
            sets.append(_candidate_sets(cc2, _CANDIDATES_WIDE))
        cache.update(m=m, sets=sets)
    sets = cache["sets"]
    # column a (by symmetry, the distances from c_a) with the candidates of a at +inf: its
    # minimum is the squared distance to the nearest non-candidate
    reach0 = np.sqrt(np.minimum.reduce(cc2 + sets[0][1], axis=0))
    ux = px - cx[prev]
    ux *= ux
    uy = py - cy[prev]
    uy *= uy
    ux += uy
    up = np.sqrt(ux)
    up *= 2.0 / (1.0 - 1e-9)  # test: up < reach / 2 * (1 - 1e-9)
    # np.take along axis 1 keeps the (sets, points) result C-ordered (fancy indexing would give
    # it Fortran order, and then the reductions over the first axis are slow)
    out = _nearest_of(px, py, cx, cy, np.take(sets[0][0], prev, axis=1))
    rest = (up >= reach0[prev]).nonzero()[0]
    if rest.size and len(sets) > 1:
        pr = prev[rest]
        penalty = sets[1][1]
        if pr.size < m:  # the wide reach of the columns needed only (the same minima)
            reach1 = np.sqrt(np.minimum.reduce(cc2[:, pr] + penalty[:, pr], axis=0))
        else:
            reach1 = np.sqrt(np.minimum.reduce(cc2 + penalty, axis=0))[pr]
        ok = up[rest] < reach1
        wide = rest[ok]
        if wide.size:
            out[wide] = _nearest_of(px[wide], py[wide], cx, cy, np.take(sets[1][0], pr[ok], axis=1))
        rest = rest[~ok]
    if rest.size:
        out[rest] = full(rest)
    return out


def _kmeans_small(
    points: np.ndarray, w: np.ndarray, ids: np.ndarray, centers: np.ndarray, max_iters: int
) -> Clustering:
    """The plain (unbounded) Lloyd loop of :func:`polis_kmeans` with the per-iteration Python
    overhead cut (same operations in the same order, so bit-identical results): the squared
    distances go into buffers allocated once (centres x points, so the broadcast runs along
    the contiguous point axis; fresh arrays of this size cost page faults on every
    iteration), weighted coordinates computed once, the sorted centres of one step reused as
    the "old" centres of the next."""
    n = points.shape[0]
    pxr = np.ascontiguousarray(points[:, 0])
    pyr = np.ascontiguousarray(points[:, 1])
    wx = w * points[:, 0]
    wy = w * points[:, 1]
    old_sorted = None
    labels = None
    # With positive weights a cluster is non-empty exactly when its weight sum is positive
    # (a sum of positive floats cannot be 0), which saves the count.
    positive = np.count_nonzero(w > 0) == n
    m0 = centers.shape[0]
    buf_d = np.empty(n * m0)  # (m, points) distances, a contiguous prefix per block
    buf_t = np.empty(n * m0)  # the y terms, then (same memory) the transposed sums
    near = m0 >= _NEAR_MIN_CENTERS and n >= _NEAR_MIN_POINTS
    cache: dict = {}

    def full(rows: np.ndarray | None) -> np.ndarray:
        m = centers.shape[0]
        px, py = (pxr, pyr) if rows is None else (pxr[rows], pyr[rows])
        step = max(1, _FULL_CELLS // max(m, 1))
        if px.size <= step:
            return full_part(px, py, m)
        # in chunks of points: the buffers' pages touched stay few (each new page of a fresh
        # process costs a page fault, more than the extra calls); per point the same values
        out = np.empty(px.size, np.int64)
        for a in range(0, px.size, step):
            out[a : a + step] = full_part(px[a : a + step], py[a : a + step], m)
        return out

    def full_part(px: np.ndarray, py: np.ndarray, m: int) -> np.ndarray:
        k = px.size
        d = buf_d[: m * k].reshape(m, k)
        e = buf_t[: m * k].reshape(m, k)
        t = buf_t[: k * m].reshape(k, m)  # written only once e is used up
        # d[j, i] = (x_i - c_{m-1-j})^2 + (y_i - ...)^2: the centres reversed so that argmin's
        # first-minimum rule picks the later centre on an exact tie (Pol.is map order).
        # Computed as (c - x)^2, bit-identical (IEEE subtraction is sign-symmetric), from a
        # broadcast copy of the centres: faster than broadcasting inside the subtraction.
        np.copyto(d, centers[::-1, 0:1])
        np.subtract(d, px, out=d)
        np.multiply(d, d, out=d)
        np.copyto(e, centers[::-1, 1:2])
        np.subtract(e, py, out=e)
        np.multiply(e, e, out=e)
        np.add(d, e, out=d)
        np.copyto(t, d.T)  # argmin along contiguous rows is several times faster
        return (m - 1) - t.argmin(axis=1)

    for it in range(max_iters + 1):
        if near and labels is not None and labels.size == n and centers.shape[0] == ids.size:
            labels = _assign_candidates(pxr, pyr, centers, labels, full, cache)
        else:
            labels = full(None)
        m = ids.size
        wsum = np.bincount(labels, weights=w, minlength=m)
        keep = (wsum > 0) if positive else (np.bincount(labels, minlength=m) > 0)
        sx = np.bincount(labels, weights=wx, minlength=m)
        sy = np.bincount(labels, weights=wy, minlength=m)
        new = np.empty((m, 2))
        if np.count_nonzero(keep) == m:
            np.divide(sx, wsum, out=new[:, 0])
            np.divide(sy, wsum, out=new[:, 1])
        else:
            new = np.stack([sx, sy], axis=1)[keep] / wsum[keep][:, None]
            remap = np.cumsum(keep) - 1
            labels = remap[labels]
            ids = ids[keep]
        if it == max_iters:
            centers = new
            break
        if old_sorted is None:
            old_sorted = _lex_sorted(centers)
        new_sorted = _lex_sorted(new)
        centers = new
        if _same_sorted(old_sorted, new_sorted):
            break
        old_sorted = new_sorted
    if labels is None:
        labels = np.zeros(n, np.int64)
    return Clustering(ids, centers, labels)


def polis_kmeans(
    points: np.ndarray,
    k: int,
    max_iters: int,
    weights: np.ndarray | None = None,
    init_ids: np.ndarray | None = None,
    init_centers: np.ndarray | None = None,
    use_bounds: bool | None = None,
) -> Clustering:
    """Pol.is k-means (``clusters.clj`` ``kmeans``).

    Parameters
    ----------
    points : (n, 2).
    k : number of clusters wanted (fewer when there are fewer distinct points).
    max_iters : Pol.is runs up to ``max_iters + 1`` steps.
    weights : (n,) positive point weights; centres are weighted means, assignment is unweighted.
    init_ids, init_centers : (m,), (m, 2) warm start (see :func:`clean_start`); cold start when
        None: the first ``k`` distinct points in input order, ids 0..k-1.

    use_bounds : prune the assignment step (default: above ``_BOUNDS_MIN_POINTS`` points) with
        Hamerly's bounds, Elkan's half-distance test and a nearest-centres candidate search
        (:func:`_assign_near`); every pruning rule is exact, so the labels are those of the
        plain step (tested), only faster.

    Returns
    -------
    Clustering whose labels are the last assignment and whose centres are the weighted means of
    those labels (as Pol.is returns the clusters of its last step).
    """
    n = points.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n == 0:
        return Clustering(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0, np.int64))
    if init_centers is None:
        idx = _first_distinct(points, k)
        ids = np.arange(idx.size, dtype=np.int64)
        centers = points[idx].astype(np.float64)
    else:
        ids = np.asarray(init_ids, dtype=np.int64)
        centers = np.asarray(init_centers, dtype=np.float64).reshape(-1, 2)
    bounded = n >= _BOUNDS_MIN_POINTS if use_bounds is None else use_bounds
    if not bounded and n * max(centers.shape[0], 1) <= 262_144:
        return _kmeans_small(points, w, ids, centers, max_iters)
    labels = np.zeros(n, np.int64)
    # the coordinates as contiguous vectors and the weighted ones, once (the same values as
    # taken from ``points`` in each iteration)
    pxr = np.ascontiguousarray(points[:, 0])
    pyr = np.ascontiguousarray(points[:, 1])
    wx = w * pxr
    wy = w * pyr
    # with positive weights a cluster is empty exactly when its weight is 0 (no count needed)
    positive = np.count_nonzero(w > 0) == n
    # Hamerly's bounds give exactly the assignments of the plain step (a point is skipped only
    # when its centre is strictly the closest, with a margin for rounding), much faster once
    # the centres barely move.
    up = lo = None
    for it in range(max_iters + 1):
        if not bounded or up is None:
            if bounded:
                labels, up, lo = _assign_bounds(points, centers)
            else:
                labels = _assign(points, centers)
        else:
            check = np.flatnonzero(up >= lo - 1e-9 * (1.0 + lo))
            if check.size:
                # the distance to the assigned centre, dx^2 + dy^2 per coordinate (the sum
                # over an axis of length 2 adds the same two squares)
                lab_c = labels[check]
                dx = pxr[check] - centers[:, 0][lab_c]
                dx *= dx
                dy = pyr[check] - centers[:, 1][lab_c]
                dy *= dy
                dx += dy
                uc = np.sqrt(dx)
                up[check] = uc
                lc = lo[check]
                # Elkan's test: a point closer to its centre than half the distance from that
                # centre to any other centre cannot change cluster.
                cx, cy = centers[:, 0], centers[:, 1]
                dx = cx[:, None] - cx[None, :]
                dx *= dx
                dy = cy[:, None] - cy[None, :]
                dy *= dy
                dx += dy
                cc = np.sqrt(dx)  # centre-centre distances (the same sums as over axis 2)
                np.fill_diagonal(cc, np.inf)
                half = 0.5 * cc.min(axis=1)
                stay = (uc < lc - 1e-9 * (1.0 + lc)) | (uc < half[lab_c] * (1 - 1e-9))
                check = check[~stay]
            if check.size and centers.shape[0] > 2 * _NEIGHBOURS:
                check = _assign_near(points, centers, cc, labels, up, lo, check)
            if check.size:
                labels[check], up[check], lo[check] = _assign_bounds(points[check], centers)
        m = ids.size
        wsum = np.bincount(labels, weights=w, minlength=m)
        # empty clusters are dropped
        keep = (wsum > 0) if positive else (np.bincount(labels, minlength=m) > 0)
        sx = np.bincount(labels, weights=wx, minlength=m)
        sy = np.bincount(labels, weights=wy, minlength=m)
        new = np.stack([sx, sy], axis=1)[keep] / wsum[keep][:, None]
        if not keep.all():
            remap = np.cumsum(keep) - 1
            labels = remap[labels]
            ids = ids[keep]
        done = it == max_iters or _same_clustering(centers, new)
        if bounded and up is not None and not done:
            move = np.sqrt(((new - centers[keep]) ** 2).sum(axis=1))
            up += move[labels]
            if move.size > 1:
                # Hamerly: the second-closest centre is not the assigned one, so a point's lower
                # bound drops by the largest move among the OTHER centres.
                top = int(np.argmax(move))
                second = float(np.partition(move, -2)[-2])
                lo -= np.where(labels == top, second, float(move[top]))
            elif move.size:
                lo -= float(move[0])
        centers = new
        if done:
            break
    return Clustering(ids, centers, labels)


def clean_start(
    points: np.ndarray,
    keys: np.ndarray,
    k: int,
    previous: Sequence[tuple[int, Sequence]],
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Warm start from a previous clustering (Pol.is ``clean-start-clusters``).

    1. recentre each previous cluster on its surviving members, dropping clusters with none;
    2. merge clusters with identical centres (the larger keeps its id);
    3. while there are fewer than min(k, distinct points) clusters, make the point farthest from
       its nearest centre a new singleton cluster with id = max id + 1.

    Parameters
    ----------
    points : (n, 2); keys : (n,) point keys (participant ids or base-cluster ids).
    previous : [(cluster id, member keys)].

    Returns
    -------
    (ids, centers) or None when nothing survives (the caller then cold-starts).
    """
    n = points.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    index = {kk: i for i, kk in enumerate(keys.tolist())}
    pw = points * w[:, None]  # the same products as (points[ii] * w[ii, None]), once
    clusters: list[tuple[int, int, np.ndarray]] = []  # (id, n_members, center)
    for cid, members in previous:
        idx = [index[m] for m in members if m in index]
        if not idx:
            continue
        ii = np.asarray(idx)
        c = np.add.reduce(pw[ii], axis=0) / np.add.reduce(w[ii])  # = .sum(axis=0) / .sum()
        clusters.append((int(cid), len(idx), c))
    if not clusters:
        return None
    # Merge identical centres: the cluster with more members keeps its id (then the lower id).
    clusters.sort(key=lambda t: (-t[1], t[0]))
    merged: dict[tuple[float, float], tuple[int, int, np.ndarray]] = {}
    for cid, size, c in clusters:
        key = (float(c[0]), float(c[1]))
        if key in merged:
            mid, msize, mc = merged[key]
            merged[key] = (mid, msize + size, mc)
        else:
            merged[key] = (cid, size, c)
    items = sorted(merged.values(), key=lambda t: t[0])
    ids = [t[0] for t in items]
    centers = [t[2] for t in items]
    # target = min(k, distinct points); only needed when there are fewer than k clusters
    target = min(k, _n_distinct(points)) if len(ids) < k else k
    if len(ids) < target:
        cm = np.asarray(centers)
        dmin = np.min(((points[:, None, :] - cm[None, :, :]) ** 2).sum(axis=2), axis=1)
        while len(ids) < target:
            far = int(np.argmax(dmin))
            ids.append(max(ids) + 1)
            centers.append(points[far].astype(np.float64))
            dmin = np.minimum(dmin, ((points - points[far]) ** 2).sum(axis=1))
    return np.asarray(ids, np.int64), np.asarray(centers, np.float64).reshape(-1, 2)


def _pairwise_sq(points: np.ndarray) -> np.ndarray:
    """(n, n) squared Euclidean distances of 2-D points (a new array)."""
    x, y = points[:, 0], points[:, 1]
    n = x.size
    # x_i - x_j as a broadcast copy minus a plain (row-broadcast) subtraction: the same values
    # as the broadcast subtraction, faster
    d = np.empty((n, n))
    np.copyto(d, x[:, None])
    d -= x
    d *= d
    e = np.empty((n, n))
    np.copyto(e, y[:, None])
    e -= y
    e *= e
    d += e
    return d


def _pairwise(points: np.ndarray) -> np.ndarray:
    """(n, n) Euclidean distances, as :func:`silhouette` computes them."""
    d = _pairwise_sq(points)
    return np.sqrt(d, out=d)


def silhouette(points: np.ndarray, labels: np.ndarray, dist: np.ndarray | None = None) -> float:
    """Mean silhouette (Pol.is ``clusters.clj`` ``silhouette``), unweighted, Euclidean.

    A point alone in its cluster scores 0. Only ever called on <= 100 base-cluster centres.
    ``dist``: ``_pairwise(points)`` when the caller already has it (same points, several k).
    """
    n = points.shape[0]
    if n == 0:
        return 0.0
    d = _pairwise(points) if dist is None else dist
    labels = np.asarray(labels)
    sizes = np.bincount(labels) if labels.dtype.kind in "iu" and labels.min() >= 0 else None
    if sizes is not None and sizes.all():
        own = labels  # already 0..k-1, every one used (as k-means labels are)
    else:
        labs, own = np.unique(labels, return_inverse=True)
        own = own.reshape(-1)
        sizes = np.bincount(own, minlength=labs.size)
    s = np.zeros(n)
    if sizes.size < 2:
        return float(s.mean())  # no other cluster: every point scores 0
    # sum of the distances from each point to each cluster's members (one matrix product)
    onehot = np.zeros((n, sizes.size))
    rows = np.arange(n)
    onehot[rows, own] = 1.0
    sums = d @ onehot
    # mean distance from each point to each cluster (excluding itself for its own cluster)
    ni = sizes[own]
    a = sums[rows, own] / np.maximum(ni - 1, 1)
    other = sums / sizes[None, :]
    other[rows, own] = np.inf
    b = other.min(axis=1)
    mx = np.maximum(a, b)
    ok = (ni > 1) & (mx > 0)
    s[ok] = (b[ok] - a[ok]) / mx[ok]
    return float(s.mean())


def max_group_k(n_base: int) -> int:
    """Pol.is ``max-k-fn``: min(5, 2 + floor(n_base / 12))."""
    return min(5, 2 + n_base // 12)


def smooth_k(
    this_k: int, smoother: dict | None, buffer: int = 4, allowed: Sequence[int] = ()
) -> dict:
    """Pol.is ``group-k-smoother``: a new k must win ``buffer`` consecutive updates.

    Like newer Pol.is (PR #2536), a smoothed k that is no longer allowed is reset to ``this_k``.
    """
    if not smoother:
        return {"last_k": this_k, "last_k_count": 1, "smoothed_k": this_k}
    count = smoother.get("last_k_count", 0) + 1 if this_k == smoother.get("last_k") else 1
    prev = smoother.get("smoothed_k")
    smoothed = this_k if count >= buffer or prev is None else prev
    if allowed and smoothed not in allowed:
        smoothed = this_k
    return {"last_k": this_k, "last_k_count": count, "smoothed_k": smoothed}


def match_ids(
    overlap: np.ndarray, previous_ids: Sequence[int], fresh_ids: Sequence[int] | None = None
) -> list[int]:
    """Give each new group the id of the previous group it overlaps most (greedy, one-to-one).

    Parameters
    ----------
    overlap : (n_new, n_prev) member counts in common.
    previous_ids : (n_prev,) ids of the previous groups.
    fresh_ids : candidate ids for unmatched groups, in preference order (default: the smallest
        non-negative ints not already used).

    Returns
    -------
    (n_new,) ids.
    """
    n_new, n_prev = overlap.shape
    out: list[int | None] = [None] * n_new
    used: set[int] = set()
    if n_prev:
        pairs = [
            (-int(overlap[i, j]), i, j)
            for i in range(n_new)
            for j in range(n_prev)
            if overlap[i, j] > 0
        ]
        pairs.sort()
        taken_new: set[int] = set()
        taken_prev: set[int] = set()
        for _, i, j in pairs:
            if i in taken_new or j in taken_prev:
                continue
            out[i] = int(previous_ids[j])
            used.add(int(previous_ids[j]))
            taken_new.add(i)
            taken_prev.add(j)
    candidates = iter(fresh_ids) if fresh_ids is not None else None
    nxt = 0
    for i in range(n_new):
        if out[i] is None:
            if candidates is not None:
                c = next(candidates)
                while c in used:
                    c = next(candidates)
            else:
                while nxt in used:
                    nxt += 1
                c = nxt
            out[i] = c
            used.add(c)
    return [int(x) for x in out]  # type: ignore[arg-type]


def _inertia(points: np.ndarray, weights: np.ndarray, cl: Clustering) -> float:
    d = points - cl.centers[cl.labels]
    return float((weights * (d * d).sum(axis=1)).sum())


def _choice(rng: np.random.Generator, p: np.ndarray) -> int:
    """``int(rng.choice(p.size, p=p))`` without its argument checks: the same inverse-CDF draw
    (cumsum, normalised by its last value, one ``rng.random()``, right-sided search), so the
    same index and the same generator state."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def _sqrt_below(limit: float) -> float:
    """The smallest double ``t`` with ``sqrt(t) >= limit``: as ``np.sqrt`` is correctly rounded
    and so non-decreasing, ``sqrt(s) < limit`` exactly when ``s < t`` (NaN: both false)."""
    t = np.float64(limit) * np.float64(limit)
    while np.sqrt(t) >= limit:
        t = np.nextafter(t, -np.inf)
    while np.sqrt(t) < limit:
        t = np.nextafter(t, np.inf)
    return float(t)


# squared distances below this are Pol.is's "closer than 0.01" (without a square root)
_CLOSE_SQ = _sqrt_below(0.01)


def _kmeans_batch(
    points: np.ndarray,
    w: np.ndarray,
    centers: np.ndarray,
    max_iters: int,
    ks: np.ndarray | None = None,
    stacked: bool = False,
):
    """Several independent runs of the plain Lloyd loop of :func:`_kmeans_small` at once.

    points : (R, n, 2) (a broadcast view is fine); w : (R, n) positive weights; centers :
    (R, K, 2) starting centres. Every operation is the per-run one applied along a leading
    run axis (elementwise arithmetic, nearest centre with the later one winning exact ties,
    per-bin sums that add the points in the same order as a per-run ``bincount``, a per-run
    stable lexsort of the centres), so each run gets exactly the labels and centres that
    :func:`polis_kmeans` gives it alone. A run in which a cluster empties (its k would change)
    is returned as None for the caller to redo alone.

    ks : (R,) optional number of clusters of each run (runs with different k together): run r
    uses ``centers[r, :ks[r]]``; the other rows are padding (+inf, then NaN: never the nearest
    centre, never close, sorted last), so they change nothing in the run.

    Returns [(labels (n,), centers (k, 2)) or None] in run order; with ``stacked``, the same
    as arrays: (ok (R,) bool, labels (R, n) int64, centers (R, K, 2)), rows valid where ok.
    """
    n_runs, n = w.shape
    k = centers.shape[1]
    ok = np.zeros(n_runs, dtype=bool)
    out_lab = np.zeros((n_runs, n), np.int64)
    out_cen = np.zeros((n_runs, k, 2))
    if n_runs and k and n:
        _kmeans_batch_run(points, w, centers, max_iters, ks, ok, out_lab, out_cen)
    if stacked:
        return ok, out_lab, out_cen
    kr = [k] * n_runs if ks is None else np.asarray(ks).tolist()
    return [
        (out_lab[i], out_cen[i, : kr[i]]) if good else None for i, good in enumerate(ok.tolist())
    ]


def _kmeans_batch_run(
    points: np.ndarray,
    w: np.ndarray,
    centers: np.ndarray,
    max_iters: int,
    ks: np.ndarray | None,
    ok: np.ndarray,
    out_lab: np.ndarray,
    out_cen: np.ndarray,
) -> None:
    """The loop of :func:`_kmeans_batch`, writing each finished run into ``ok``, ``out_lab``
    and ``out_cen``."""
    n_runs, n = w.shape
    k = centers.shape[1]
    # Layout: coordinate- and centre-major, (2, K, runs, points), so that every elementwise
    # step and every reduction over the (few) centres runs over long contiguous slabs, and x
    # and y go through the same calls. When all runs share their points and weights
    # (broadcast views, as the cold group clusterings pass), dropping finished runs needs no
    # gather of the per-point arrays.
    shared = points.strides[0] == 0 and w.strides[0] == 0
    pxy = np.empty((2, 1, n_runs, n))
    pxy[0, 0] = points[:, :, 0]
    pxy[1, 0] = points[:, :, 1]
    # weights, weighted x, weighted y: the three per-cluster sums come from one bincount
    wts = np.empty((3, n_runs, n))
    wts[0] = w
    np.multiply(wts[0], pxy[0, 0], out=wts[1])
    np.multiply(wts[0], pxy[1, 0], out=wts[2])
    cen = np.empty((2, k, n_runs))  # (coordinate, centre, run)
    cen[0] = centers[:, :, 0].T
    cen[1] = centers[:, :, 1].T
    kr = np.full(n_runs, k, np.int64) if ks is None else np.asarray(ks, np.int64)
    pad = None
    if ks is not None and bool((kr < k).any()):
        pad = np.arange(k)[:, None] >= kr[None, :]  # (K, R)
        cen[:, pad] = np.inf
    real = int(kr.sum())  # real centres of the active runs
    active = np.arange(n_runs)
    runs = np.arange(n_runs)
    # bin of (coordinate sum c, 1-based label j, run i) = (c * (K + 1) + j) * r + i: lab1 * r
    # plus the run index (rows of a contiguous (runs, points) array, whose first r rows serve
    # any r) plus c * (K + 1) * r; the bins of label 0 stay empty and are dropped
    rowoff_all = np.repeat(runs[:, None], n, axis=1)
    poff = np.arange(3, dtype=np.intp)[:, None, None] * (k + 1)
    jdt = np.int8 if k < 127 else np.int64
    j1 = np.arange(1, k + 1, dtype=jdt)[:, None, None]  # 1-based centre index per slab
    # the squared distances; once the labels are found, the same memory holds the bin keys
    buf_d = np.empty(max(2 * k, 3) * n_runs * n)
    buf_q = np.empty(k * n_runs * n, dtype=bool)
    buf_j = np.empty(k * n_runs * n, dtype=jdt)
    old = None
    views_r = -1  # the number of active runs the views below were made for
    # 0 / 0 only in runs not full and in the padding; inf - inf only in the padding
    with np.errstate(invalid="ignore", divide="ignore"):
        for it in range(max_iters + 1):
            r = active.size
            if not r:
                break
            if views_r != r:  # the buffers' views for r active runs (remade when r drops)
                size = k * r * n
                dd = buf_d[: 2 * size].reshape(2, k, r, n)
                d, d_y = dd[0], dd[1]
                q_buf = buf_q[:size].reshape(k, r, n)
                j_buf = buf_j[:size].reshape(k, r, n)
                # once the labels are found the distances are used up: the same memory holds
                # the bin keys
                keys = buf_d[: 3 * r * n].view(np.intp).reshape(3, r, n)
                keys0, keys_head, keys_tail = keys[0], keys[:1], keys[1:]
                keys_flat = keys.reshape(-1)
                rowoff = rowoff_all[:r]  # (r, n)
                poff_r = (poff * r)[1:]  # (2, 1, 1)
                wts_flat = wts.reshape(-1)
                cols = runs[:r]
                views_r = r
            # (c - p)^2 is bit-identical to (p - c)^2 (IEEE subtraction is sign-symmetric)
            np.copyto(dd, cen[:, :, :, None])
            np.subtract(dd, pxy, out=dd)
            np.multiply(dd, dd, out=dd)
            np.add(d, d_y, out=d)  # (K, r, n) squared distances
            # nearest centre, the later one on an exact tie: the largest j with d_j == min
            # (fmin: the padding's NaN centres are never the minimum)
            mn = np.fmin.reduce(d, axis=0)
            q = np.equal(d, mn, out=q_buf)
            jq = np.multiply(q, j1, out=j_buf)
            lab1 = np.maximum.reduce(jq, axis=0)  # (r, n), 1-based
            np.multiply(lab1, r, out=keys0, dtype=np.intp)
            keys0 += rowoff
            np.add(keys_head, poff_r, out=keys_tail)
            sums = np.bincount(keys_flat, weights=wts_flat, minlength=3 * (k + 1) * r)
            sums = sums.reshape(3, k + 1, r)[:, 1:]  # (3, K, r)
            wsum = sums[0]
            if np.count_nonzero(wsum) == real:
                full = None  # every real cluster of every run has weight
            else:
                full = (wsum > 0) if pad is None else ((wsum > 0) | pad)
                full = np.logical_and.reduce(full, axis=0)  # else redo alone
            new = np.divide(sums[1:], wsum)  # (2, K, r); the padding becomes NaN
            if it == max_iters:
                done = np.ones(r, dtype=bool)
            else:
                if old is None:
                    old = cen[:, np.lexsort((cen[1], cen[0]), axis=0), cols]
                srt = new[:, np.lexsort((new[1], new[0]), axis=0), cols]
                dif = np.subtract(old, srt, out=old)
                dif *= dif
                close = np.add(dif[0], dif[1], out=dif[0]) < _CLOSE_SQ
                if pad is not None:
                    close |= pad
                # every real centre close (the padding sorts last, as it is stored)
                done = np.logical_and.reduce(close, axis=0)
                old = srt
            fin = done if full is None else (done & full)
            fi = fin.nonzero()[0]
            if fi.size:
                rows = active[fi]
                ok[rows] = True
                out_lab[rows] = lab1[fi] - 1  # 0-based
                out_cen[rows] = new[:, :, fi].transpose(2, 1, 0)  # (f, K, 2)
            if fi.size == 0 and full is None:
                cen = new  # every run goes on
                continue
            keep = (~done if full is None else (~done & full)).nonzero()[0]
            views_r = -1  # wts (and r) change below
            active = active[keep]
            kr = kr[keep]
            real = int(kr.sum())
            cen = new[:, :, keep]
            if old is not None:
                old = old[:, :, keep]
            if pad is not None:
                pad = pad[:, keep]
            if shared:  # every row holds the same points: keep the first ones, contiguous
                pxy = pxy[:, :, : keep.size]
                wts = np.ascontiguousarray(wts[:, : keep.size])
            else:
                pxy = pxy[:, :, keep]
                wts = wts[:, keep]


def _kpp_seeds(
    points: np.ndarray,
    weights: np.ndarray,
    p_w: np.ndarray,
    k: int,
    restarts: int,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Weighted k-means++ seed indices of each restart (restarts that cannot find k distinct
    seeds are left out), one restart at a time."""
    starts: list[list[int]] = []
    for _ in range(restarts):
        idx = [_choice(rng, p_w)]
        d2 = ((points - points[idx[0]]) ** 2).sum(axis=1)
        while len(idx) < k:
            prob = weights * d2
            tot = prob.sum()
            if tot <= 0:
                break
            j = _choice(rng, prob / tot)
            idx.append(j)
            d2 = np.minimum(d2, ((points - points[j]) ** 2).sum(axis=1))
        if len(idx) < k:
            continue
        starts.append(idx)
    return starts


def _kpp_seeds_batch(
    points: np.ndarray,
    weights: np.ndarray,
    p_w: np.ndarray,
    k: int,
    restarts: int,
    rng: np.random.Generator,
) -> list[list[int]] | None:
    """:func:`_kpp_seeds` for all restarts at once, or None when some restart would stop early
    (the caller then re-seeds one at a time). Each restart draws exactly k uniforms in order, so
    ``rng.random((restarts, k))`` holds the same numbers as the sequential draws; per restart
    the arithmetic is the same elementwise (row sums and cumulative sums along a row are the 1-D
    ones), and ``searchsorted(cdf, u, side="right")`` on a non-decreasing cdf is the count of
    ``cdf <= u``."""
    if restarts <= 0 or k <= 0:
        return []
    u = rng.random((restarts, k))
    cdf = np.cumsum(p_w)
    cdf /= cdf[-1]
    first = cdf.searchsorted(u[:, 0], side="right")
    px, py = points[:, 0], points[:, 1]
    dx = px[None, :] - px[first][:, None]
    dy = py[None, :] - py[first][:, None]
    d2 = dx * dx
    d2 += dy * dy
    chosen = [first]
    for t in range(1, k):
        prob = weights * d2
        tot = prob.sum(axis=1)
        if not np.all(tot > 0):
            return None
        c = np.cumsum(prob / tot[:, None], axis=1)
        c /= c[:, -1:]
        j = np.count_nonzero(c <= u[:, t : t + 1], axis=1)
        chosen.append(j)
        dx = px[None, :] - px[j][:, None]
        dy = py[None, :] - py[j][:, None]
        e = dx * dx
        e += dy * dy
        np.minimum(d2, e, out=d2)
    return np.stack(chosen, axis=1).tolist()


def _kpp_seeds_multi(
    points: np.ndarray,
    weights: np.ndarray,
    p_w: np.ndarray,
    ks: Sequence[int],
    restarts: int,
) -> dict[int, list[list[int]] | None]:
    """:func:`_kpp_seeds_batch` for several k at once (k's generator seeded with 7919 + k, as
    :func:`best_of_restarts`): the restarts of every k are rows of one batch, a row taking
    part in the steps t < its k. Row-wise the arithmetic is that of ``_kpp_seeds_batch``, so
    the seeds are identical; a k for which some restart would stop early maps to None."""
    ks = [k for k in ks if k > 0]
    if restarts <= 0 or not ks:
        return {k: [] for k in ks}
    kmax = max(ks)
    kr = np.repeat(np.asarray(ks, np.int64), restarts)
    u = np.zeros((kr.size, kmax))
    for i, k in enumerate(ks):
        u[i * restarts : (i + 1) * restarts, :k] = np.random.default_rng(7919 + k).random(
            (restarts, k)
        )
    cdf = np.cumsum(p_w)
    cdf /= cdf[-1]
    first = cdf.searchsorted(u[:, 0], side="right")
    n = points.shape[0]
    px, py = points[:, 0], points[:, 1]
    dx = px[None, :] - px[first][:, None]
    dy = py[None, :] - py[first][:, None]
    d2 = dx * dx
    d2 += dy * dy
    seeds = np.zeros((kr.size, kmax), np.int64)
    seeds[:, 0] = first
    failed = np.zeros(kr.size, dtype=bool)
    # Step t only concerns the rows with k > t: with ks ascending (as the caller passes
    # them) those are the rows from ``lo`` on, and the others are left out (their seeds stop
    # before t). Row by row the arithmetic is unchanged.
    ascending = all(a <= b for a, b in zip(ks[:-1], ks[1:], strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):  # only in rows that failed
        for t in range(1, kmax):
            lo = int(np.searchsorted(kr, t, side="right")) if ascending else 0
            d2t = d2[lo:]
            prob = weights * d2t
            tot = prob.sum(axis=1)
            failed[lo:] |= (kr[lo:] > t) & ~(tot > 0)
            # each row's running sum, accumulated down the columns of the transposed view
            # (the same sequential sums as along the rows, faster)
            c = np.cumsum((prob / tot[:, None]).T, axis=0)
            c /= c[-1]
            j = np.minimum((c <= u[lo:, t]).sum(axis=0), n - 1)
            seeds[lo:, t] = j
            if t == kmax - 1:
                break  # the distances are not needed after the last seed
            # (c - p)^2 = (p - c)^2 bit for bit, from broadcast copies of the chosen points
            e = np.empty_like(d2t)
            np.copyto(e, px[j][:, None])
            e -= px
            e *= e
            dy = np.empty_like(d2t)
            np.copyto(dy, py[j][:, None])
            dy -= py
            dy *= dy
            e += dy
            np.minimum(d2t, e, out=d2t)
    out: dict[int, list[list[int]] | None] = {}
    for i, k in enumerate(ks):
        rows = slice(i * restarts, (i + 1) * restarts)
        out[k] = None if failed[rows].any() else seeds[rows, :k].tolist()
    return out


def best_of_restarts(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    max_iters: int,
    first: Clustering,
    restarts: int,
) -> Clustering:
    """Best (lowest weighted inertia) of Pol.is's cold start and ``restarts`` seeded k-means++
    starts, each run with Pol.is's k-means (deliberate difference, cold starts only).

    Why: Pol.is's group clustering is warm-started on every update for the life of a
    conversation, so by the time anyone reads it, it has drifted into a good optimum; a single
    cold run from "the first k distinct points" often stops in a worse one. On the real
    polis-opendata conversations the best-of-restarts partition is much closer to Pol.is's own
    groups. The seed is fixed, so the result stays deterministic. The returned clustering keeps
    ids 0..k-1.
    """
    best, best_i = first, _inertia(points, weights, first)
    rng = np.random.default_rng(7919 + k)
    n = points.shape[0]
    distinct = _n_distinct(points)
    if distinct <= k:
        return best
    p_w = weights / weights.sum()
    # The seeds depend only on the generator, not on the k-means runs: draw them all, run the
    # k-means of all restarts together (_kmeans_batch, identical per run), then compare in order.
    starts = _kpp_seeds_batch(points, weights, p_w, k, restarts, rng)
    if starts is None:  # some restart stopped early: redo the seeding one restart at a time
        rng = np.random.default_rng(7919 + k)
        starts = _kpp_seeds(points, weights, p_w, k, restarts, rng)
    batched: list = [None] * len(starts)
    w = np.asarray(weights, dtype=np.float64)
    if (
        len(starts) > 1
        and n < _BOUNDS_MIN_POINTS
        and n * k <= 262_144
        and np.count_nonzero(w > 0) == n
    ):
        batched = _kmeans_batch(
            np.broadcast_to(points, (len(starts),) + points.shape),
            np.broadcast_to(w, (len(starts), n)),
            points[np.asarray(starts)].astype(np.float64),
            max_iters,
        )
    for idx, res in zip(starts, batched, strict=True):
        if res is None:
            cl = polis_kmeans(
                points,
                k,
                max_iters,
                weights=weights,
                init_ids=np.arange(k),
                init_centers=points[idx],
            )
        else:
            cl = Clustering(np.arange(k, dtype=np.int64), res[1], res[0])
        i = _inertia(points, weights, cl)
        if i < best_i - 1e-12 * max(best_i, 1.0):
            best, best_i = cl, i
    return best


def _inertias(points: np.ndarray, weights: np.ndarray, runs: list[Clustering]) -> list[float]:
    """:func:`_inertia` of each run: the same arithmetic per run, row by row (a row-wise sum
    over the contiguous last axis is the 1-D sum of each row)."""
    n = points.shape[0]
    if not runs or any(cl.labels.shape[0] != n for cl in runs):
        return [_inertia(points, weights, cl) for cl in runs]
    kmax = max(cl.centers.shape[0] for cl in runs)
    cen = np.zeros((len(runs), kmax, 2))
    lab = np.empty((len(runs), n), np.int64)
    for i, cl in enumerate(runs):
        cen[i, : cl.centers.shape[0]] = cl.centers
        lab[i] = cl.labels
    d = points[None, :, :] - cen[np.arange(len(runs))[:, None], lab]
    return (weights[None, :] * (d * d).sum(axis=2)).sum(axis=1).tolist()


def cold_group_clusterings(
    points: np.ndarray,
    weights: np.ndarray,
    ks: Sequence[int],
    max_iters: int,
    restarts: int,
) -> dict[int, Clustering]:
    """Cold-start group clusterings for every k of ``ks`` at once.

    For each k the result is exactly ``best_of_restarts(points, weights, k, max_iters,
    polis_kmeans(points, k, max_iters, weights=weights), restarts)`` (or the plain
    ``polis_kmeans`` when ``restarts`` is 0), but the k-means of every k and every restart -
    Pol.is's start and the seeded k-means++ starts - run together in one batched Lloyd loop
    (:func:`_kmeans_batch` with per-run k), so the Python overhead is paid once, not once per
    k and restart. Runs the batch cannot take (a cluster empties; large inputs) are run alone.
    """
    n = points.shape[0]
    w = np.asarray(weights, dtype=np.float64)
    ks = list(ks)
    if not ks:
        return {}
    distinct_idx = _distinct_first(points)
    distinct = distinct_idx.size
    batchable = (
        n > 0 and n < _BOUNDS_MIN_POINTS and n * max(ks) <= 262_144 and np.count_nonzero(w > 0) == n
    )
    # runs, in order: for each k, Pol.is's start (which = -1), then the seeded restarts
    p_w = w / w.sum() if n and w.sum() > 0 else None
    seeded = (
        _kpp_seeds_multi(points, w, p_w, [k for k in ks if distinct > k], restarts)
        if restarts and p_w is not None
        else {}
    )
    run_k: list[int] = []
    run_which: list[int] = []
    run_size: list[int] = []
    starts: list[np.ndarray] = []  # (runs of one k, k) point indices, one block per k
    for k in ks:
        block = [distinct_idx[:k]]
        if restarts and distinct > k and p_w is not None:
            seeds = seeded[k]
            if seeds is None:
                rng = np.random.default_rng(7919 + k)
                seeds = _kpp_seeds(points, w, p_w, k, restarts, rng)
            block.extend(np.asarray(seeds, np.intp).reshape(len(seeds), k))
        run_k.extend([k] * len(block))
        run_which.extend(range(-1, len(block) - 1))
        starts.append(np.asarray(block, np.intp).reshape(len(block), -1))
        run_size.extend([starts[-1].shape[1]] * len(block))  # < k: fewer distinct points
    n_runs = len(run_k)
    kmax = max(ks)
    cen = np.full((n_runs, kmax, 2), np.inf)
    r0 = 0
    for block in starts:
        cen[r0 : r0 + block.shape[0], : block.shape[1]] = points[block]
        r0 += block.shape[0]
    # every run's labels and centres (a row per run; the batch's padding rows are NaN and
    # never indexed by a label); a run the batch cannot take is run alone
    if batchable and n_runs > 1:
        ok, labels, centres = _kmeans_batch(
            np.broadcast_to(points, (n_runs,) + points.shape),
            np.broadcast_to(w, (n_runs, n)),
            cen,
            max_iters,
            ks=np.asarray(run_size),
            stacked=True,
        )
    else:
        ok = np.zeros(n_runs, dtype=bool)
        labels, centres = np.zeros((n_runs, n), np.int64), np.zeros((n_runs, kmax, 2))
    alone: dict[int, Clustering] = {}
    for i in (~ok).nonzero()[0].tolist():
        k = run_k[i]
        if run_which[i] < 0:
            cl = polis_kmeans(points, k, max_iters, weights=weights)
        else:
            cl = polis_kmeans(
                points,
                k,
                max_iters,
                weights=weights,
                init_ids=np.arange(k),
                init_centers=cen[i, :k],
            )
        alone[i] = cl
        labels[i] = cl.labels
        centres[i] = 0.0
        centres[i, : cl.centers.shape[0]] = cl.centers
    if restarts:
        # weighted inertia of every run at once: per run the arithmetic of _inertia (a row
        # sum over the contiguous point axis is the 1-D sum)
        # (the sum over the two coordinates is dx^2 + dy^2, as the reduction over an axis
        # of length 2 adds them; per coordinate the gathers stay contiguous)
        dx = points[:, 0] - np.take_along_axis(centres[:, :, 0], labels, axis=1)
        dy = points[:, 1] - np.take_along_axis(centres[:, :, 1], labels, axis=1)
        dx *= dx
        dy *= dy
        dx += dy
        dx *= w
        inert = dx.sum(axis=1).tolist()
    else:
        inert = [0.0] * n_runs
    best: dict[int, int] = {}
    best_i = 0.0
    for i in range(n_runs):
        if run_which[i] < 0 or inert[i] < best_i - 1e-12 * max(best_i, 1.0):
            best[run_k[i]], best_i = i, inert[i]
    out: dict[int, Clustering] = {}
    for k in ks:
        i = best[k]
        if i in alone:
            out[k] = alone[i]
        else:
            size = run_size[i]
            out[k] = Clustering(np.arange(size, dtype=np.int64), centres[i, :size], labels[i])
    return out
