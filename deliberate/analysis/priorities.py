"""Statement routing: priority weights and Pol.is's weighted draw (spec §7.3).

Differences from Pol.is (deliberate):
* priorities come from the current snapshot's counts (Pol.is lags one update);
* a statement with no votes (absent from the analysis) gets ``Params.unseen_priority``
  (5.0625 = the formula at S = 0, E = 0) instead of Pol.is's weight of 1, so a new statement is
  shown early instead of almost never; meta statements get 49 as in Pol.is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["draw_weighted", "routing_weights"]


def routing_weights(
    candidates: Sequence[Any],
    priorities: Mapping[Any, float],
    prior: float = 5.0625,
    meta: frozenset = frozenset(),
    meta_priority: float = 7.0,
) -> np.ndarray:
    """(n,) weights for ``candidates``: their priority, or the explicit prior when unknown.

    ``priorities`` may be keyed by the ids themselves or by ``str(id)`` (as in ``to_dict``).
    """
    out = np.empty(len(candidates))
    for i, c in enumerate(candidates):
        v = priorities.get(c)
        if v is None:
            v = priorities.get(str(c))
        if v is None:
            v = meta_priority**2 if c in meta else prior
        out[i] = v if v > 0 else prior
    return out


def draw_weighted(
    candidates: Sequence[Any], weights: Sequence[float] | np.ndarray, rng: np.random.Generator
) -> Any:
    """Pick one candidate with probability proportional to its weight (Pol.is's draw).

    Cumulative sums in candidate order, r = uniform * total, the first candidate whose cumulative
    sum exceeds r. Returns None when there are no candidates.
    """
    n = len(candidates)
    if n == 0:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, non-negative and one per candidate")
    cum = np.cumsum(w)
    total = cum[-1]
    if total <= 0:
        return candidates[int(rng.integers(n))]
    r = rng.random() * total
    i = int(np.searchsorted(cum, r, side="right"))
    return candidates[min(i, n - 1)]
