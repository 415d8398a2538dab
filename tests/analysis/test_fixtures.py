"""Golden tests against Pol.is's own math output (spec §10.2), on the three math fixtures.

Sign: our votes are agree = +1; math-pca2.json is Pol.is sign (agree = -1). Following spec §9.3
we compare ``center`` with -center, ``comps[k]`` with s_k * comps[k] where s_k aligns signs,
and projection-like values with -s_k * the fixture value; counts and statistics directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from deliberate.analysis import Params, run_analysis
from deliberate.analysis.clustering import max_group_k, polis_kmeans, silhouette
from deliberate.analysis.pca import (
    centred_values,
    fit_pca,
    project_participants,
    project_statements,
)
from deliberate.analysis.stats import (
    consensus_lists,
    group_counts,
    group_informed_consensus,
    priorities,
    select_repness,
)

from .helpers import (
    BAD_FIXTURE,
    FIXTURE_NAMES,
    adjusted_rand_index,
    fixture,
    fixture_groups,
    partition,
)

NO_BOOT = Params(bootstrap_replicates=0)
ALL = pytest.mark.parametrize("name", FIXTURE_NAMES)
CLEAN = pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if n != BAD_FIXTURE])


def _masks(votes, mod):
    sids = votes.statement_ids.tolist()
    mod_out = np.array([s in mod.mod_out for s in sids])
    is_meta = np.array([s in mod.meta for s in sids])
    return mod_out, is_meta


def _pca(name):
    conv, math, votes, mod = fixture(name)
    mod_out, _ = _masks(votes, mod)
    pca = fit_pca(votes, mod_out)
    return pca, centred_values(votes, pca.center, mod_out), mod_out


def _signs(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return np.array([1.0 if ours[k] @ theirs[k] >= 0 else -1.0 for k in range(2)])


def _fixture_group_of_row(votes, math):
    ri = votes.row_index()
    g = np.full(votes.n_rows, -1, np.int64)
    for gi, members in enumerate(fixture_groups(math)):
        for p in members:
            g[ri[p]] = gi
    return g


# ------------------------------------------------------------------ 1-2: ingestion, moderation
@ALL
def test_columns_are_fixture_tids(name):
    _, math, votes, _ = fixture(name)
    assert votes.statement_ids.tolist() == math["tids"]
    assert votes.n_cols == math["n-cmts"]


@ALL
def test_user_vote_counts_and_sign(name):
    conv, math, votes, _ = fixture(name)
    counts = dict(zip(votes.participant_ids.tolist(), votes.row_counts().tolist(), strict=True))
    expected = {int(k): v for k, v in math["user-vote-counts"].items()}
    if name == BAD_FIXTURE:
        expected.pop(50)  # pid 50's votes are missing from votes.json (known API problem)
    assert counts == expected
    # agree = +1: our agree count per statement equals comments.json agree_count
    agree = np.bincount(votes.col, weights=votes.value > 0, minlength=votes.n_cols)
    disagree = np.bincount(votes.col, weights=votes.value < 0, minlength=votes.n_cols)
    ci = votes.col_index()
    import json

    with open(__import__("pathlib").Path(conv.path) / "comments.json") as fh:
        comments = json.load(fh)
    for c in comments:
        tid = c.get("tid", c.get("statement_id"))
        if tid in ci:
            assert agree[ci[tid]] == c["agree_count"]
            assert disagree[ci[tid]] == c["disagree_count"]


@ALL
def test_moderation_sets(name):
    _, math, _, mod = fixture(name)
    assert set(mod.mod_out) == set(math["mod-out"])
    assert set(mod.mod_in) == set(math["mod-in"])
    assert set(mod.meta) == set(math["meta-tids"])


# ------------------------------------------------------------------ 3-6: PCA level
@CLEAN
def test_center(name):
    _, math, _, _ = fixture(name)
    pca, _, _ = _pca(name)
    np.testing.assert_allclose(pca.center, -np.asarray(math["pca"]["center"]), rtol=0, atol=1e-9)


@CLEAN
def test_components_and_variance(name):
    _, math, votes, _ = fixture(name)
    pca, w, _ = _pca(name)
    theirs = np.asarray(math["pca"]["comps"])
    s = _signs(pca.components, theirs)
    np.testing.assert_allclose(pca.components, s[:, None] * theirs, rtol=0, atol=1e-6)
    # sign-free: the variance along the fixture's components equals our eigenvalues
    for k in range(2):
        cv = np.bincount(votes.row, weights=w * theirs[k][votes.col], minlength=votes.n_rows)
        assert pca.eigenvalues[k] == pytest.approx(float(cv @ cv), rel=1e-6)


@CLEAN
def test_comment_projection_and_extremity(name):
    _, math, _, _ = fixture(name)
    pca, _, _ = _pca(name)
    s = _signs(pca.components, np.asarray(math["pca"]["comps"]))
    proj, ext = project_statements(pca.center, pca.components)
    theirs = np.asarray(math["pca"]["comment-projection"])
    np.testing.assert_allclose(proj, -s[:, None] * theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ext, math["pca"]["comment-extremity"], rtol=0, atol=1e-6)


@CLEAN
def test_participant_projections_match_base_clusters(name):
    _, math, votes, _ = fixture(name)
    pca, w, mod_out = _pca(name)
    s = _signs(pca.components, np.asarray(math["pca"]["comps"]))
    proj = project_participants(votes, pca.center, pca.components, mod_out)
    ri = votes.row_index()
    bc = math["base-clusters"]
    for members, x, y in zip(bc["members"], bc["x"], bc["y"], strict=True):
        m = proj[[ri[p] for p in members]].mean(axis=0)
        np.testing.assert_allclose(m, -s * np.array([x, y]), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ 7: groups from stored base
@ALL
def test_group_k_and_partition_from_stored_base_clusters(name):
    _, math, _, _ = fixture(name)
    bc = math["base-clusters"]
    order = np.argsort(bc["id"], kind="stable")  # cold start in ascending base id order
    ids = np.asarray(bc["id"])[order]
    pts = np.stack([np.asarray(bc["x"]), np.asarray(bc["y"])], axis=1)[order]
    weights = np.asarray(bc["count"], dtype=float)[order]
    sils = {}
    cls = {}
    for k in range(2, max_group_k(ids.size) + 1):
        cls[k] = polis_kmeans(pts, k, 20, weights=weights)
        sils[k] = silhouette(pts, cls[k].labels)
    best = max(sils.values())
    k = max(kk for kk in sils if sils[kk] == best)
    assert k == len(math["group-clusters"])
    ours = partition(ids[cls[k].labels == i].tolist() for i in range(k))
    assert ours == partition(g["members"] for g in math["group-clusters"])
    # group centres = weighted means (sign-free here: the stored x/y are used as given)
    for g in math["group-clusters"]:
        i = [j for j in range(k) if set(ids[cls[k].labels == j].tolist()) == set(g["members"])][0]
        np.testing.assert_allclose(cls[k].centers[i], g["center"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ 8: end to end
# Stateless (cold) runs: Pol.is's group k-means cold-starts from the first k base centres in id
# order, and Pol.is's base ids come from the conversation's history. Cold, our ids follow first
# appearance: that reproduces the exact partition on two fixtures; on 25ptpt it lands in another
# local optimum (silhouette 0.432 vs Pol.is's 0.4445). Given the fixture's base clusters as the
# previous state (what a warm update sees), all three partitions are exact.
COLD_ARI_FLOOR = {
    "below-100-ptpts": 1.0,
    "25ptpt-3gp-no-strict-with-meta": 0.6,
    "50ptpt-3gp-strict-no-meta": 1.0,
}


@ALL
def test_end_to_end_partition_cold(name):
    _, math, votes, mod = fixture(name)
    state = {"version": 1, "in_conv": math["in-conv"]}
    res = run_analysis(votes, mod, state=state, params=NO_BOOT)
    assert set(res.to_dict()["in_conversation"]) == set(math["in-conv"])
    assert res.k == len(math["group-clusters"])
    truth = {p: gi for gi, m in enumerate(fixture_groups(math)) for p in m}
    mem = res.membership()
    ps = sorted(truth)
    ari = adjusted_rand_index([truth[p] for p in ps], [mem[p] for p in ps])
    print(f"{name}: cold k={res.k} ARI={ari:.4f}")
    assert ari >= COLD_ARI_FLOOR[name]
    if COLD_ARI_FLOOR[name] == 1.0:
        assert partition(res.groups.values()) == partition(fixture_groups(math))


@ALL
def test_end_to_end_partition_warm_from_fixture_base_clusters(name):
    _, math, votes, mod = fixture(name)
    bc = math["base-clusters"]
    state = {
        "version": 1,
        "in_conv": math["in-conv"],
        "base_clusters": {"id": bc["id"], "members": bc["members"]},
    }
    res = run_analysis(votes, mod, state=state, params=NO_BOOT)
    assert res.k == len(math["group-clusters"])
    assert partition(res.groups.values()) == partition(fixture_groups(math))


# ------------------------------------------------------------------ 9-10: counts, GAC
@ALL
def test_votes_base_and_group_votes(name):
    _, math, votes, _ = fixture(name)
    ri = votes.row_index()
    bc = math["base-clusters"]
    order = np.argsort(bc["id"], kind="stable")
    base_of_row = np.full(votes.n_rows, -1, np.int64)
    for pos, b in enumerate(order.tolist()):
        for p in bc["members"][b]:
            base_of_row[ri[p]] = pos
    vb = group_counts(votes, base_of_row, len(order))
    ci = votes.col_index()
    for tid, d in math["votes-base"].items():
        j = ci[int(tid)]
        assert vb[0, :, j].tolist() == d["A"]
        assert vb[1, :, j].tolist() == d["D"]
        assert vb.sum(axis=0)[:, j].tolist() == d["S"]
    g = _fixture_group_of_row(votes, math)
    gv = group_counts(votes, g, len(math["group-clusters"]))
    for gi, grp in enumerate(math["group-clusters"]):
        stored = math["group-votes"][str(grp["id"])]
        assert stored["n-members"] == int((g == gi).sum())
        for tid, d in stored["votes"].items():
            j = ci[int(tid)]
            assert [gv[0, gi, j], gv[1, gi, j], gv[:, gi, j].sum()] == [d["A"], d["D"], d["S"]]


@ALL
def test_group_informed_consensus(name):
    _, math, votes, _ = fixture(name)
    g = _fixture_group_of_row(votes, math)
    gac = group_informed_consensus(group_counts(votes, g, len(math["group-clusters"])))
    ci = votes.col_index()
    for tid, v in math["group-aware-consensus"].items():
        assert gac[ci[int(tid)]] == pytest.approx(v, rel=1e-9)


# ------------------------------------------------------------------ 11: repness
@ALL
def test_repness(name):
    _, math, votes, mod = fixture(name)
    mod_out, _ = _masks(votes, mod)
    g = _fixture_group_of_row(votes, math)
    gv = group_counts(votes, g, len(math["group-clusters"]))
    reps = select_repness(gv, mod_out, votes.statement_ids.tolist())
    for gi, grp in enumerate(math["group-clusters"]):
        stored = math["repness"][str(grp["id"])]
        ours = reps[gi]
        assert [e["statement"] for e in ours] == [e["tid"] for e in stored]
        for a, b in zip(ours, stored, strict=True):
            assert a["direction"] == b["repful-for"]
            assert a["n_success"] == b["n-success"]
            assert a["n_trials"] == b["n-trials"]
            assert a["p_success"] == pytest.approx(b["p-success"], rel=1e-6)
            assert a["p_test"] == pytest.approx(b["p-test"], rel=1e-6)
            assert a["repness"] == pytest.approx(b["repness"], rel=1e-6)
            assert a["repness_test"] == pytest.approx(b["repness-test"], rel=1e-6)
            assert a.get("best_agree", False) == b.get("best-agree", False)
            if "n-agree" in b:
                assert a["n_agree"] == b["n-agree"]


# ------------------------------------------------------------------ 12: consensus
@ALL
def test_consensus(name):
    _, math, votes, mod = fixture(name)
    mod_out, _ = _masks(votes, mod)
    allc = group_counts(votes, np.zeros(votes.n_rows, np.int64), 1)[:, 0]
    cons = consensus_lists(
        allc[0], allc[1], allc.sum(axis=0), mod_out, votes.statement_ids.tolist()
    )
    for d in ("agree", "disagree"):
        stored = math["consensus"][d]
        assert [e["statement"] for e in cons[d]] == [e["tid"] for e in stored]
        for a, b in zip(cons[d], stored, strict=True):
            assert (a["n_success"], a["n_trials"]) == (b["n-success"], b["n-trials"])
            assert a["p_success"] == pytest.approx(b["p-success"], rel=1e-9)
            assert a["p_test"] == pytest.approx(b["p-test"], rel=1e-9)


# ------------------------------------------------------------------ 13: priorities
@CLEAN
def test_priorities(name):
    _, math, votes, mod = fixture(name)
    mod_out, is_meta = _masks(votes, mod)
    g = _fixture_group_of_row(votes, math)
    tot = group_counts(votes, g, len(math["group-clusters"])).sum(axis=1)
    pca, _, _ = _pca(name)
    _, ext = project_statements(pca.center, pca.components)
    pr = priorities(tot[0], tot[1], tot.sum(axis=0), ext, is_meta)
    ci = votes.col_index()
    for tid, v in math["comment-priorities"].items():
        assert pr[ci[int(tid)]] == pytest.approx(v, rel=1e-9)


@ALL
def test_full_pipeline_matches_fixture_outputs(name):
    """run_analysis end to end reproduces repness, consensus and GAC (fixture in-conv + base)."""
    _, math, votes, mod = fixture(name)
    bc = math["base-clusters"]
    state = {
        "version": 1,
        "in_conv": math["in-conv"],
        "base_clusters": {"id": bc["id"], "members": bc["members"]},
    }
    res = run_analysis(votes, mod, state=state, params=NO_BOOT)
    d = res.to_dict()
    assert d["consensus"]["agree"] == [e["tid"] for e in math["consensus"]["agree"]]
    assert d["consensus"]["disagree"] == [e["tid"] for e in math["consensus"]["disagree"]]
    for tid, v in math["group-aware-consensus"].items():
        assert d["group_informed_consensus"][tid] == pytest.approx(v, rel=1e-9)
    # repness per group, matched by members
    fixture_sets = {
        frozenset(m): str(g["id"])
        for m, g in zip(fixture_groups(math), math["group-clusters"], strict=True)
    }
    for grp in d["groups"]:
        gid = fixture_sets[frozenset(grp["members"])]
        assert [e["statement"] for e in grp["representative"]] == [
            e["tid"] for e in math["repness"][gid]
        ]
