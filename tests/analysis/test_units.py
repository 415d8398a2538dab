"""Unit tests: priorities, weighted draw, organisations, bridging, divisive, repness quirks."""

from __future__ import annotations

import numpy as np
import pytest

from deliberate.analysis import Moderation, Params, Votes, draw_weighted, run_analysis
from deliberate.analysis.bridging import bridging_scores
from deliberate.analysis.divisive import divisiveness
from deliberate.analysis.priorities import routing_weights
from deliberate.analysis.stats import group_informed_consensus, priorities


def _prio(a, d, s, e=0.0, meta=False):
    return float(
        priorities(np.array([a]), np.array([d]), np.array([s]), np.array([e]), np.array([meta]))[0]
    )


def test_priority_reference_values():
    assert _prio(0, 0, 0) == pytest.approx(5.0625)
    assert _prio(0, 0, 0, e=1.0) == pytest.approx(5.0625 * 4)
    assert _prio(3, 1, 5, meta=True) == 49.0
    assert _prio(10_000, 0, 10_000) == pytest.approx(1.0, rel=1e-3)
    assert _prio(0, 10_000, 10_000) == pytest.approx(0.0, abs=1e-3)
    assert _prio(0, 0, 10_000) == pytest.approx(0.0, abs=1e-3)
    assert _prio(5_000, 5_000, 10_000) == pytest.approx(0.25, rel=1e-3)
    assert Params().unseen_priority == 5.0625


def test_unseen_statements_get_the_prior():
    votes = Votes.from_arrays([1, 2], [10, 10], [1, -1])
    res = run_analysis(
        votes,
        Moderation(meta=frozenset({12})),
        statements=[10, 11, 12],
        params=Params(bootstrap_replicates=0),
    )
    assert res.priorities[11] == 5.0625
    assert res.priorities[12] == 49.0
    w = routing_weights([10, 11, 99], res.to_dict()["priorities"])
    assert w[1] == 5.0625 and w[2] == 5.0625


def test_draw_weighted_frequencies():
    rng = np.random.default_rng(0)
    cands = ["a", "b", "c", "d"]
    weights = np.array([1.0, 2.0, 3.0, 14.0])
    n = 100_000
    draws = [draw_weighted(cands, weights, rng) for _ in range(n)]
    counts = np.array([draws.count(c) for c in cands])
    expected = n * weights / weights.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.0  # 3 degrees of freedom: p ~ 2e-4
    assert draw_weighted([], [], rng) is None
    assert draw_weighted(["x"], [0.0], rng) == "x"
    with pytest.raises(ValueError):
        draw_weighted(["x"], [-1.0], rng)


def test_bridging_is_comparable_across_group_counts():
    two = np.zeros((3, 2, 1))
    two[0, :, 0] = 8
    two[2, :, 0] = 2  # 8 agree of 10 in each group
    four = np.concatenate([two, two], axis=1)
    assert bridging_scores(two)[0] == pytest.approx(bridging_scores(four)[0])
    assert group_informed_consensus(four)[0] < group_informed_consensus(two)[0]
    assert bridging_scores(two)[0] == pytest.approx(group_informed_consensus(two)[0] ** 0.5)


def test_divisive():
    c = np.zeros((3, 2, 3))
    c[0, 0, 0], c[1, 1, 0] = 10, 10  # group 0 agrees, group 1 disagrees: divisive
    c[0, :, 1] = 10  # both agree: not divisive
    c[0, 0, 2], c[1, 1, 2] = 1, 1  # too few votes: not eligible
    d = divisiveness(c, np.zeros(3, bool), min_votes=3)
    assert d[0] > 0.5 and d[1] == pytest.approx(0.0) and np.isnan(d[2])


def test_one_organisation_one_voice():
    # org A: 3 members agree; org B: 1 member disagrees; participant 9: no org, disagrees
    p = [1, 2, 3, 4, 9]
    s = [0, 0, 0, 0, 0]
    v = [1, 1, 1, -1, -1]
    res = run_analysis(
        Votes.from_arrays(p, s, v),
        organisation_of={1: "A", 2: "A", 3: "A", 4: "B"},
        params=Params(bootstrap_replicates=0),
    )
    org = res.to_dict()["organisations"]
    assert "method" in org
    one = org["one_voice"]["0"]
    assert one["agree"] == pytest.approx(1.0)
    assert one["disagree"] == pytest.approx(2.0)
    assert one["voices"] == 3
    assert org["organisations"]["A"]["votes"]["0"] == [3, 0, 0]
    assert org["organisations"]["B"]["members"] == 1


