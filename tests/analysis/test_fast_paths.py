"""The batched / vectorised fast paths give exactly what the simple per-run code gives.

Each fast path in the engine is an exact rewrite of a simpler computation (same operations in
the same order per run, or integer sums that are exact in any order); these tests compare the
two on random inputs, including inputs with many exact ties.
"""

from __future__ import annotations

import numpy as np
import pytest

from deliberate.analysis import Votes
from deliberate.analysis import clustering as C
from deliberate.analysis import stability as S


def _points(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    if kind == 0:
        return rng.normal(size=(n, 2))
    if kind == 1:
        return np.round(rng.normal(size=(n, 2)), 1)  # many identical points, exact ties
    centres = ((0, 0), (2, 0), (0, 2), (2, 2))
    return np.concatenate([rng.normal(c, 0.3, size=(n // 4 + 1, 2)) for c in centres])[:n]


def test_kmeans_batch_with_mixed_k_equals_one_run_at_a_time():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        n = int(rng.integers(5, 120))
        pts = _points(rng, n, trial % 3)
        w = rng.integers(1, 5, n).astype(float)
        runs = int(rng.integers(1, 12))
        ks = rng.integers(1, 6, runs)
        kmax = int(ks.max())
        cen = np.full((runs, kmax, 2), np.inf)
        for r in range(runs):
            cen[r, : ks[r]] = pts[rng.choice(n, size=min(ks[r], n), replace=False)]
        if (ks > n).any():
            continue
        res = C._kmeans_batch(
            np.broadcast_to(pts, (runs, n, 2)), np.broadcast_to(w, (runs, n)), cen, 20, ks=ks
        )
        for r in range(runs):
            k = int(ks[r])
            one = C.polis_kmeans(
                pts, k, 20, weights=w, init_ids=np.arange(k), init_centers=cen[r, :k]
            )
            if res[r] is None:  # a cluster emptied: the caller redoes the run alone
                assert one.ids.size < k
                continue
            assert np.array_equal(res[r][0], one.labels)
            assert np.array_equal(res[r][1], one.centers)
            checked += 1
    assert checked > 100


def _best_of_restarts_per_k(pts, w, ks, iters, restarts):
    out = {}
    for k in ks:
        first = C.polis_kmeans(pts, k, iters, weights=w)
        out[k] = C.best_of_restarts(pts, w, k, iters, first, restarts) if restarts else first
    return out


@pytest.mark.parametrize("restarts", [0, 10])
def test_cold_group_clusterings_equals_best_of_restarts_per_k(restarts):
    rng = np.random.default_rng(1)
    for trial in range(25):
        n = int(rng.integers(3, 100))
        pts = _points(rng, n, trial % 3)
        w = rng.integers(1, 20, n).astype(float)
        ks = [k for k in range(2, 6) if k <= C._n_distinct(pts)]
        fast = C.cold_group_clusterings(pts, w, ks, 20, restarts)
        slow = _best_of_restarts_per_k(pts, w, ks, 20, restarts)
        assert list(fast) == ks
        for k in ks:
            assert np.array_equal(fast[k].labels, slow[k].labels)
            assert np.array_equal(fast[k].centers, slow[k].centers)
            assert np.array_equal(fast[k].ids, slow[k].ids)


def test_kpp_seeds_for_several_k_equal_one_k_at_a_time():
    rng = np.random.default_rng(2)
    for trial in range(40):
        n = int(rng.integers(1, 80))
        pts = _points(rng, n, trial % 3)
        if trial % 5 == 0:
            pts[: n // 2] = pts[0]  # duplicates: some restarts cannot find k distinct seeds
        w = rng.integers(1, 9, n).astype(float)
        p_w = w / w.sum()
        many = C._kpp_seeds_multi(pts, w, p_w, [2, 3, 4, 5], 10)
        for k in (2, 3, 4, 5):
            one = C._kpp_seeds_batch(pts, w, p_w, k, 10, np.random.default_rng(7919 + k))
            assert many[k] == one


def test_batched_inertias_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(1, 200))
        pts = rng.normal(size=(n, 2)) * rng.uniform(0.1, 50)
        w = rng.integers(1, 50, n).astype(float)
        runs = []
        for _ in range(int(rng.integers(1, 10))):
            k = int(rng.integers(1, 6))
            runs.append(C.Clustering(np.arange(k), rng.normal(size=(k, 2)), rng.integers(0, k, n)))
        assert C._inertias(pts, w, runs) == [C._inertia(pts, w, cl) for cl in runs]


@pytest.mark.parametrize("wide", [24, 10**9])
def test_base_kmeans_candidate_search_gives_the_plain_result(monkeypatch, wide):
    # wide = 10**9: no second (wide) candidate level, the points that fail the first test get
    # the plain step directly
    rng = np.random.default_rng(4)
    for trial in range(12):
        n = int(rng.integers(800, 2000))
        pts = _points(rng, n, trial % 3)
        w = rng.integers(1, 4, n).astype(float) if trial % 2 else None
        monkeypatch.setattr(C, "_NEAR_MIN_CENTERS", 10**9)
        plain = C.polis_kmeans(pts, 100, 100, weights=w)
        monkeypatch.setattr(C, "_NEAR_MIN_CENTERS", 32)
        monkeypatch.setattr(C, "_NEAR_MIN_POINTS", 256)
        monkeypatch.setattr(C, "_CANDIDATES_WIDE", wide)
        near = C.polis_kmeans(pts, 100, 100, weights=w)
        assert np.array_equal(plain.labels, near.labels)
        assert np.array_equal(plain.centers, near.centers)
        assert np.array_equal(plain.ids, near.ids)


def test_kmeans_batch_with_per_run_points_equals_one_run_at_a_time():
    # the bootstrap's case: every run has its own points and weights (some weights 0)
    rng = np.random.default_rng(10)
    checked = 0
    for trial in range(40):
        n = int(rng.integers(5, 120))
        runs = int(rng.integers(1, 10))
        k = int(rng.integers(1, 6))
        if k > n:
            continue
        pts = np.stack([_points(rng, n, trial % 3) for _ in range(runs)])
        w = rng.integers(0, 5, (runs, n)).astype(float)
        w[:, :k] = np.maximum(w[:, :k], 1.0)
        cen = np.stack([pts[r, rng.choice(n, size=k, replace=False)] for r in range(runs)])
        res = C._kmeans_batch(pts, w, cen, 20)
        for r in range(runs):
            if res[r] is None:
                continue  # a cluster emptied (or lost all weight): the caller redoes it alone
            one = C.polis_kmeans(
                pts[r], k, 20, weights=w[r], init_ids=np.arange(k), init_centers=cen[r]
            )
            assert np.array_equal(res[r][0], one.labels)
            assert np.array_equal(res[r][1], one.centers)
            checked += 1
    assert checked > 50


def test_silhouette_matches_the_definition():
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        pts = rng.normal(size=(n, 2))
        labels = rng.integers(0, int(rng.integers(1, 5)), n)
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(axis=2))
        s = []
        for i in range(n):
            own = labels == labels[i]
            if own.sum() < 2 or np.unique(labels).size < 2:
                s.append(0.0)
                continue
            a = d[i, own].sum() / (own.sum() - 1)
            b = min(d[i, labels == g].mean() for g in np.unique(labels) if g != labels[i])
            s.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
        assert C.silhouette(pts, labels) == pytest.approx(float(np.mean(s)), abs=1e-12)


def _votes(rng: np.random.Generator, n: int, m: int) -> Votes:
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    keep = rng.random(p.size) < 0.4
    v = rng.choice([-1, 0, 1], p.size)
    return Votes.from_arrays(p.ravel()[keep], s.ravel()[keep], v[keep])


@pytest.mark.parametrize("participant_cells", [0, 4_000_000])
def test_replicate_counts_are_the_weighted_bucket_counts(monkeypatch, participant_cells):
    # participant_cells = 0: the bucket route only; else the participant route where it applies
    monkeypatch.setattr(S, "_PARTICIPANT_CELLS", participant_cells)
    rng = np.random.default_rng(6)
    for g in (1, 3, 5):
        votes = _votes(rng, int(rng.integers(20, 300)), int(rng.integers(3, 40)))
        n = votes.n_rows
        groups = rng.integers(-1, g, n)
        m = min(50, n)
        bucket = (rng.permutation(n) % m).astype(np.int64)
        w = S._poisson1(rng, (12, m))
        got = S._replicate_counts(votes, groups, g + 1, bucket, m, w)
        per = np.zeros((m, g + 1, 3, votes.n_cols))
        np.add.at(per, (bucket[votes.row], groups[votes.row] + 1, 1 - votes.value, votes.col), 1)
        assert np.array_equal(got, np.einsum("rm,mgcj->rgcj", w, per))


def test_poisson_weights_have_the_poisson_1_distribution():
    draws = S._poisson1(np.random.default_rng(7), (400, 500)).ravel()
    freq = np.bincount(draws.astype(int)) / draws.size
    expected = np.exp(-1.0) / np.array([1, 1, 2, 6, 24], dtype=float)
    assert np.allclose(freq[:5], expected, atol=0.003)
    assert draws.mean() == pytest.approx(1.0, abs=0.01)


def test_intervals_equal_numpy_quantiles():
    rng = np.random.default_rng(8)
    samples = rng.random((3, 40, 57))
    point = rng.random((3, 57))
    level = 0.9
    got = S._intervals(samples, point, level)
    for i in range(3):
        lo = np.minimum(np.quantile(samples[i], (1 - level) / 2, axis=0), point[i])
        hi = np.maximum(np.quantile(samples[i], (1 + level) / 2, axis=0), point[i])
        assert np.array_equal(got[i], np.stack([lo, hi], axis=1))


def test_greedy_match_equals_match_ids():
    rng = np.random.default_rng(9)
    for _ in range(200):
        k = int(rng.integers(1, 6))
        ov = rng.integers(0, 4, (k, k)).astype(float)  # many ties and zeros
        ids = C.match_ids(ov, list(range(k)), fresh_ids=list(range(k, 2 * k)))
        fast = S._greedy_match(ov[None])[0]
        assert [i if i < k else -1 for i in ids] == fast.tolist()


def test_lanczos_top_eigenpairs_equal_eigh():
    from deliberate.analysis import pca as P

    rng = np.random.default_rng(11)
    used = 0
    for _ in range(20):
        n = int(rng.integers(96, 300))
        r = int(rng.integers(2, 40))
        a = rng.normal(size=(n, r)) * rng.uniform(0.1, 3.0, r)
        g = a @ a.T
        top = P._top_eig_lanczos(g, 2)
        vals, vecs = np.linalg.eigh(g)
        if top is None:  # the caller falls back to eigh
            continue
        used += 1
        assert np.allclose(top[0], vals[::-1][:2], rtol=1e-13, atol=0)
        v = top[1] * np.sign((top[1] * vecs[:, ::-1][:, :2]).sum(axis=0))
        assert np.abs(v - vecs[:, ::-1][:, :2]).max() < 1e-11
    assert used > 10
    # an exact tie between the 2nd and 3rd eigenvalues, or rank 1: eigh decides
    g = np.diag(np.r_[5.0, 2.0, 2.0, np.linspace(1.0, 0.1, 120)])
    assert P._top_eig_lanczos(g, 2) is None
    x = rng.normal(size=130)
    assert P._top_eig_lanczos(np.outer(x, x), 2) is None


def test_silhouette_with_sparse_or_negative_labels_matches_dense_labels():
    rng = np.random.default_rng(12)
    for _ in range(20):
        n = int(rng.integers(3, 60))
        pts = rng.normal(size=(n, 2))
        labels = rng.integers(0, 4, n)
        ids = np.array([-3, 7, 11, 40])
        assert C.silhouette(pts, ids[labels]) == C.silhouette(
            pts, np.unique(labels, return_inverse=True)[1]
        )


def test_lanczos_leaves_repeated_top_eigenvalues_to_eigh():
    from deliberate.analysis import pca as P

    rng = np.random.default_rng(13)
    for spectrum in ([5.0, 5.0, 2.0], [5.0, 3.0, 3.0], [4.0, 4.0, 4.0]):
        q, _ = np.linalg.qr(rng.normal(size=(150, 150)))
        vals = np.r_[spectrum, np.linspace(1.0, 0.01, 147)]
        g = (q * vals) @ q.T
        g = (g + g.T) / 2
        assert P._top_eig_lanczos(g, 2) is None
        ev, vec = P._top_eig_dense(g, 2)
        ref_vals, ref_vecs = np.linalg.eigh(g)
        assert np.array_equal(ev, ref_vals[::-1][:2])
        assert np.array_equal(vec, ref_vecs[:, ::-1][:, :2])


def test_cold_group_clusterings_with_fewer_distinct_points_than_k():
    rng = np.random.default_rng(14)
    for _ in range(10):
        pts = np.repeat(rng.normal(size=(3, 2)), 4, axis=0)  # 3 distinct points
        w = rng.integers(1, 5, pts.shape[0]).astype(float)
        fast = C.cold_group_clusterings(pts, w, [2, 3, 4, 5], 20, 10)
        slow = _best_of_restarts_per_k(pts, w, [2, 3, 4, 5], 20, 10)
        for k in (2, 3, 4, 5):
            assert np.array_equal(fast[k].labels, slow[k].labels)
            assert np.array_equal(fast[k].centers, slow[k].centers)
            assert np.array_equal(fast[k].ids, slow[k].ids)


def test_consensus_members_equal_a_stable_sort():
    rng = np.random.default_rng(15)
    for _ in range(30):
        r, n = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        seen = rng.integers(0, 8, (r, n)).astype(float)
        agree = np.floor(seen * rng.random((r, n)))
        disagree = np.floor((seen - agree) * rng.random((r, n)))  # many exact ties
        mod_out = rng.random(n) < 0.2
        max_n = int(rng.integers(1, 8))
        got = S._consensus_members(agree, disagree, seen, mod_out, max_n)
        for succ, member in zip((agree, disagree), got, strict=True):
            p = (succ + 1.0) / (seen + 2.0)
            t = 2.0 * np.sqrt(seen + 1.0) * ((succ + 1.0) / (seen + 1.0) - 0.5)
            score = np.where((p > 0.5) & (t > 1.2816) & ~mod_out, p * t, -np.inf)
            want = np.zeros((r, n), dtype=bool)
            for i in range(r):
                top = np.argsort(-score[i], kind="stable")[: min(max_n, n)]
                want[i, top] = np.isfinite(score[i, top])
            assert np.array_equal(member, want)


def test_poisson_draws_equal_the_binary_search_over_the_cdf():
    # the head comparisons + tail search give searchsorted's index for every uniform,
    # including uniforms in the far tail and exactly on a CDF value
    for seed in range(20):
        shape = (int(1 + seed % 7), 1000 + 37 * seed)
        got = S._poisson1(np.random.default_rng(seed), shape)
        u = np.random.default_rng(seed).random(shape)
        want = np.searchsorted(S._POISSON1_CDF, u, side="right").astype(np.float64)
        assert got.dtype == np.float64 and got.shape == shape
        assert np.array_equal(got, want)

    class _Fixed:  # a generator whose uniforms sit on and around the CDF values
        def random(self, shape):
            c = S._POISSON1_CDF[S._POISSON1_CDF < 1.0]
            v = np.concatenate([c, np.nextafter(c, 0.0), np.nextafter(c, 1.0), [0.0]])
            return np.resize(v, shape)

    u = _Fixed().random((3, 50))
    want = np.searchsorted(S._POISSON1_CDF, u, side="right").astype(np.float64)
    assert np.array_equal(S._poisson1(_Fixed(), (3, 50)), want)
    assert want.max() >= 5  # the tail was exercised


def test_kpp_seeds_for_several_k_in_any_order_equal_one_k_at_a_time():
    # ascending ks let each step skip the rows whose seeds are complete; any other order takes
    # every row at every step: both give the per-k seeds
    rng = np.random.default_rng(16)
    for trial in range(30):
        n = int(rng.integers(1, 80))
        pts = _points(rng, n, trial % 3)
        if trial % 5 == 0:
            pts[: n // 2] = pts[0]
        w = rng.integers(1, 9, n).astype(float)
        p_w = w / w.sum()
        for ks in ([2, 3, 4, 5], [5, 2, 4], [3], [2, 2, 5]):
            many = C._kpp_seeds_multi(pts, w, p_w, ks, 10)
            for k in ks:
                one = C._kpp_seeds_batch(pts, w, p_w, k, 10, np.random.default_rng(7919 + k))
                assert many[k] == one


@pytest.mark.parametrize("cells", [1, 150, 16_384])
def test_plain_kmeans_step_in_point_blocks_gives_the_one_block_result(monkeypatch, cells):
    rng = np.random.default_rng(17)
    monkeypatch.setattr(C, "_NEAR_MIN_CENTERS", 10**9)  # the plain step at every iteration
    for trial in range(8):
        n = int(rng.integers(20, 1500))
        pts = _points(rng, n, trial % 3)
        w = rng.integers(1, 4, n).astype(float) if trial % 2 else None
        for k in (3, 100):
            monkeypatch.setattr(C, "_FULL_CELLS", 10**12)
            one = C.polis_kmeans(pts, k, 100, weights=w)
            monkeypatch.setattr(C, "_FULL_CELLS", cells)
            blocks = C.polis_kmeans(pts, k, 100, weights=w)
            assert np.array_equal(one.labels, blocks.labels)
            assert np.array_equal(one.centers, blocks.centers)
            assert np.array_equal(one.ids, blocks.ids)


@pytest.mark.parametrize("block_cells", [1, 97, 32_768])
def test_replicate_counts_by_participant_blocks_are_the_bucket_counts(monkeypatch, block_cells):
    # the participant route with its 0/1 matrix converted block by block (one row per block
    # at block_cells = 1): the same integer counts
    monkeypatch.setattr(S, "_BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(18)
    for g in (1, 2, 4):
        votes = _votes(rng, int(rng.integers(20, 200)), int(rng.integers(3, 30)))
        n = votes.n_rows
        groups = rng.integers(-1, g, n)
        if g > 1:
            groups[groups == 1] = 0  # an empty group
        m = min(50, n)
        bucket = (rng.permutation(n) % m).astype(np.int64)
        w = S._poisson1(rng, (9, m))
        got = S._replicate_counts_by_participant(votes, groups, g + 1, bucket, w, np.float32)
        per = np.zeros((m, g + 1, 3, votes.n_cols))
        np.add.at(per, (bucket[votes.row], groups[votes.row] + 1, 1 - votes.value, votes.col), 1)
        assert np.array_equal(got, np.einsum("rm,mgcj->rgcj", w, per))


def test_bootstrap_takes_float32_counts_as_their_float64_values(monkeypatch):
    # the replicate counts come back in float32 when exact there; every statistic computed
    # from them equals the one from the same counts in float64
    from deliberate.analysis import Params, run_analysis

    rng = np.random.default_rng(19)
    votes = _votes(rng, 150, 25)
    assert S._replicate_counts.__name__ == "_replicate_counts"
    plain = S._replicate_counts

    def as_float64(*args, **kwargs):
        out = plain(*args, **kwargs)
        assert out.dtype == np.float32  # this conversation takes the float32 route
        return out.astype(np.float64)

    a = run_analysis(votes, params=Params(), seed=3).to_dict()["stability"]
    monkeypatch.setattr(S, "_replicate_counts", as_float64)
    b = run_analysis(votes, params=Params(), seed=3).to_dict()["stability"]
    assert a == b


def test_gram_scattered_in_slices_equals_one_slice(monkeypatch):
    from deliberate.analysis import pca as P

    rng = np.random.default_rng(20)
    for trial in range(6):
        votes = _votes(rng, int(rng.integers(5, 300)), int(rng.integers(2, 40)))
        mod_out = rng.random(votes.n_cols) < 0.2
        center = P.column_means(votes, mod_out)
        for dtype in (np.float64, np.float32):
            monkeypatch.setattr(P, "_SCATTER_ENTRIES", 10**9)
            one = P._gram(votes, center, mod_out, dtype, 4_000_000)
            monkeypatch.setattr(P, "_SCATTER_ENTRIES", int(rng.integers(1, 50)))
            sliced = P._gram(votes, center, mod_out, dtype, 4_000_000 if trial % 2 else 50)
            monkeypatch.setattr(P, "_SCATTER_ENTRIES", 10**9)
            one_small = P._gram(votes, center, mod_out, dtype, 4_000_000 if trial % 2 else 50)
            assert np.array_equal(sliced, one_small)
            if trial % 2:
                assert np.array_equal(sliced, one)
