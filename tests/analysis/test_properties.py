"""Property tests (hypothesis) and hand-made small cases for the analysis engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deliberate.analysis import Moderation, Params, Votes, run_analysis
from deliberate.analysis.clustering import smooth_k

FAST = Params(bootstrap_replicates=8)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def conversations(draw, max_p=24, max_s=10):
    """(participant, statement, value, created) arrays without duplicate cells."""
    n_p = draw(st.integers(0, max_p))
    n_s = draw(st.integers(1, max_s))
    cells = (
        draw(
            st.lists(
                st.tuples(st.integers(0, max(n_p - 1, 0)), st.integers(0, n_s - 1)),
                unique=True,
                max_size=n_p * n_s,
            )
        )
        if n_p
        else []
    )
    vals = draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=len(cells), max_size=len(cells)))
    p = np.array([c[0] for c in cells], dtype=np.int64)
    s = np.array([c[1] for c in cells], dtype=np.int64)
    v = np.array(vals, dtype=np.int8)
    created = np.arange(len(cells), dtype=np.float64) * 10.0
    return p, s, v, created


@st.composite
def clustered(draw):
    """Conversations with some opinion structure (so groups exist) and random noise."""
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(20, 70))
    m = draw(st.integers(4, 14))
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    grp = rng.integers(0, k, n)
    pref = rng.choice([-1, 0, 1], size=(k, m))
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    p, s = p.ravel(), s.ravel()
    keep = rng.random(p.size) < rng.uniform(0.4, 1.0)
    noise = rng.random(p.size) < 0.2
    v = np.where(noise, rng.choice([-1, 0, 1], p.size), pref[grp[p], s])
    p, s, v = p[keep], s[keep], v[keep].astype(np.int8)
    created = rng.permutation(p.size).astype(np.float64)
    return p, s, v, created


def _run(p, s, v, created=None, **kw):
    votes = Votes.from_arrays(p, s, v, created)
    params = kw.pop("params", FAST)
    return run_analysis(votes, params=params, **kw)


# ------------------------------------------------------------------ determinism
@SETTINGS
@given(clustered())
def test_deterministic(conv):
    p, s, v, c = conv
    a = _run(p, s, v, c, seed=3)
    b = _run(p, s, v, c, seed=3)
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert json.dumps(a.state, sort_keys=True) == json.dumps(b.state, sort_keys=True)
    # ... and with state
    a2 = _run(p, s, v, c, seed=3, state=a.state)
    b2 = _run(p, s, v, c, seed=3, state=json.loads(json.dumps(b.state)))
    assert json.dumps(a2.to_dict(), sort_keys=True) == json.dumps(b2.to_dict(), sort_keys=True)


# ------------------------------------------------------------------ permutation invariance
@SETTINGS
@given(clustered(), st.integers(0, 2**31 - 1))
def test_permuting_participants_and_events_changes_only_ids(conv, seed):
    p, s, v, c = conv
    rng = np.random.default_rng(seed)
    a = _run(p, s, v, c)
    # relabel participants with an arbitrary bijection, statements with an increasing one,
    # and shuffle the event arrays (timestamps define the order)
    pmap = rng.permutation(1000)[: p.max() + 1] + 5000 if p.size else np.zeros(0, int)
    smap = np.cumsum(rng.integers(1, 5, s.max() + 1)) if s.size else np.zeros(0, int)
    order = rng.permutation(p.size)
    b = _run(pmap[p][order], smap[s][order], v[order], c[order])
    assert a.k == b.k
    inv_p = {int(pmap[i]): i for i in range(pmap.size)}
    assert sorted(sorted(m) for m in a.groups.values()) == sorted(
        sorted(inv_p[x] for x in m) for m in b.groups.values()
    )
    da, db = a.to_dict(), b.to_dict()
    for pid, xy in da["projections"].items():
        assert db["projections"][str(int(pmap[int(pid)]))] == pytest.approx(xy, abs=1e-9)
    for key in ("group_informed_consensus", "bridging", "priorities"):
        for sid, val in da[key].items():
            assert db[key][str(int(smap[int(sid)]))] == pytest.approx(val, rel=1e-9)
    assert [int(smap[x]) for x in da["consensus"]["agree"]] == db["consensus"]["agree"]
    assert [int(smap[x]) for x in da["divisive"]] == db["divisive"]


@SETTINGS
@given(clustered(), st.integers(0, 2**31 - 1))
def test_permuting_statements_keeps_the_map(conv, seed):
    """An arbitrary statement relabelling permutes the columns: the map is unchanged."""
    p, s, v, c = conv
    if not s.size:
        return
    rng = np.random.default_rng(seed)
    smap = rng.permutation(s.max() + 1)
    a = _run(p, s, v, c, params=Params(bootstrap_replicates=0))
    b = _run(p, smap[s], v, c, params=Params(bootstrap_replicates=0))
    da, db = a.to_dict(), b.to_dict()
    for pid, xy in da["projections"].items():
        assert db["projections"][pid] == pytest.approx(xy, abs=1e-7)
    ea = da["statement_stats"]
    eb = db["statement_stats"]
    for sid, st_a in ea.items():
        assert eb[str(int(smap[int(sid)]))]["extremity"] == pytest.approx(
            st_a["extremity"], abs=1e-7
        )


# ------------------------------------------------------------------ bounds
def _check_bounds(d: dict) -> None:
    for val in d["bridging"].values():
        assert 0.0 <= val <= 1.0
    for val in d["group_informed_consensus"].values():
        assert 0.0 < val <= 1.0
    for val in d["priorities"].values():
        assert val > 0
    for val in d["divisiveness"].values():
        assert 0.0 <= val <= 1.0
    for g in d["groups"]:
        for e in g["representative"]:
            assert 0.0 <= e["p_success"] <= 1.0
            assert e["direction"] in ("agree", "disagree")
    for lst in d["consensus_details"].values():
        for e in lst:
            assert 0.0 <= e["p_success"] <= 1.0
    st_ = d["stability"]
    if st_ is not None:
        for f in list(st_["participants"].values()) + list(st_["groups"].values()):
            assert 0.0 <= f <= 1.0
        for sid, iv in st_["statements"].items():
            assert 0.0 <= iv["consensus_frequency"] <= 1.0
            for name, point in (
                ("gac", d["group_informed_consensus"][sid]),
                ("bridging", d["bridging"][sid]),
            ):
                lo, hi = iv[name]
                assert lo <= point + 1e-12 and point <= hi + 1e-12
                assert 0.0 <= lo <= hi <= 1.0
            lo, hi = iv["agree_share"]
            assert 0.0 <= lo <= hi <= 1.0


@SETTINGS
@given(clustered())
def test_bounds_structured(conv):
    _check_bounds(_run(*conv).to_dict())


@SETTINGS
@given(conversations())
def test_bounds_and_no_crash_random(conv):
    p, s, v, c = conv
    mod = Moderation(rejected=frozenset({1}), meta=frozenset({2}))
    res = _run(p, s, v, c, moderation=mod, organisation_of={i: i % 3 for i in range(30)})
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    json.dumps(res.state)
    _check_bounds(d)
    assert d["participants"] == len(set(p.tolist()))
    assert d["statements"] == len(set(s.tolist()))


# ------------------------------------------------------------------ passes vs unseen
def test_pass_and_unseen_are_distinct():
    rng = np.random.default_rng(1)
    n, m = 30, 8
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    p, s = p.ravel(), s.ravel()
    v = rng.choice([-1, 1], p.size).astype(np.int8)
    keep = np.ones(p.size, bool)
    keep[(p == 0) & (s == 3)] = False  # participant 0 has not seen statement 3
    base = _run(p[keep], s[keep], v[keep], params=Params(bootstrap_replicates=0))
    with_pass = _run(
        np.append(p[keep], 0),
        np.append(s[keep], 3),
        np.append(v[keep], 0),
        params=Params(bootstrap_replicates=0),
    )
    b, w = base.to_dict(), with_pass.to_dict()
    assert w["statement_stats"]["3"]["seen"] == b["statement_stats"]["3"]["seen"] + 1
    assert w["statement_stats"]["3"]["pass"] == b["statement_stats"]["3"]["pass"] + 1
    assert w["statement_stats"]["3"]["agree"] == b["statement_stats"]["3"]["agree"]
    assert w["user_vote_counts"]["0"] == b["user_vote_counts"]["0"] + 1
    assert w["n_votes"] == b["n_votes"] + 1
    # a pass is a value (0) in the matrix: it moves the column mean towards 0
    j = b["pca"]["statements"].index(3)
    cb, cw = b["pca"]["center"][j], w["pca"]["center"][j]
    assert cw == pytest.approx(cb * (n - 1) / n)
    # GAC counts passes in S: it goes down for the pass
    assert (
        w["group_informed_consensus"]["3"] < b["group_informed_consensus"]["3"] or b["k"] != w["k"]
    )


# ------------------------------------------------------------------ latest vote wins
def test_latest_vote_wins_by_created_then_position():
    p = [1, 1, 1, 2, 2]
    s = [7, 7, 7, 7, 7]
    v = [1, -1, 0, 1, -1]
    created = [30, 10, 30, 5, 5]  # p1: two at 30 -> the later position (0 = pass) wins
    votes = Votes.from_arrays(p, s, v, created)
    dense = votes.to_dense()
    ri = votes.row_index()
    assert dense[ri[1], 0] == 0
    assert dense[ri[2], 0] == -1  # equal created: later position wins
    import datetime

    base = datetime.datetime(2025, 1, 1)
    stamps = [base + datetime.timedelta(seconds=x) for x in created]
    assert np.array_equal(Votes.from_arrays(p, s, v, stamps).to_dense(), dense, equal_nan=True)
    votes = Votes.from_arrays(p, s, v)  # no timestamps: the last event wins
    assert votes.to_dense()[votes.row_index()[1], 0] == 0


def test_rows_in_order_of_first_appearance_columns_ascending():
    votes = Votes.from_arrays([9, 3, 9, 5], [4, 2, 1, 4], [1, 1, 1, 1], [3.0, 1.0, 2.0, 4.0])
    assert votes.participant_ids.tolist() == [3, 9, 5]
    assert votes.statement_ids.tolist() == [1, 2, 4]


def test_string_ids_and_bad_values():
    votes = Votes.from_arrays(["a", "b", "a"], ["x", "x", "y"], [1, -1, 0])
    res = run_analysis(votes, params=FAST)
    assert res.to_dict()["participants"] == 2
    with pytest.raises(ValueError):
        Votes.from_arrays([1], [1], [2])
    with pytest.raises(ValueError):
        Votes.from_arrays([1, 2], [1], [1, 1])


# ------------------------------------------------------------------ small hand-made cases
SMALL = {
    "empty": ([], [], []),
    "one participant": ([1, 1, 1], [1, 2, 3], [1, -1, 0]),
    "one statement": (list(range(20)), [0] * 20, [1, -1] * 10),
    "all agree": ([i for i in range(20) for _ in range(5)], list(range(5)) * 20, [1] * 100),
    "all pass": ([i for i in range(20) for _ in range(5)], list(range(5)) * 20, [0] * 100),
    "two participants": ([1, 1, 2, 2], [1, 2, 1, 2], [1, -1, -1, 1]),
    "identical participants": (
        [i for i in range(30) for _ in range(4)],
        list(range(4)) * 30,
        [1, -1, 0, 1] * 30,
    ),
}


@pytest.mark.parametrize("case", list(SMALL))
def test_small_cases(case):
    p, s, v = SMALL[case]
    res = run_analysis(
        Votes.from_arrays(
            np.array(p, dtype=np.int64), np.array(s, dtype=np.int64), np.array(v, dtype=np.int8)
        ),
        params=FAST,
        organisation_of={},
    )
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    json.dumps(res.state)
    _check_bounds(d)
    assert d["participants"] == len(set(p))
    if case in ("empty", "one participant", "all agree", "all pass", "identical participants"):
        # fewer than two distinct positions: zero groups, still a well-formed result
        assert d["groups"] == []
        assert d["k"] == 0
    # state round-trips
    res2 = run_analysis(res_votes(p, s, v), state=json.loads(json.dumps(res.state)), params=FAST)
    json.dumps(res2.to_dict())


def res_votes(p, s, v):
    return Votes.from_arrays(
        np.array(p, dtype=np.int64), np.array(s, dtype=np.int64), np.array(v, dtype=np.int8)
    )


def test_all_moderated_out():
    p = [i for i in range(20) for _ in range(3)]
    s = [0, 1, 2] * 20
    v = np.random.default_rng(0).choice([-1, 0, 1], 60)
    res = run_analysis(
        res_votes(p, s, v), Moderation(rejected=frozenset({0, 1}), meta=frozenset({2})), params=FAST
    )
    d = res.to_dict()
    assert d["groups"] == []
    assert d["consensus"] == {"agree": [], "disagree": []}
    assert d["priorities"]["2"] == 49.0
    assert all(x == 0 for x in d["pca"]["components"][0])


# ------------------------------------------------------------------ statefulness
def test_state_in_conv_grows_and_signs_and_ids_are_stable():
    rng = np.random.default_rng(5)
    n, m = 120, 20
    grp = rng.integers(0, 3, n)
    pref = rng.choice([-1, 1], size=(3, m))
    p, s = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    p, s = p.ravel(), s.ravel()
    v = np.where(rng.random(p.size) < 0.15, -pref[grp[p], s], pref[grp[p], s]).astype(np.int8)
    created = rng.permutation(p.size).astype(float)
    order = np.argsort(created)
    p, s, v, created = p[order], s[order], v[order], created[order]
    state = None
    prev_in: set = set()
    prev_comps = None
    results = []
    for cut in (300, 800, 1500, p.size, p.size):
        res = run_analysis(
            Votes.from_arrays(p[:cut], s[:cut], v[:cut], created[:cut]), state=state, params=FAST
        )
        d = res.to_dict()
        in_conv = set(d["in_conversation"])
        assert prev_in <= in_conv  # only grows
        prev_in = in_conv
        comps = dict(
            zip(d["pca"]["statements"], zip(*d["pca"]["components"], strict=True), strict=True)
        )
        if prev_comps is not None:
            common = [k for k in comps if k in prev_comps]
            for c in range(2):
                dot = sum(comps[k][c] * prev_comps[k][c] for k in common)
                assert dot >= 0  # no flip between ticks
        prev_comps = comps
        state = json.loads(json.dumps(res.state))
        results.append(res)
    # the same votes again with the state: same group ids; membership may only move at the
    # margin (warm-started k-means continues from where the 0.01 stopping rule left it, as Pol.is)
    a, b = results[-2], results[-1]
    assert a.group_ids == b.group_ids
    ma, mb = a.membership(), b.membership()
    assert sum(ma[x] == mb.get(x) for x in ma) >= 0.95 * len(ma)


def test_k_smoother_needs_four_consecutive_wins():
    st_ = smooth_k(2, None)
    assert st_["smoothed_k"] == 2
    for i in range(3):
        st_ = smooth_k(3, st_)
        assert st_["smoothed_k"] == 2, i
    st_ = smooth_k(3, st_)
    assert st_["smoothed_k"] == 3
    st_ = smooth_k(4, st_)
    st_ = smooth_k(3, st_)
    assert st_["smoothed_k"] == 3 and st_["last_k_count"] == 1
    # a smoothed k no longer allowed is reset
    assert (
        smooth_k(2, {"last_k": 5, "last_k_count": 9, "smoothed_k": 5}, allowed=[2, 3])["smoothed_k"]
        == 2
    )


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40), st.integers(0, 9), st.sampled_from([-1, 0, 1]), st.integers(0, 5)
        ),
        max_size=300,
    ),
    st.sampled_from([7, 50, 4_000_000]),
    st.booleans(),
)
def test_from_arrays_matches_a_naive_latest_wins(events, chunk_cells, with_created):
    """Blocks, chunked duplicate detection and packing agree with a plain dictionary."""
    import deliberate.analysis.matrix as matrix_module

    old = matrix_module._CHUNK_CELLS
    matrix_module._CHUNK_CELLS = chunk_cells  # many small blocks exercise the sort paths
    try:
        p = np.array([e[0] for e in events], dtype=np.int64)
        s = np.array([e[1] * 7 for e in events], dtype=np.int64)
        v = np.array([e[2] for e in events], dtype=np.int8)
        c = np.array([e[3] for e in events], dtype=np.float64) if with_created else None
        votes = Votes.from_arrays(p, s, v, c)
    finally:
        matrix_module._CHUNK_CELLS = old
    expected: dict = {}
    best: dict = {}
    for i, (pp, ss, vv, cc) in enumerate(events):
        key = (pp, ss * 7)
        rank = (cc if with_created else 0, i)
        if key not in best or rank >= best[key]:
            best[key], expected[key] = rank, vv
    got = {
        (votes.participant_ids[r], votes.statement_ids[cc]): int(x)
        for r, cc, x in zip(
            votes.row.tolist(), votes.col.tolist(), votes.value.tolist(), strict=True
        )
    }
    assert got == expected
    assert votes.nnz == len(expected)
    # blocks cover the rows they claim
    for b in range(votes.block_ptr.size - 1):
        rows = votes.row[votes.block_ptr[b] : votes.block_ptr[b + 1]]
        assert np.all(rows // votes.block_rows == b)
