"""PCA of the vote matrix, solved exactly, with Pol.is's sparsity-aware projection.

Pol.is fills each missing cell with its column mean, centres the columns and finds the top two
principal components by a fixed budget of power iterations (or, above 10,000 participants, an
unseeded mini-batch variant). Because the mean-imputed, centred matrix ``C`` is exactly zero
wherever a vote is missing, ``C`` has the sparsity of the votes: ``C[i, j] = v_ij - center_j``
on voted cells and 0 elsewhere. We therefore never build the dense matrix:

* ``CᵀC`` is accumulated from row chunks densified a few thousand rows at a time (BLAS syrk),
  then its top two eigenpairs are taken exactly (``eigh``; from 96 statements a Lanczos
  iteration that agrees with ``eigh`` to rounding, falling back to it on near-ties; subspace
  iteration to convergence on the Gram matrix when it is large);
* for very wide conversations (more statements than ``Params.gram_max_statements``) a block
  subspace iteration with sparse products (``np.bincount``) is run to convergence instead.

Deliberate differences from Pol.is (documented here and in ``Params``):
* exact eigenvectors instead of 100 warm-started power iterations;
* deterministic signs: on a cold start the largest-|loading| entry of each component is made
  positive; afterwards a component is flipped when its dot product with the previous snapshot's
  component (on the statements both share) is negative, so the map does not mirror;
* the Gram matrix may be accumulated in float32 for very large inputs
  (``Params.pca_float32_cells``), which changes components by about 1e-6 - invisible on a map,
  and never used on small inputs;
* participant projections are summed in fixed point (multiples of 2^-32), so they are exactly
  independent of the order of the votes (see :func:`project_participants`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .matrix import Votes

__all__ = [
    "PCAResult",
    "column_means",
    "centred_values",
    "fit_pca",
    "project_participants",
    "project_statements",
]


@dataclass(frozen=True)
class PCAResult:
    """Result of :func:`fit_pca`.

    Attributes
    ----------
    center : (n_cols,) column means of the moderated matrix (agree = +1); 0 for mod-out columns.
    components : (2, n_cols) unit vectors (a row of zeros when the data have rank < 2).
    eigenvalues : (2,) eigenvalues of ``CᵀC`` (sum of squares along each component).
    """

    center: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray


def column_means(votes: Votes, mod_out: np.ndarray) -> np.ndarray:
    """(n_cols,) mean over voters of each column; mod-out columns (all zeros in R_mod) give 0.

    Parameters
    ----------
    mod_out : (n_cols,) bool, moderated-out columns.
    """
    n_cols = votes.n_cols
    sums = np.zeros(n_cols)
    cnt = np.zeros(n_cols, np.int64)
    for a, b in votes.entry_chunks():
        c = votes.col[a:b]
        sums += np.bincount(c, weights=votes.value[a:b], minlength=n_cols)
        cnt += np.bincount(c, minlength=n_cols)
    center = sums / np.maximum(cnt, 1)
    center[mod_out] = 0.0
    return center


def centred_values(
    votes: Votes, center: np.ndarray, mod_out: np.ndarray, a: int = 0, b: int | None = None
) -> np.ndarray:
    """(b - a,) float64 entries of C at the voted cells a..b; 0 on mod-out columns."""
    b = votes.nnz if b is None else b
    c = votes.col[a:b]
    w = votes.value[a:b] - center[c]
    if mod_out.any():
        w[mod_out[c]] = 0.0
    return w


def _gram(
    votes: Votes, center: np.ndarray, mod_out: np.ndarray, dtype: type, chunk_cells: int
) -> np.ndarray:
    """(n_cols, n_cols) float64 ``CᵀC`` from row chunks densified ``chunk_cells`` cells each."""
    n_cols = votes.n_cols
    g = np.zeros((n_cols, n_cols), dtype=np.float64)
    buf = None
    for r0, r1, a, z in votes.chunks(chunk_cells):
        if a == z:
            continue
        rows = r1 - r0
        if buf is None or buf.shape[0] < rows:
            buf = np.zeros((rows, n_cols), dtype=dtype)
        d = buf[:rows]
        # scattered in slices of entries: the per-entry temporaries stay small (a fresh
        # process pays every new page of a large one in page faults); the same cells get the
        # same values
        for e0 in range(a, z, _SCATTER_ENTRIES):
            e1 = min(z, e0 + _SCATTER_ENTRIES)
            d[votes.row[e0:e1] - r0, votes.col[e0:e1]] = centred_values(
                votes, center, mod_out, e0, e1
            )
        g += d.T @ d  # numpy dispatches A.T @ A to BLAS syrk
        for e0 in range(a, z, _SCATTER_ENTRIES):  # reset only what was written
            e1 = min(z, e0 + _SCATTER_ENTRIES)
            d[votes.row[e0:e1] - r0, votes.col[e0:e1]] = 0
    return g


# Entries per slice when _gram scatters the votes into its dense chunk.
_SCATTER_ENTRIES = 16_384


# From this many statements (up to 300), the top eigenpairs of the Gram matrix come from a
# Lanczos iteration instead of a full ``eigh`` (see _top_eig_lanczos).
_LANCZOS_MIN = 96


def _top_eig_lanczos(
    g: np.ndarray, n_top: int = 2, max_steps: int = 120
) -> tuple[np.ndarray, np.ndarray] | None:
    """Top eigenpairs of a symmetric PSD matrix by Lanczos with full reorthogonalisation, run
    until the Ritz residuals of the top ``n_top`` pairs are below 1e-14 of the largest
    eigenvalue: the eigenvalues and unit eigenvectors then agree with ``np.linalg.eigh``'s to
    rounding (about 1e-15), at a fraction of its cost (no full tridiagonalisation). Returns
    None - the caller then uses ``eigh`` - when it does not converge within ``max_steps``,
    when the Krylov space closes early, when two of the top ``n_top + 1`` Ritz values are
    within 1e-8 (a near-tie: the vectors are then eigh's own choice) or when an eigenvalue
    seems missed (:func:`_missed_eigenvalue`). Deterministic (fixed start)."""
    n = g.shape[0]
    steps = min(n - 1, max_steps)
    if steps < n_top + 6:
        return None
    q = np.empty((steps + 1, n))
    start = np.random.default_rng(20240601).standard_normal(n)
    q[0] = start / np.linalg.norm(start)
    alpha = np.empty(steps)
    beta = np.empty(steps)
    for j in range(steps):
        w = g @ q[j]
        alpha[j] = q[j] @ w
        basis = q[: j + 1]
        w -= basis.T @ (basis @ w)  # full reorthogonalisation, twice
        w -= basis.T @ (basis @ w)
        b = math.sqrt(w @ w)  # = float(np.linalg.norm(w)): sqrt of the dot product
        beta[j] = b
        if not b > 1e-12 * max(abs(alpha[0]), 1e-300):
            return None  # invariant subspace: let eigh decide
        if j >= n_top + 6 and j % 2 == 0:
            t = np.zeros((j + 1, j + 1))  # tridiagonal: alpha on the diagonal, beta beside it
            off = beta[:j]
            flat = t.reshape(-1)
            flat[:: j + 2] = alpha[: j + 1]
            flat[1 :: j + 2] = off
            flat[j + 1 :: j + 2] = off
            tv, ts = np.linalg.eigh(t)
            tv, ts = tv[::-1], ts[:, ::-1]
            scale = max(float(tv[0]), 1e-300)
            if float(np.abs(b * ts[-1, :n_top]).max()) <= 1e-14 * scale:
                if float((tv[:n_top] - tv[1 : n_top + 1]).min()) <= 1e-8 * scale:
                    return None  # a (near) tie: which vectors eigh returns is its own choice
                if _missed_eigenvalue(g, basis, float(tv[n_top])):
                    return None
                return tv[:n_top].copy(), basis.T @ ts[:, :n_top]
        q[j + 1] = w / b
    return None


def _missed_eigenvalue(g: np.ndarray, basis: np.ndarray, next_ritz: float) -> bool:
    """Whether the orthogonal complement of the Krylov space ``basis`` seems to hold an
    eigenvalue above ``next_ritz`` (the first unwanted Ritz value): a Krylov space from one
    start vector holds one direction of a repeated eigenvalue only, so with an exactly repeated
    top eigenvalue Lanczos would miss the other copy. A few power steps on a fixed random vector
    kept orthogonal to the basis find it (its Rayleigh quotient then exceeds ``next_ritz``); a
    false alarm only sends the caller to ``eigh``."""
    z = np.random.default_rng(20240602).standard_normal(g.shape[0])
    for _ in range(8):
        z -= basis.T @ (basis @ z)
        z -= basis.T @ (basis @ z)
        nz = math.sqrt(z @ z)  # = np.linalg.norm(z)
        if nz == 0.0:
            return False
        z /= nz
        y = g @ z
        if float(z @ y) > next_ritz * (1.0 - 1e-9):
            return True
        z = y
    return False


def _top_eig_dense(g: np.ndarray, n_top: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Top eigenpairs of a symmetric PSD matrix: eigh for small, Lanczos (to rounding) from
    ``_LANCZOS_MIN`` rows, subspace iteration for large.

    Returns eigenvalues (n_top,) descending and vectors (n, n_top).
    """
    n = g.shape[0]
    if n <= 300:  # eigh is cheap and exact; above, subspace iteration is several times faster
        if n >= _LANCZOS_MIN:
            top = _top_eig_lanczos(g, n_top)
            if top is not None:
                return top
        vals, vecs = np.linalg.eigh(g)
        return vals[::-1][:n_top], vecs[:, ::-1][:, :n_top]
    # Subspace iteration with Rayleigh-Ritz, run to convergence (residual <= 1e-12 * lambda_1).
    p = min(n, 12)
    rng = np.random.default_rng(20240601)  # fixed: results must not depend on any caller seed
    x, _ = np.linalg.qr(rng.standard_normal((n, p)))
    scale = max(float(np.abs(np.diag(g)).max()), 1e-300)
    for _ in range(3000):
        y = g @ x
        q, _ = np.linalg.qr(y)
        h = q.T @ g @ q
        hv, hw = np.linalg.eigh(h)
        order = np.argsort(hv)[::-1]
        hv, hw = hv[order], hw[:, order]
        x = q @ hw
        res = g @ x[:, :n_top] - x[:, :n_top] * hv[:n_top]
        if np.linalg.norm(res, axis=0).max() <= 1e-12 * max(hv[0], scale * 1e-12):
            return hv[:n_top], x[:, :n_top]
    vals, vecs = np.linalg.eigh(g)  # did not converge (tiny gap): exact fallback
    return vals[::-1][:n_top], vecs[:, ::-1][:, :n_top]


def _top_eig_sparse(
    votes: Votes,
    center: np.ndarray,
    mod_out: np.ndarray,
    n_top: int = 2,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top eigenpairs of ``CᵀC`` without forming it: block subspace iteration (Rayleigh-Ritz
    every step) run to convergence, with ``C`` applied through sparse products over chunks of
    votes (``np.bincount``), recomputing ``C``'s entries on the fly (no nnz-sized arrays)."""
    n_rows, n_cols = votes.n_rows, votes.n_cols
    p = min(n_cols, 8)
    rng = np.random.default_rng(20240601)
    x = rng.standard_normal((n_cols, p))
    if start is not None:
        x[:, : start.shape[1]] = start
    x, _ = np.linalg.qr(x)

    def apply(xm: np.ndarray) -> np.ndarray:
        xt = np.ascontiguousarray(xm.T)  # (p, n_cols): 1-D gathers from small contiguous rows
        y = np.zeros((xm.shape[1], n_rows))
        for a, b in votes.entry_chunks():
            r, c = votes.row[a:b].astype(np.intp), votes.col[a:b].astype(np.intp)
            wv = centred_values(votes, center, mod_out, a, b)
            for j in range(xt.shape[0]):
                y[j] += np.bincount(r, weights=xt[j][c] * wv, minlength=n_rows)
        z = np.zeros((xm.shape[1], n_cols))
        for a, b in votes.entry_chunks():
            r, c = votes.row[a:b].astype(np.intp), votes.col[a:b].astype(np.intp)
            wv = centred_values(votes, center, mod_out, a, b)
            for j in range(xt.shape[0]):
                z[j] += np.bincount(c, weights=y[j][r] * wv, minlength=n_cols)
        return z.T

    hv = np.zeros(p)
    for _ in range(2000):
        y = apply(x)
        h = x.T @ y
        hv, hw = np.linalg.eigh((h + h.T) / 2)
        order = np.argsort(hv)[::-1]
        hv, hw = hv[order], hw[:, order]
        ritz = x @ hw
        res = y @ hw[:, :n_top] - ritz[:, :n_top] * hv[:n_top]
        if np.linalg.norm(res, axis=0).max() <= 1e-10 * max(hv[0], 1e-300):
            return hv[:n_top], ritz[:, :n_top]
        x, _ = np.linalg.qr(y @ hw)
    return hv[:n_top], (x @ hw)[:, :n_top]


def _cold_sign(
    v: np.ndarray, center: np.ndarray, first_row: Callable[[np.ndarray], float]
) -> float:
    """+1 or -1, chosen so that the sign does not depend on the column order.

    The largest |loading| is made positive; when the largest positive and largest negative
    loadings are equally large (up to rounding), the sum of cubed loadings decides, then the
    correlation with the column means, and last the first participant (in row order, which
    does not depend on statement ids) with a non-zero position along the component.
    """
    tol = 1e-9 * float(np.abs(v).max())
    hi, lo = float(v.max()), float(-v.min())
    if abs(hi - lo) > tol:
        return 1.0 if hi > lo else -1.0
    for score in (float((v**3).sum()), float(v @ center)):
        if abs(score) > tol * max(1.0, float(np.abs(center).sum())):
            return 1.0 if score > 0 else -1.0
    score = first_row(v)
    if score != 0.0:
        return 1.0 if score > 0 else -1.0
    return 1.0 if v[int(np.argmax(np.abs(v)))] > 0 else -1.0


def _first_row_score(
    votes: Votes, center: np.ndarray, mod_out: np.ndarray
) -> Callable[[np.ndarray], float]:
    def score(v: np.ndarray) -> float:
        u = np.zeros(votes.n_rows)
        for a, b in votes.entry_chunks():
            u += np.bincount(
                votes.row[a:b],
                weights=centred_values(votes, center, mod_out, a, b) * v[votes.col[a:b]],
                minlength=votes.n_rows,
            )
        nz = np.flatnonzero(np.abs(u) > 1e-9 * max(float(np.abs(u).max()), 1e-300))
        return float(u[nz[0]]) if nz.size else 0.0

    return score


def _fix_signs(
    comps: np.ndarray,
    previous: np.ndarray | None,
    center: np.ndarray | None = None,
    first_row: Callable[[np.ndarray], float] | None = None,
) -> np.ndarray:
    """Deterministic component signs (see module docstring).

    previous : (2, n_cols) previous components aligned to the current columns (0 where a
        statement is new), or None on a cold start.
    """
    out = comps.copy()
    c = np.zeros(comps.shape[1]) if center is None else center
    fr = first_row or (lambda v: 0.0)
    for k in range(out.shape[0]):
        v = out[k]
        if not v.any():
            continue
        d = float(previous[k] @ v) if previous is not None else 0.0
        if d == 0.0:
            d = _cold_sign(v, c, fr)
        if d < 0:
            out[k] = -v
    return out


def fit_pca(
    votes: Votes,
    mod_out: np.ndarray,
    previous: np.ndarray | None = None,
    *,
    gram_max_statements: int = 4000,
    float32_cells: int = 20_000_000,
    chunk_cells: int = 4_000_000,
    gram_cost_factor: float = 20_000.0,
) -> PCAResult:
    """Column means and the top two principal components of the moderated matrix.

    Parameters
    ----------
    votes : the latest votes.
    mod_out : (n_cols,) bool, moderated-out (rejected or meta) columns, zeroed in every row.
    previous : (2, n_cols) previous components aligned to the current columns, for sign
        continuity (None on a cold start).

    Returns
    -------
    PCAResult.
    """
    n_rows, n_cols = votes.n_rows, votes.n_cols
    center = column_means(votes, mod_out)
    comps = np.zeros((2, n_cols))
    vals = np.zeros(2)
    if n_rows == 0 or n_cols == 0:
        return PCAResult(center, comps, vals)
    # CᵀC by dense chunks costs ~ n_rows * n_cols^2 flops (BLAS); the sparse iteration costs a
    # few hundred passes over the votes. Take the Gram route when it is cheaper (always for
    # small conversations, where it is also exact to machine precision).
    gram_cheaper = n_rows * n_cols * n_cols <= gram_cost_factor * max(votes.nnz, 1)
    if n_cols <= gram_max_statements and gram_cheaper:
        dtype = np.float32 if n_rows * n_cols > float32_cells else np.float64
        g = _gram(votes, center, mod_out, dtype, chunk_cells)
        if not g.any():
            return PCAResult(center, comps, vals)
        ev, vec = _top_eig_dense(g, 2)
    else:
        if not np.any(votes.value != 0) and not center.any():
            return PCAResult(center, comps, vals)
        ev, vec = _top_eig_sparse(
            votes, center, mod_out, 2, None if previous is None else previous.T
        )
        if ev.size and ev[0] <= 0:
            return PCAResult(center, comps, vals)
    k = ev.size
    vals[:k] = np.maximum(ev, 0.0)
    comps[:k] = vec.T
    # Components with (numerically) zero variance are not defined: Pol.is's rank-1 case.
    tiny = 1e-10 * max(vals[0], 1e-300)
    for i in range(2):
        if vals[i] <= tiny or i >= k:
            comps[i] = 0.0
            vals[i] = 0.0
    comps /= np.maximum(np.linalg.norm(comps, axis=1, keepdims=True), 1e-300)
    comps = _fix_signs(comps, previous, center, _first_row_score(votes, center, mod_out))
    return PCAResult(center, comps, vals)


def project_participants(
    votes: Votes, center: np.ndarray, comps: np.ndarray, mod_out: np.ndarray
) -> np.ndarray:
    """Sparsity-aware projection of every participant (Pol.is ``sparsity-aware-project-ptpt``).

    ``proj(i) = sqrt(n_cols / max(n_i, 1)) * sum_j C[i, j] comps[:, j]`` where ``n_i`` counts the
    row's non-missing cells in the moderated matrix, which includes every mod-out column (they are
    zero-filled for everyone, as in Pol.is).

    Returns
    -------
    (n_rows, 2) float64.
    """
    n_rows, n_cols = votes.n_rows, votes.n_cols
    out = np.zeros((n_rows, 2))
    if n_rows == 0:
        return out
    n_i = np.zeros(n_rows)
    # Per-column weights: (v - center_j) * comps[k, j] = v * q_j - r_j with q = comps[k] and
    # r = center * comps[k], both rounded to multiples of 1/scale. Every term is then an integer
    # multiple of 1/scale of magnitude <= 2 * scale, and a row has at most n_cols terms, so with
    # scale = 2^(52 - ceil(log2(2 n_cols))) float64 row sums are EXACT and do not depend on the
    # order of the votes: participants with identical votes get bit-identical positions, whatever
    # order the votes arrive in (determinism, permutation invariance). Rounding error per vote:
    # <= 0.5/scale (2^-46 for 50 statements, 2^-38 for 10,000), far below anything visible.
    live = (~mod_out).astype(np.float64)
    scale = 2.0 ** min(48, 52 - int(np.ceil(np.log2(2 * max(n_cols, 1)))))
    cc = [np.round(comps[k] * live * scale) for k in range(2)]
    cm = [np.round(center * comps[k] * live * scale) for k in range(2)]
    any_out = bool(mod_out.any())
    # the weight v * q_j - r_j of a vote, for v in (-1, 0, 1) and every column: one table
    # per component (the same products and differences), looked up by (v + 1) * n_cols + j
    vals = np.array([-1.0, 0.0, 1.0])[:, None]
    table = [(vals * cc[k][None, :] - cm[k][None, :]).reshape(-1) for k in range(2)]
    for a, b in votes.entry_chunks():
        r, c = votes.row[a:b], votes.col[a:b]
        idx = np.multiply(votes.value[a:b] + 1, n_cols, dtype=np.intp)
        idx += c
        for k in range(2):
            out[:, k] += np.bincount(r, weights=table[k][idx], minlength=n_rows)
        if any_out:
            n_i += np.bincount(r, weights=live[c], minlength=n_rows)
        else:  # every column live: the count of the row's votes (the same integer sums)
            n_i += np.bincount(r, minlength=n_rows)
    out /= scale
    n_i += int(mod_out.sum())
    out *= np.sqrt(n_cols / np.maximum(n_i, 1))[:, None]
    return out


def project_statements(center: np.ndarray, comps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each statement as a virtual participant with one agree vote (Pol.is ``pca-project-cmnts``).

    Returns
    -------
    projection : (2, n_cols) ``sqrt(n_cols) * (1 - center_j) * comps[:, j]`` (agree = +1).
    extremity : (n_cols,) Euclidean norm of each column of ``projection``.
    """
    n_cols = center.size
    proj = np.sqrt(n_cols) * (1.0 - center)[None, :] * comps
    return proj, np.sqrt((proj**2).sum(axis=0))
