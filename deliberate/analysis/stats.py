"""Vote counts, representativeness, group-informed consensus and the consensus lists.

Counts are per (group, statement): ``A`` agrees, ``D`` disagrees, ``S`` seen (passes included),
always computed with one ``np.bincount`` over the votes (O(votes)). Sign: agree = +1.
"""

from __future__ import annotations

import numpy as np

from .matrix import Votes

__all__ = [
    "Z90",
    "group_counts",
    "prop_test",
    "two_prop_test",
    "select_repness",
    "group_informed_consensus",
    "consensus_lists",
]

Z90 = 1.2816  # Pol.is ``z-sig-90?`` threshold (one-sided 90 %), exactly as Pol.is writes it


def group_counts(
    votes: Votes, group_of_row: np.ndarray, n_groups: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Agree / disagree / pass counts per group and statement over the raw matrix.

    One ``np.bincount`` per chunk of votes over key = (category, group, column): O(votes).

    Parameters
    ----------
    group_of_row : (n_rows,) int, group index per participant, -1 for none (ignored).
    weights : (n_rows,) optional participant weights.

    Returns
    -------
    (3, n_groups, n_cols) array: [agree, disagree, pass]; int64 without weights.
    """
    n_cols = votes.n_cols
    size = 3 * n_groups * n_cols
    out = np.zeros(size, np.float64 if weights is not None else np.int64)
    if size == 0:
        return out.reshape(3, n_groups, n_cols)
    gor = np.asarray(group_of_row, dtype=np.int64)
    any_none = bool((gor < 0).any())
    for a, b in votes.entry_chunks(max(1 << 20, size)):
        r = votes.row[a:b]
        g = gor[r]
        # category 0 agree, 1 pass, 2 disagree (= 1 - value); reordered below
        key = ((1 - votes.value[a:b]).astype(np.int64) * n_groups + g) * n_cols + votes.col[a:b]
        if any_none:
            sel = g >= 0
            key = key[sel]
            r = r[sel]
        if weights is None:
            out += np.bincount(key, minlength=size)
        else:
            out += np.bincount(key, weights=weights[r], minlength=size)
    return out.reshape(3, n_groups, n_cols)[[0, 2, 1]]


def counts_with_total(
    votes: Votes, group_of_row: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group counts (3, n_groups, n_cols) and every participant's counts (3, n_cols), one pass."""
    both = group_counts(votes, np.asarray(group_of_row) + 1, n_groups + 1)
    return both[:, 1:, :], both.sum(axis=1)


def prop_test(succ: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Pol.is ``prop-test``: 2 sqrt(n + 1) ((succ + 1) / (n + 1) - 1/2)."""
    return 2.0 * np.sqrt(n + 1.0) * ((succ + 1.0) / (n + 1.0) - 0.5)


def two_prop_test(s1: np.ndarray, s2: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Pol.is ``two-prop-test`` with +1 on all four counts; 0 where the pooled rate is 1."""
    s1, s2, n1, n2 = (np.asarray(x, dtype=np.float64) + 1.0 for x in (s1, s2, n1, n2))
    p1, p2 = s1 / n1, s2 / n2
    pp = (s1 + s2) / (n1 + n2)
    den = np.sqrt(pp * (1.0 - pp) * (1.0 / n1 + 1.0 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(pp == 1.0, 0.0, (p1 - p2) / np.where(den == 0, 1.0, den))
    return z


def _comment_stats(na, nd, ns, NA, ND, NS) -> dict[str, np.ndarray]:
    pa = (na + 1.0) / (ns + 2.0)
    pd = (nd + 1.0) / (ns + 2.0)
    return {
        "na": na,
        "nd": nd,
        "ns": ns,
        "pa": pa,
        "pd": pd,
        "pat": prop_test(na, ns),
        "pdt": prop_test(nd, ns),
        "ra": pa / ((NA + 1.0) / (NS + 2.0)),
        "rd": pd / ((ND + 1.0) / (NS + 2.0)),
        "rat": two_prop_test(na, NA, ns, NS),
        "rdt": two_prop_test(nd, ND, ns, NS),
    }


def _finalize(j: int, s: dict[str, list], sid) -> dict:
    """Pol.is ``finalize-cmt-stats``: agree fields iff rat > rdt (strictly), else disagree."""
    if s["rat"][j] > s["rdt"][j]:
        return {
            "statement": sid,
            "n_success": int(s["na"][j]),
            "n_trials": int(s["ns"][j]),
            "p_success": s["pa"][j],
            "p_test": s["pat"][j],
            "repness": s["ra"][j],
            "repness_test": float(np.float32(s["rat"][j])),
            "direction": "agree",
        }
    return {
        "statement": sid,
        "n_success": int(s["nd"][j]),
        "n_trials": int(s["ns"][j]),
        "p_success": s["pd"][j],
        "p_test": s["pdt"][j],
        "repness": s["rd"][j],
        "repness_test": float(np.float32(s["rdt"][j])),
        "direction": "disagree",
    }


def select_repness(
    counts: np.ndarray, mod_out: np.ndarray, statement_ids: list, max_n: int = 5
) -> list[list[dict]]:
    """Representative statements per group, with Pol.is's exact selection rules (spec §5).

    Parameters
    ----------
    counts : (3, n_groups, n_cols) agree/disagree/pass counts over the group members. Pol.is
        uses the moderated matrix here; it differs from the raw one only on mod-out columns,
        which are skipped.
    mod_out : (n_cols,) bool.
    statement_ids : ids in column order.

    Returns
    -------
    One list per group of entries {statement, direction, n_success, n_trials, p_success, p_test,
    repness, repness_test (float32 like Pol.is), and on the best-agree entry best_agree/n_agree}.
    Quirks kept: the best-agree entry can come out as "disagree"; the cut to ``max_n`` happens
    before agrees are moved in front of disagrees.
    """
    a, d, p = (counts[i].astype(np.float64) for i in range(3))
    n_groups = a.shape[0]
    ns_all = a + d + p
    out: list[list[dict]] = []
    cols_a = np.flatnonzero(~mod_out)
    cols = cols_a.tolist()
    a_tot, d_tot, ns_tot = a.sum(0), d.sum(0), ns_all.sum(0)
    # every group's statistics at once (elementwise: the same values as group by group)
    sv_all = _comment_stats(a, d, ns_all, a_tot - a, d_tot - d, ns_tot - ns_all)
    st_all = {k: v.tolist() for k, v in sv_all.items()}
    for gi in range(n_groups):
        na, nd = a[gi], d[gi]
        sv = {k: v[gi] for k, v in sv_all.items()}
        st = {k: v[gi] for k, v in st_all.items()}
        pa, pat, ra, rat, rdt = st["pa"], st["pat"], st["ra"], st["rat"], st["rdt"]
        # sufficient statements, in column order (vectorised: the same comparisons)
        suff_mask = ((sv["rat"] > Z90) & (sv["pat"] > Z90)) | (
            (sv["rdt"] > Z90) & (sv["pdt"] > Z90)
        )
        suff_j = cols_a[suff_mask[cols_a]].tolist()
        best: dict | None = None
        if not suff_j:
            # no sufficient statement: the best by repness test, in column order (the
            # comparison is against the float32 repness_test of the current best)
            for j in cols:
                if best is None or max(rat[j], rdt[j]) > best["repness_test"]:
                    best = _finalize(j, st, statement_ids[j])
        # beats-best-agree, over the statements with an agree or a disagree (column order)
        p1 = (sv["ra"] * sv["rat"] * sv["pa"] * sv["pat"]).tolist()  # the same products
        p2 = (sv["pa"] * sv["pat"]).tolist()
        voted = cols_a[((na > 0) | (nd > 0))[cols_a]].tolist()
        best_agree: int | None = None
        for j in voted:
            if best_agree is not None:
                b = best_agree
                win = p1[j] > p1[b] if ra[b] > 1.0 else p2[j] > p2[b]
            else:
                win = pat[j] > Z90 or (ra[j] > 1.0 and pa[j] > 0.5)
            if win:
                best_agree = j
        if best_agree is not None:
            head = [
                dict(
                    _finalize(best_agree, st, statement_ids[best_agree]),
                    best_agree=True,
                    n_agree=int(st["na"][best_agree]),
                )
            ]
        elif best is not None:
            head = [best]
        else:
            head = []
        if not suff_j:
            out.append(head)
            continue
        # the other sufficient statements by repness x repness_test x p_success x p_test,
        # descending, stable (the same values as computed from the finalized entries)
        agree_dir = sv["rat"] > sv["rdt"]
        rt32 = np.where(agree_dir, sv["rat"], sv["rdt"]).astype(np.float32).astype(np.float64)
        key = (
            np.where(agree_dir, sv["ra"], sv["rd"])
            * rt32
            * np.where(agree_dir, sv["pa"], sv["pd"])
            * np.where(agree_dir, sv["pat"], sv["pdt"])
        )
        rest_j = np.asarray([j for j in suff_j if j != best_agree], dtype=np.int64)
        need = max_n - (1 if best_agree is not None else 0)
        if rest_j.size:
            rest_j = rest_j[np.argsort(-key[rest_j], kind="stable")][: max(need, 0)]
        rest = [_finalize(j, st, statement_ids[j]) for j in rest_j.tolist()]
        chosen = ((head if best_agree is not None else []) + rest)[:max_n]
        chosen = [e for e in chosen if e["direction"] == "agree"] + [
            e for e in chosen if e["direction"] != "agree"
        ]
        out.append(chosen)
    return out


def group_informed_consensus(counts: np.ndarray) -> np.ndarray:
    """(n_cols,) Pol.is group-aware consensus: prod over groups of (A + 1) / (S + 2).

    A group that never saw a statement contributes 1/2. (With no groups the pipeline passes the
    in-conversation counts as a single group, so the value stays defined.)

    Parameters
    ----------
    counts : (3, n_groups, n_cols).
    """
    a = counts[0].astype(np.float64)
    s = counts.sum(axis=0).astype(np.float64)
    return np.prod((a + 1.0) / (s + 2.0), axis=0)


def consensus_lists(
    agree: np.ndarray,
    disagree: np.ndarray,
    seen: np.ndarray,
    mod_out: np.ndarray,
    statement_ids: list,
    max_n: int = 5,
) -> dict[str, list[dict]]:
    """Pol.is ``consensus`` (spec §6.2), over all participants, mod-out statements removed.

    Parameters
    ----------
    agree, disagree, seen : (n_cols,) counts over every participant (seen includes passes).

    Returns
    -------
    {"agree": [...], "disagree": [...]}, each item {statement, n_success, n_trials, p_success,
    p_test}, sorted by p_success * p_test descending (stable), at most ``max_n``.
    """
    out: dict[str, list[dict]] = {}
    ns = seen.astype(np.float64)
    for name, succ in (("agree", agree), ("disagree", disagree)):
        s = succ.astype(np.float64)
        p = (s + 1.0) / (ns + 2.0)
        t = prop_test(s, ns)
        ok = np.flatnonzero((p > 0.5) & (t > Z90) & ~mod_out)
        order = ok[np.argsort(-(p[ok] * t[ok]), kind="stable")][:max_n]
        out[name] = [
            {
                "statement": statement_ids[j],
                "n_success": int(s[j]),
                "n_trials": int(ns[j]),
                "p_success": float(p[j]),
                "p_test": float(t[j]),
            }
            for j in order.tolist()
        ]
    return out


def priorities(
    agree: np.ndarray,
    disagree: np.ndarray,
    seen: np.ndarray,
    extremity: np.ndarray,
    is_meta: np.ndarray,
    meta_priority: float = 7.0,
) -> np.ndarray:
    """Pol.is comment priority (spec §7.1) from the CURRENT counts (Pol.is lags one update).

    importance = (1 - p_pass) (E + 1) p_agree; novelty = 1 + 8 * 2^(-S/5);
    priority = (importance * novelty)^2; meta statements get meta_priority^2 = 49.

    All inputs are (n_cols,) summed over groups (in-conversation participants).
    """
    a = agree.astype(np.float64)
    s = seen.astype(np.float64)
    pss = s - a - disagree
    p_pass = (pss + 1.0) / (s + 2.0)
    p_agree = (a + 1.0) / (s + 2.0)
    importance = (1.0 - p_pass) * (extremity + 1.0) * p_agree
    novelty = 1.0 + 8.0 * np.power(2.0, -s / 5.0)
    out = (importance * novelty) ** 2
    out[is_meta] = meta_priority**2
    return out
