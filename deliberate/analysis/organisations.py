"""Results per member organisation and the "one organisation, one voice" view.

METHOD (also returned in the result): each organisation's members' votes on a statement are
weighted 1 / (number of its members who saw that statement), so every organisation that saw a
statement has exactly one voice on it, split between agree / disagree / pass in the proportions
of its members' votes. Participants without an organisation keep one voice each (they are
counted as one-member organisations). The one-voice consensus applies Pol.is's consensus rule
(spec §6.2: Laplace rate > 0.5 and proportion test z > 1.2816) to these voices, with n = the
number of voices that saw the statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .matrix import Votes
from .stats import Z90, group_counts, prop_test

__all__ = ["METHOD", "organisation_view"]

METHOD = (
    "one organisation, one voice: each member's vote is weighted 1/(members of their "
    "organisation who saw the statement); participants without an organisation count as "
    "one voice each; consensus = Pol.is rule (Laplace rate > 0.5, z > 1.2816) on the voices"
)


def organisation_view(
    votes: Votes, organisation_of: Mapping[Any, Any], mod_out: np.ndarray, max_n: int = 5
) -> dict:
    """Per-organisation counts and the one-organisation-one-voice shares.

    Returns
    -------
    dict with ``method``, ``organisations`` ({org: {members, votes: {statement: [A, D, P]}}}),
    ``one_voice`` ({statement: {agree, disagree, pass, voices, agree_share}}) and ``consensus``
    ({agree: ids, disagree: ids}).
    """
    pids = votes.participant_ids.tolist()
    sids = votes.statement_ids.tolist()
    n_cols = votes.n_cols
    org_keys: dict[Any, int] = {}
    code = np.full(votes.n_rows, -1, np.int64)
    for i, p in enumerate(pids):
        o = organisation_of.get(p)
        if o is None:
            o = organisation_of.get(str(p))
        if o is not None:
            code[i] = org_keys.setdefault(o, len(org_keys))
    n_org = len(org_keys)
    counts = group_counts(votes, code, n_org)  # (3, n_org, n_cols)
    seen = counts.sum(axis=0)
    # weight of each vote: 1 / members of its organisation who saw the statement (1 if none)
    inv_seen = np.zeros_like(seen, dtype=np.float64)
    np.divide(1.0, seen, out=inv_seen, where=seen > 0)
    agree = np.zeros(n_cols)
    disagree = np.zeros(n_cols)
    passes = np.zeros(n_cols)
    unaffiliated = np.zeros(n_cols, np.int64)
    for a, b in votes.entry_chunks():
        c = votes.col[a:b]
        org = code[votes.row[a:b]]
        has = org >= 0
        wv = np.ones(b - a)
        wv[has] = inv_seen[org[has], c[has]]
        val = votes.value[a:b]
        agree += np.bincount(c, weights=wv * (val > 0), minlength=n_cols)
        disagree += np.bincount(c, weights=wv * (val < 0), minlength=n_cols)
        passes += np.bincount(c, weights=wv * (val == 0), minlength=n_cols)
        unaffiliated += np.bincount(c[~has], minlength=n_cols)
    voices = (seen > 0).sum(axis=0) + unaffiliated
    members = np.bincount(code[code >= 0], minlength=n_org)
    orgs_out = {}
    names = list(org_keys)
    for oi, o in enumerate(names):
        cols = np.flatnonzero(seen[oi])
        orgs_out[str(o)] = {
            "members": int(members[oi]),
            "votes": {
                str(sids[j]): [int(counts[0, oi, j]), int(counts[1, oi, j]), int(counts[2, oi, j])]
                for j in cols.tolist()
            },
        }
    one_voice = {}
    for j in np.flatnonzero(voices).tolist():
        one_voice[str(sids[j])] = {
            "agree": float(agree[j]),
            "disagree": float(disagree[j]),
            "pass": float(passes[j]),
            "voices": int(voices[j]),
            "agree_share": float(agree[j] / voices[j]),
        }
    cons = {}
    nv = voices.astype(np.float64)
    for name, succ in (("agree", agree), ("disagree", disagree)):
        p = (succ + 1.0) / (nv + 2.0)
        t = prop_test(succ, nv)
        ok = np.flatnonzero((p > 0.5) & (t > Z90) & ~mod_out & (voices > 0))
        order = ok[np.argsort(-(p[ok] * t[ok]), kind="stable")][:max_n]
        cons[name] = [sids[j] for j in order.tolist()]
    return {"method": METHOD, "organisations": orgs_out, "one_voice": one_voice, "consensus": cons}
