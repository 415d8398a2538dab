"""Divisive statements: the ones opinion groups answer differently.

For each statement and group, the net agreement ``n_g = (A_g - D_g) / (S_g + 2)`` is in
(-1, 1) (the +2 shrinks small samples towards 0, as the Laplace rates elsewhere). The
divisiveness is the **unweighted variance of n_g across the groups** that have at least
``min_votes`` votes on it (at least two such groups are required). Groups are weighted equally
because a statement that splits a small group from a large one is just as divisive; the
maximum, 1, is reached when half the groups all agree and the other half all disagree.
Moderated-out statements are never listed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["divisiveness"]


def divisiveness(counts: np.ndarray, mod_out: np.ndarray, min_votes: int = 3) -> np.ndarray:
    """(n_cols,) divisiveness in [0, 1]; NaN where not eligible.

    Parameters
    ----------
    counts : (3, n_groups, n_cols) agree/disagree/pass counts per group.
    mod_out : (n_cols,) bool.
    """
    a, d = counts[0].astype(np.float64), counts[1].astype(np.float64)
    s = counts.sum(axis=0).astype(np.float64)
    n_cols = s.shape[1] if s.ndim == 2 else 0
    out = np.full(n_cols, np.nan)
    if counts.shape[1] < 2:
        return out
    net = (a - d) / (s + 2.0)
    ok = s >= min_votes
    m = ok.sum(axis=0)
    elig = (m >= 2) & ~mod_out
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, net, 0).sum(axis=0) / np.maximum(m, 1)
        var = np.where(ok, (net - mean) ** 2, 0).sum(axis=0) / np.maximum(m, 1)
    out[elig] = np.clip(var[elig], 0.0, 1.0)
    return out
