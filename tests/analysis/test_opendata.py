"""Group agreement with Pol.is on the real conversations of polis-opendata.

Pol.is's group-id column (participants-votes.csv) is the product of years of warm-started,
history-dependent updates (growing in-conversation set, base-cluster lineage, k smoother) and,
for the older conversations, of older versions of its math. A cold run cannot replay that
history, so we assert the floors we actually observe (measured with run_analysis cold, default
Params, 2026-11-26) rather than equality, and print the figures (run with ``-s`` to see them):

conversation                 Pol.is k  our k   ARI (participants clustered by both)
15-per-hour-seattle              2       2     1.000
brexit-consensus                 2       5     0.269
canadian-electoral-reform        2       2     0.930
football-concussions             2       4     0.100
london.youth.policing            3       2    -0.019
scoop-hivemind.taxes             2       2     0.925
scoop-hivemind.ubi               4       2     0.095

With Pol.is's single cold start instead (``Params(cold_restarts=0)``) the ARIs are 0.499,
0.552, 0.171, 0.115, -0.019, 0.813, 0.061 (mean 0.31 instead of 0.47) and k matches on 2 of 7
instead of 3: Pol.is's own partitions sit near the lowest-inertia k-means optimum (its history
of warm starts converged there), which one cold start from "the first k points" often misses.
Football and ubi differ mostly in who is clustered: Pol.is clustered 1434 and 234 participants
(many with fewer than 7 votes, admitted by its history), a cold run admits 592 and 174.
"""

from __future__ import annotations

import pytest

from deliberate.analysis import Params, run_analysis

from .helpers import OPENDATA_NAMES, adjusted_rand_index, export

# name: (Pol.is k, our k, ARI floor a bit below what we measure)
OBSERVED = {
    "15-per-hour-seattle": (2, 2, 0.95),
    "brexit-consensus": (2, 5, 0.22),
    "canadian-electoral-reform": (2, 2, 0.88),
    "football-concussions": (2, 4, 0.05),
    "london.youth.policing": (3, 2, -0.10),
    "scoop-hivemind.taxes": (2, 2, 0.88),
    "scoop-hivemind.ubi": (4, 2, 0.04),
}


@pytest.mark.parametrize("name", OPENDATA_NAMES)
def test_groups_against_polis(name):
    conv, votes, mod = export(name)
    res = run_analysis(votes, mod, params=Params(bootstrap_replicates=0))
    polis = {p: g for p, g in conv.polis_groups.items() if g is not None}
    polis_k = len(set(polis.values()))
    mem = res.membership()
    common = [p for p in polis if p in mem]
    ari = adjusted_rand_index([polis[p] for p in common], [mem[p] for p in common])
    print(
        f"\n{name}: Pol.is k={polis_k} ours k={res.k} ARI={ari:.3f} "
        f"(clustered: Pol.is {len(polis)}, ours {len(mem)}, both {len(common)})"
    )
    exp_polis_k, exp_k, floor = OBSERVED[name]
    assert polis_k == exp_polis_k
    assert res.k == exp_k
    assert 2 <= res.k <= 5
    assert ari >= floor
    # everyone Pol.is clustered with >= 7 votes is in our in-conversation set too
    counts = dict(zip(votes.participant_ids.tolist(), votes.row_counts().tolist(), strict=True))
    in_conv = set(res.to_dict()["in_conversation"])
    assert all(p in in_conv for p in polis if counts.get(p, 0) >= 7)


@pytest.mark.parametrize("name", OPENDATA_NAMES)
def test_latest_vote_wins_matches_participants_votes_csv(name):
    """votes.csv is the full history (duplicates included); our latest-wins matrix must equal
    Pol.is's own latest-wins view, participants-votes.csv, cell for cell."""
    import csv

    import numpy as np

    from .helpers import OPENDATA

    conv, votes, _ = export(name)
    assert conv.value.size > votes.nnz  # the history does hold superseded votes
    with open(OPENDATA / name / "participants-votes.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    first = rows[0].index("n-disagree") + 1
    tids = [int(x) for x in rows[0][first:]]
    ri, ci = votes.row_index(), votes.col_index()
    dense = votes.to_dense()
    expected = np.full(dense.shape, np.nan)
    for r in rows[1:]:
        for t, cell in zip(tids, r[first:], strict=True):
            if cell != "":
                expected[ri[int(r[0])], ci[t]] = int(cell)
    assert np.array_equal(dense, expected, equal_nan=True)


def test_mean_agreement_over_all_conversations():
    """Across the seven conversations, mean ARI (measured 0.47) and k agreement (3 of 7)."""
    aris, same_k = [], 0
    for name in OPENDATA_NAMES:
        conv, votes, mod = export(name)
        res = run_analysis(votes, mod, params=Params(bootstrap_replicates=0))
        polis = {p: g for p, g in conv.polis_groups.items() if g is not None}
        mem = res.membership()
        common = [p for p in polis if p in mem]
        aris.append(adjusted_rand_index([polis[p] for p in common], [mem[p] for p in common]))
        same_k += res.k == len(set(polis.values()))
    print(f"\nmean ARI {sum(aris) / len(aris):.3f}, same k {same_k}/{len(aris)}")
    assert sum(aris) / len(aris) >= 0.42
    assert same_k >= 3
