"""Compare two rounds of one consultation: what moved towards or away from consensus.

Works on two ``AnalysisResult.to_dict()`` outputs (what the app stores per snapshot), so a
report can compare any two stored snapshots without re-running the analysis. Statements are
matched by id, or through ``statement_map`` (id in the earlier round -> id in the later round,
e.g. a statement carried over into the next round under a new id).

The bridging score is the measure of movement because it means the same whatever the number of
groups (``bridging.py``); GAC is reported beside it but is not comparable when k changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["compare_rounds"]


def _share(stats: Mapping[str, Any]) -> float | None:
    seen = stats.get("seen", 0)
    return stats["agree"] / seen if seen else None


def compare_rounds(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    statement_map: Mapping[Any, Any] | None = None,
    min_change: float = 0.05,
) -> dict:
    """Per-statement changes between two analysis results.

    Parameters
    ----------
    before, after : ``to_dict()`` of the earlier and the later analysis.
    statement_map : optional {earlier statement id: later statement id}.
    min_change : bridging change below which a statement is "stable".

    Returns
    -------
    {"statements": {later id: {before, bridging: [b0, b1, delta], gac: [g0, g1],
    agree_share: [s0, s1], consensus: [was, is]}}, "towards_consensus": ids (largest bridging
    gain first), "away_from_consensus": ids (largest loss first), "entered_consensus": ids,
    "left_consensus": ids, "k": [k0, k1]}.
    """
    mapping = {str(k): str(v) for k, v in (statement_map or {}).items()}
    b_br, a_br = before.get("bridging", {}), after.get("bridging", {})
    b_gac, a_gac = (
        before.get("group_informed_consensus", {}),
        after.get("group_informed_consensus", {}),
    )
    b_st, a_st = before.get("statement_stats", {}), after.get("statement_stats", {})

    def cons(d: Mapping[str, Any]) -> dict[str, str]:
        out = {}
        for direction in ("agree", "disagree"):
            for s in d.get("consensus", {}).get(direction, []):
                out[str(s)] = direction
        return out

    b_cons, a_cons = cons(before), cons(after)
    statements: dict[str, dict] = {}
    moves: list[tuple[float, str]] = []
    entered, left = [], []
    for old in b_br:
        new = mapping.get(old, old)
        if new not in a_br:
            continue
        delta = a_br[new] - b_br[old]
        statements[new] = {
            "before": old,
            "bridging": [b_br[old], a_br[new], delta],
            "gac": [b_gac.get(old), a_gac.get(new)],
            "agree_share": [
                _share(b_st[old]) if old in b_st else None,
                _share(a_st[new]) if new in a_st else None,
            ],
            "consensus": [b_cons.get(old), a_cons.get(new)],
        }
        moves.append((delta, new))
        if a_cons.get(new) and not b_cons.get(old):
            entered.append(new)
        if b_cons.get(old) and not a_cons.get(new):
            left.append(new)
    towards = [s for d, s in sorted(moves, key=lambda t: -t[0]) if d >= min_change]
    away = [s for d, s in sorted(moves, key=lambda t: t[0]) if d <= -min_change]
    return {
        "statements": statements,
        "towards_consensus": towards,
        "away_from_consensus": away,
        "entered_consensus": entered,
        "left_consensus": left,
        "k": [before.get("k"), after.get("k")],
        "method": "bridging score (geometric mean of per-group Laplace agree rates) compared "
        "statement by statement; changes below min_change count as stable",
    }