def test_to_dict_has_the_contract_keys():
    rng = np.random.default_rng(2)
    n, m = 60, 12
    grp = rng.integers(0, 2, n)
    pref = rng.choice([-1, 1], size=(2, m))
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    p, s = p.ravel(), s.ravel()
    v = np.where(rng.random(p.size) < 0.1, -pref[grp[p], s], pref[grp[p], s])
    res = run_analysis(
        Votes.from_arrays(p, s, v),
        Moderation(rejected=frozenset({0})),
        params=Params(bootstrap_replicates=10),
    )
    d = res.to_dict()
    for key in (
        "participants",
        "statements",
        "in_conversation",
        "pca",
        "projections",
        "groups",
        "consensus",
        "group_informed_consensus",
        "bridging",
        "divisive",
        "priorities",
        "stability",
        "organisations",
        "params",
        "n_votes",
    ):
        assert key in d
    assert set(d["pca"]) >= {"statements", "center", "components"}
    assert len(d["pca"]["components"]) == 2
    assert d["k"] == 2
    g = d["groups"][0]
    assert set(g) >= {"id", "members", "representative"}
    for e in g["representative"]:
        assert set(e) >= {
            "statement",
            "direction",
            "p_success",
            "p_test",
            "repness",
            "repness_test",
        }
    assert res.group_of(p[0]) in {gg["id"] for gg in d["groups"]}
    assert res.group_of("nobody") is None
    st = d["stability"]
    assert set(st) >= {"participants", "statements", "groups", "method"}
    assert min(st["groups"].values()) > 0.8  # two clean groups: stable


def test_kmeans_bounds_give_identical_results():
    from deliberate.analysis.clustering import polis_kmeans

    rng = np.random.default_rng(4)
    for trial in range(6):
        n = int(rng.integers(50, 3000))
        pts = np.concatenate(
            [rng.normal(c, 0.7, size=(n // 3, 2)) for c in ((0, 0), (3, 1), (-2, 2))]
        )
        if trial % 2:
            pts = np.round(pts, 1)  # many identical points and exact ties
        w = rng.integers(1, 5, pts.shape[0]).astype(float)
        for k in (2, 5, 100):
            a = polis_kmeans(pts, k, 100, weights=w, use_bounds=False)
            b = polis_kmeans(pts, k, 100, weights=w, use_bounds=True)
            assert np.array_equal(a.labels, b.labels)
            assert np.array_equal(a.ids, b.ids)
            assert np.allclose(a.centers, b.centers, rtol=0, atol=0)


def test_sparse_pca_route_matches_gram_route():
    from deliberate.analysis.pca import fit_pca

    rng = np.random.default_rng(7)
    n, m = 400, 60
    grp = rng.integers(0, 3, n)
    pref = rng.choice([-1, 0, 1], size=(3, m))
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    p, s = p.ravel(), s.ravel()
    keep = rng.random(p.size) < 0.3
    v = np.where(rng.random(p.size) < 0.25, rng.choice([-1, 0, 1], p.size), pref[grp[p], s])
    votes = Votes.from_arrays(p[keep], s[keep], v[keep])
    mod_out = np.zeros(votes.n_cols, bool)
    mod_out[3] = True
    dense = fit_pca(votes, mod_out)
    sparse = fit_pca(votes, mod_out, gram_max_statements=0)
    np.testing.assert_allclose(sparse.components, dense.components, atol=1e-7)
    np.testing.assert_allclose(sparse.eigenvalues, dense.eigenvalues, rtol=1e-9)
    res_a = run_analysis(votes, params=Params(bootstrap_replicates=0))
    res_b = run_analysis(votes, params=Params(bootstrap_replicates=0, gram_cost_factor=0.0))
    assert res_a.k == res_b.k
    assert np.allclose(res_a.projections, res_b.projections, atol=1e-6)


def test_dense_subspace_iteration_matches_eigh():
    from deliberate.analysis.pca import _top_eig_dense

    rng = np.random.default_rng(11)
    a = rng.standard_normal((2000, 500)) @ np.diag(np.linspace(3, 0.1, 500))
    g = a.T @ a
    vals, vecs = _top_eig_dense(g, 2)
    ref_vals, ref_vecs = np.linalg.eigh(g)
    np.testing.assert_allclose(vals, ref_vals[::-1][:2], rtol=1e-10)
    for k in range(2):
        ref = ref_vecs[:, -1 - k]
        assert min(np.abs(vecs[:, k] - ref).max(), np.abs(vecs[:, k] + ref).max()) < 1e-8
