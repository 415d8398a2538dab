"""Bridging score: does a statement win agreement in every opinion group?

Pol.is's group-informed consensus (GAC) is a product over groups of the Laplace agree rate
(A_g + 1) / (S_g + 2); it shrinks as groups are added (four groups at 0.8 give 0.41, two give
0.64), so it cannot be compared between snapshots with different group counts.

deliberate's bridging score is the **geometric mean** of the same per-group rates:

    bridging(t) = (prod_g (A_g,t + 1) / (S_g,t + 2)) ** (1 / k) = GAC(t) ** (1 / k)

Why this choice:
* it is in (0, 1) and reads as "the typical group's agree rate", whatever k is, so it is
  comparable across rounds and between snapshots with different k;
* it orders statements exactly as GAC does within one snapshot (a monotone transform), so it
  never contradicts Pol.is's ranking;
* like GAC it is dominated by the least-agreeing group (a product, not a sum: one group at 0.1
  pulls four groups at 0.9 down to 0.58), which is what "bridging" should mean, while being less
  noisy than the bare minimum over groups;
* Laplace smoothing keeps small groups from deciding alone, and a group that has not seen the
  statement contributes 1/2 (unknown), as in GAC.
With no groups (too few participants) it is the overall Laplace agree rate (k = 1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["bridging_scores"]


def bridging_scores(counts: np.ndarray) -> np.ndarray:
    """(n_cols,) bridging score from (3, n_groups, n_cols) agree/disagree/pass counts."""
    k = counts.shape[1]
    a = counts[0].astype(np.float64)
    s = counts.sum(axis=0).astype(np.float64)
    if k == 0:
        return np.full(counts.shape[2], 0.5)
    return np.exp(np.log((a + 1.0) / (s + 2.0)).mean(axis=0))
