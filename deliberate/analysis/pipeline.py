"""``run_analysis``: one update of the opinion analysis, from votes (+ previous state) to results.

Order of the stages (spec Appendix A): moderation sets -> matrix -> in-conversation set -> PCA
and projections -> base clusters (k = 100) -> group clusterings for every allowed k -> k by
silhouette and the smoother -> stable group ids -> counts -> repness, GAC, consensus,
priorities -> bridging, divisive, organisations, stability.

Everything the next update needs (in-conversation set, components, base clusters, every k's
group clustering, the k smoother, the public group ids) goes into ``result.state``, a plain
JSON-able dict.

Deliberate differences from Pol.is (each is also documented where it is made):

1. PCA is exact (eigen-decomposition of CᵀC, or subspace iteration to convergence) instead of
   100 warm-started power iterations / unseeded mini-batch PCA; component signs are fixed on a
   cold start (largest |loading| positive) and kept continuous with the previous state
   (``pca.py``).
2. The per-k group clusterings and the k smoother are persisted in ``state`` (Pol.is keeps
   them in worker memory; a restart reshuffles groups). Like newer Pol.is, a smoothed k that is
   no longer allowed is reset (``clustering.smooth_k``).
3. Priorities use the current counts (Pol.is lags one update); statements with no votes get
   ``Params.unseen_priority`` = 5.0625 instead of weight 1 (``priorities.py``, ``stats.py``).
4. Public group ids are matched to the previous snapshot's groups by member overlap, so a group
   keeps its id (name, colour) across updates (``clustering.match_ids``).
5. Ties in the in-conversation top-up are broken by first appearance (Pol.is: map order).
6. Rows are ordered by first appearance and projections are summed in fixed point, so results
   do not depend on the order votes are delivered in (``matrix.py``, ``pca.py``).
7. With no groups (fewer than two distinct positions), GAC and bridging use the in-conversation
   participants as one group; Pol.is has no value then.
8. Cold starts only (no previous clustering for a k, more than
   ``Params.cold_restarts_min_participants`` in conversation): the group k-means keeps the best
   of Pol.is's start and ``Params.cold_restarts`` seeded k-means++ starts
   (``clustering.best_of_restarts``; all k and all starts run as one batch in
   ``clustering.cold_group_clusterings``, with identical results) - a stand-in for the history
   of warm starts that a cold run does not have. Warm updates are Pol.is's, unchanged.
9. Additions: bridging (``bridging.py``), divisive (``divisive.py``), organisations
   (``organisations.py``), bootstrap stability (``stability.py``), round comparison
   (``rounds.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import organisations as _org
from .bridging import bridging_scores
from .clustering import (
    Clustering,
    _n_distinct,
    _pairwise,
    clean_start,
    cold_group_clusterings,
    match_ids,
    max_group_k,
    polis_kmeans,
    silhouette,
    smooth_k,
)
from .divisive import divisiveness
from .matrix import Moderation, Votes, in_conversation
from .pca import fit_pca, project_participants, project_statements
from .stability import bootstrap
from .stats import (
    consensus_lists,
    counts_with_total,
    group_counts,
    group_informed_consensus,
    priorities,
    select_repness,
)

__all__ = ["Params", "AnalysisResult", "run_analysis", "STATE_VERSION"]

STATE_VERSION = 1


@dataclass(frozen=True)
class Params:
    """Every constant of the analysis. Defaults are Pol.is's, except where marked (deliberate)."""

    min_votes_in_conv: int = 7  # Pol.is: admitted with >= min(7, n_statements) votes
    min_in_conv: int = 15  # Pol.is: top up the in-conversation set to 15
    base_k: int = 100  # Pol.is :base-k
    base_iters: int = 100  # Pol.is :base-iters
    group_iters: int = 20  # Pol.is really runs kmeans' default 20 at group level
    # deliberate: on a cold start (no previous clustering for a k) with more in-conversation
    # participants than this, also try this many seeded k-means++ starts and keep the lowest
    # weighted inertia (see clustering.best_of_restarts). 0 = Pol.is's single start.
    cold_restarts: int = 10
    cold_restarts_min_participants: int = 100
    max_k: int = 5  # Pol.is max-k-fn: min(5, 2 + floor(n_base / 12))
    k_buffer: int = 4  # Pol.is :group-k-buffer
    repness_max: int = 5
    consensus_max: int = 5
    meta_priority: float = 7.0  # Pol.is: meta statements get 7^2 = 49
    # deliberate: explicit prior for statements with no votes yet = the priority formula at
    # S = 0, E = 0, i.e. ((1 - 1/2) * (0 + 1) * (1/2) * 9)^2 = 5.0625 (Pol.is uses weight 1).
    unseen_priority: float = 5.0625
    divisive_min_votes: int = 3  # deliberate: votes a group needs on a statement to count
    divisive_max: int = 20  # deliberate: length of the divisive list
    bootstrap_replicates: int = 40  # deliberate: stability replicates (0 disables)
    bootstrap_buckets: int = 200  # deliberate: participant buckets for the bootstrap
    stability_level: float = 0.9  # deliberate: percentile interval level
    gram_max_statements: int = 4000  # above: sparse subspace iteration instead of CᵀC
    pca_float32_cells: int = 20_000_000  # participants x statements above which CᵀC is float32
    # CᵀC route when n_rows * n_cols^2 <= factor * n_votes (else sparse subspace iteration)
    gram_cost_factor: float = 20_000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Params:
        if not d:
            return cls()
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def _key(x: Any) -> str:
    return str(x)


def _f(x: float) -> float:
    return float(x)


@dataclass
class AnalysisResult:
    """The outcome of :func:`run_analysis`. ``to_dict()`` is the JSON stored per snapshot.

    Array attributes are in the column / row order of ``votes`` (see ``Votes``).
    """

    participant_ids: list
    statement_ids: list
    n_votes: int
    params: Params
    in_conv: np.ndarray  # (n_rows,) bool
    user_vote_counts: np.ndarray  # (n_rows,)
    mod_out: np.ndarray  # (n_cols,) bool
    is_meta: np.ndarray  # (n_cols,) bool
    center: np.ndarray  # (n_cols,)
    components: np.ndarray  # (2, n_cols)
    eigenvalues: np.ndarray  # (2,)
    projections: np.ndarray  # (n_rows, 2)
    statement_projection: np.ndarray  # (2, n_cols)
    extremity: np.ndarray  # (n_cols,)
    base_ids: np.ndarray  # (n_base,)
    base_centers: np.ndarray  # (n_base, 2)
    base_of_row: np.ndarray  # (n_rows,) index into base_ids or -1
    group_ids: list  # public ids, sorted
    group_of_row: np.ndarray  # (n_rows,) index into group_ids or -1
    group_centers: np.ndarray  # (k, 2)
    group_of_base: np.ndarray  # (n_base,) index into group_ids
    silhouettes: dict  # k -> silhouette
    k: int
    group_votes: np.ndarray  # (3, k, n_cols) agree/disagree/pass, in-conv group members
    all_votes: np.ndarray  # (3, n_cols) agree/disagree/pass, every participant
    repness: list  # per group
    consensus: dict
    gac: np.ndarray
    bridging: np.ndarray
    divisiveness: np.ndarray
    divisive: list
    priority_values: np.ndarray
    extra_priorities: dict  # statements without votes -> prior (or 49 for meta)
    organisations: dict | None
    stability: dict | None
    state: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- conveniences
    @property
    def priorities(self) -> dict:
        """{statement id: priority}; statements without votes get the explicit prior."""
        out = {
            s: float(v)
            for s, v in zip(self.statement_ids, self.priority_values.tolist(), strict=True)
        }
        out.update(self.extra_priorities)
        return out

    @property
    def groups(self) -> dict:
        """{group id: [participant ids]}."""
        out: dict = {g: [] for g in self.group_ids}
        for pid, gi in zip(self.participant_ids, self.group_of_row.tolist(), strict=True):
            if gi >= 0:
                out[self.group_ids[gi]].append(pid)
        return out

    def group_of(self, participant: Any) -> Any:
        """Public group id of a participant, or None if they are not in a group."""
        try:
            i = self.participant_ids.index(participant)
        except ValueError:
            return None
        gi = int(self.group_of_row[i])
        return self.group_ids[gi] if gi >= 0 else None

    def membership(self) -> dict:
        """{participant id: group id} for grouped participants."""
        return {
            p: self.group_ids[g]
            for p, g in zip(self.participant_ids, self.group_of_row.tolist(), strict=True)
            if g >= 0
        }

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-serialisable summary (ids as given; dict keys are ``str(id)``; agree = +1).

        Keys:

        * ``participants``, ``statements``, ``n_votes``: counts (participants and statements
          with at least one vote; latest votes).
        * ``in_conversation``: participant ids admitted to clustering; ``user_vote_counts``.
        * ``pca``: ``statements`` (ids in column order), ``center``, ``components`` (two lists),
          ``eigenvalues``; ``projections``: {participant: [x, y]}.
        * ``k``, ``silhouettes`` ({k: value}), ``groups``: [{``id``, ``members``,
          ``n_members``, ``center`` [x, y], ``representative`` [{statement, direction,
          n_success, n_trials, p_success, p_test, repness, repness_test[, best_agree,
          n_agree]}], ``votes`` {statement: {agree, disagree, pass, seen}}}].
        * ``statement_stats``: {statement: {agree, disagree, pass, seen (every participant),
          in_groups {...} (in-conversation group members, as Pol.is's report totals),
          moderated_out, meta, projection [x, y], extremity}}.
        * ``consensus``: {agree: ids, disagree: ids} in Pol.is's order; ``consensus_details``
          the same with n_success, n_trials, p_success, p_test.
        * ``group_informed_consensus``, ``bridging``, ``priorities``: {statement: value};
          ``divisive``: ids, most divisive first; ``divisiveness``: {statement: value}.
        * ``stability``: {method, replicates, buckets, level, participants {id: fraction of
          replicates in their group}, groups {id: mean member stability}, statements {id:
          {gac: [lo, hi], bridging: [lo, hi], agree_share: [lo, hi], consensus_frequency}}}
          or None when disabled.
        * ``organisations``: see ``organisations.organisation_view`` (None without
          ``organisation_of``); ``params``.
        """
        sids, pids = self.statement_ids, self.participant_ids
        sk = [_key(s) for s in sids]
        groups = []
        members = self.groups
        gv = self.group_votes
        gvl = gv.tolist()  # Python numbers once, instead of numpy scalars per cell
        for gi, gid in enumerate(self.group_ids):
            ga, gd, gp = gvl[0][gi], gvl[1][gi], gvl[2][gi]
            groups.append(
                {
                    "id": gid,
                    "members": members[gid],
                    "n_members": len(members[gid]),
                    "center": [_f(self.group_centers[gi, 0]), _f(self.group_centers[gi, 1])],
                    "representative": [
                        {
                            k: (v if not isinstance(v, np.floating) else float(v))
                            for k, v in e.items()
                        }
                        for e in self.repness[gi]
                    ],
                    "votes": {
                        sk[j]: {
                            "agree": int(ga[j]),
                            "disagree": int(gd[j]),
                            "pass": int(gp[j]),
                            "seen": int(ga[j] + gd[j] + gp[j]),
                        }
                        for j in np.flatnonzero(gv[:, gi, :].sum(axis=0)).tolist()
                    },
                }
            )
        av = self.all_votes
        ic_votes = gv.sum(axis=1) if self.k else np.zeros_like(av)
        statements = {}
        # Python numbers once per array (the same values as indexing the arrays per cell)
        a0, a1, a2 = av.tolist()
        a_seen = av.sum(axis=0).tolist()
        i0, i1, i2 = ic_votes.tolist()
        i_seen = ic_votes.sum(axis=0).tolist()
        mod_out, is_meta = self.mod_out.tolist(), self.is_meta.tolist()
        px, py = self.statement_projection[0].tolist(), self.statement_projection[1].tolist()
        extremity = self.extremity.tolist()
        for j, s in enumerate(sk):
            statements[s] = {
                "agree": int(a0[j]),
                "disagree": int(a1[j]),
                "pass": int(a2[j]),
                "seen": int(a_seen[j]),
                "in_groups": {
                    "agree": int(i0[j]),
                    "disagree": int(i1[j]),
                    "pass": int(i2[j]),
                    "seen": int(i_seen[j]),
                },
                "moderated_out": bool(mod_out[j]),
                "meta": bool(is_meta[j]),
                "projection": [_f(px[j]), _f(py[j])],
                "extremity": _f(extremity[j]),
            }
        out: dict = {
            "participants": len(pids),
            "statements": len(sids),
            "n_votes": int(self.n_votes),
            "in_conversation": [p for p, m in zip(pids, self.in_conv.tolist(), strict=True) if m],
            "user_vote_counts": {
                _key(p): int(c) for p, c in zip(pids, self.user_vote_counts.tolist(), strict=True)
            },
            "pca": {
                "statements": list(sids),
                "center": self.center.tolist(),
                "components": self.components.tolist(),
                "eigenvalues": self.eigenvalues.tolist(),
            },
            "projections": {
                _key(p): [_f(x), _f(y)]
                for p, (x, y) in zip(pids, self.projections.tolist(), strict=True)
            },
            "k": self.k,
            "silhouettes": {str(k): float(v) for k, v in self.silhouettes.items()},
            "groups": groups,
            "statement_stats": statements,
            "consensus": {
                d: [e["statement"] for e in self.consensus[d]] for d in ("agree", "disagree")
            },
            "consensus_details": self.consensus,
            "group_informed_consensus": {
                s: _f(v) for s, v in zip(sk, self.gac.tolist(), strict=True)
            },
            "bridging": {s: _f(v) for s, v in zip(sk, self.bridging.tolist(), strict=True)},
            "divisive": list(self.divisive),
            "divisiveness": {
                s: _f(v) for s, v in zip(sk, self.divisiveness.tolist(), strict=True) if v == v
            },
            "priorities": {_key(s): float(v) for s, v in self.priorities.items()},
            "stability": self._stability_dict(),
            "organisations": self.organisations,
            "params": self.params.to_dict(),
        }
        return out

    def _stability_dict(self) -> dict | None:
        st = self.stability
        if st is None:
            return None
        sk = [_key(s) for s in self.statement_ids]
        iv = st["intervals"]
        gac_l, bridging_l = iv["gac"].tolist(), iv["bridging"].tolist()
        share_l, cf_l = iv["agree_share"].tolist(), st["consensus_frequency"].tolist()
        return {
            "method": "Poisson bootstrap over participant buckets; see deliberate.analysis."
            "stability",
            "replicates": st["replicates"],
            "buckets": st["buckets"],
            "level": self.params.stability_level,
            "participants": {
                _key(p): float(f)
                for p, f in zip(self.participant_ids, st["member_frequency"].tolist(), strict=True)
                if f == f
            },
            "groups": {
                _key(g): float(f)
                for g, f in zip(self.group_ids, st["group_frequency"].tolist(), strict=True)
            },
            "statements": {
                s: {
                    "gac": gac_l[j],
                    "bridging": bridging_l[j],
                    "agree_share": share_l[j],
                    "consensus_frequency": float(cf_l[j]),
                }
                for j, s in enumerate(sk)
            },
        }


# ---------------------------------------------------------------------------- helpers
def _mask_of(ids: list, wanted: Iterable) -> np.ndarray:
    w = set(wanted)
    if not w:
        return np.zeros(len(ids), dtype=bool)
    w |= {str(x) for x in w}
    return np.fromiter(((s in w) or (str(s) in w) for s in ids), bool, len(ids))


def _clusters_from_state(st: Any) -> list[tuple[int, list]]:
    if not st:
        return []
    return [(int(i), list(m)) for i, m in zip(st["id"], st["members"], strict=True)]


def _prev_components(state: dict, col_index: dict, n_cols: int) -> np.ndarray | None:
    p = state.get("pca") if state else None
    if not p or not p.get("statements"):
        return None
    prev = np.zeros((2, n_cols))
    comps = p["components"]
    for i, s in enumerate(p["statements"]):
        j = col_index.get(s)
        if j is not None:
            prev[0, j], prev[1, j] = comps[0][i], comps[1][i]
    return prev if prev.any() else None


def _members_by_label(keys: np.ndarray, labels: np.ndarray, n: int) -> list[list]:
    """keys[labels == i].tolist() for i in 0..n-1, in key order within each label (one stable
    sort, one conversion to Python objects, then list slices)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n + 1)).tolist()
    flat = keys[order].tolist()
    return [flat[bounds[i] : bounds[i + 1]] for i in range(n)]


def _fold(cl: Clustering, keys: list[list]) -> dict:
    return {"id": cl.ids.tolist(), "members": keys}


# ---------------------------------------------------------------------------- main entry
def run_analysis(
    votes: Votes,
    moderation: Moderation | None = None,
    state: Mapping[str, Any] | None = None,
    params: Params | None = None,
    organisation_of: Mapping[Any, Any] | None = None,
    seed: int = 0,
    statements: Iterable[Any] | None = None,
) -> AnalysisResult:
    """Run one update of the opinion analysis.

    Parameters
    ----------
    votes : latest votes (``Votes.from_arrays``).
    moderation : statement moderation sets (rejected / meta are moderated out).
    state : ``result.state`` of the previous update, or None for a cold start.
    params : constants (``Params()`` = Pol.is's).
    organisation_of : optional {participant id: organisation id}.
    seed : seed of the bootstrap (the only randomness).
    statements : optional ids of every statement of the round; those with no votes yet get the
        explicit prior priority (49 if meta).

    Returns
    -------
    AnalysisResult (``.to_dict()``, ``.state``, ``.priorities``, ``.group_of(pid)``).
    """
    moderation = moderation or Moderation()
    params = params or Params()
    state = dict(state or {})
    if state.get("version") not in (None, STATE_VERSION):
        state = {}
    rng = np.random.default_rng(seed)
    pids = votes.participant_ids.tolist()
    sids = votes.statement_ids.tolist()
    n_rows, n_cols = votes.n_rows, votes.n_cols
    col_index = votes.col_index()

    mod_out = _mask_of(sids, moderation.mod_out)
    is_meta = _mask_of(sids, moderation.meta)

    # --- in-conversation set (grows; persisted)
    uvc = votes.row_counts()
    prev_in = np.zeros(n_rows, dtype=bool)
    if state.get("in_conv"):
        row_index = votes.row_index()  # only needed with a previous state
        for p in state["in_conv"]:
            i = row_index.get(p)
            if i is not None:
                prev_in[i] = True
    in_conv = in_conversation(uvc, n_cols, prev_in, params.min_votes_in_conv, params.min_in_conv)

    # --- PCA, projections
    prev_comps = _prev_components(state, col_index, n_cols)
    pca = fit_pca(
        votes,
        mod_out,
        prev_comps,
        gram_max_statements=params.gram_max_statements,
        float32_cells=params.pca_float32_cells,
        gram_cost_factor=params.gram_cost_factor,
    )
    proj = project_participants(votes, pca.center, pca.components, mod_out)
    sproj, extremity = project_statements(pca.center, pca.components)

    # --- base clusters (k = 100) on in-conversation participants
    ic = np.flatnonzero(in_conv)
    pts = proj[ic]
    keys = votes.participant_ids[ic]
    prev_base = _clusters_from_state(state.get("base_clusters"))
    init = clean_start(pts, keys, params.base_k, prev_base) if prev_base and ic.size else None
    if init is None:
        base = polis_kmeans(pts, params.base_k, params.base_iters)
    else:
        base = polis_kmeans(
            pts, params.base_k, params.base_iters, init_ids=init[0], init_centers=init[1]
        )
    # Pol.is keeps base clusters sorted by id; group k-means cold-starts in that order.
    order = np.argsort(base.ids, kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    base = Clustering(
        base.ids[order], base.centers[order], inv[base.labels] if ic.size else base.labels
    )
    n_base = base.ids.size
    base_sizes = np.bincount(base.labels, minlength=n_base).astype(np.float64)
    base_of_row = np.full(n_rows, -1, np.int64)
    base_of_row[ic] = base.labels

    # --- group clusterings for every allowed k, silhouette, smoother
    n_distinct = _n_distinct(base.centers) if n_base else 0
    max_k = min(params.max_k, max_group_k(n_base))
    ks = [k for k in range(2, max_k + 1) if k <= n_distinct]
    prev_gc = state.get("group_clusterings") or {}
    clusterings: dict[int, Clustering] = {}
    sils: dict[int, float] = {}
    base_keys = base.ids
    dist = None  # base-centre distances, shared by the silhouettes of every k
    cold: list[int] = []
    for k in ks:
        prev = _clusters_from_state(prev_gc.get(str(k)))
        init = clean_start(base.centers, base_keys, k, prev, weights=base_sizes) if prev else None
        if init is None:
            cold.append(k)
        else:
            clusterings[k] = polis_kmeans(
                base.centers,
                k,
                params.group_iters,
                weights=base_sizes,
                init_ids=init[0],
                init_centers=init[1],
            )
    if cold:
        # Pol.is's cold start for each k, plus (deliberate) the seeded restarts; all the k-means
        # of all those k run in one batch (cold_group_clusterings = best_of_restarts per k).
        restarts = params.cold_restarts if ic.size > params.cold_restarts_min_participants else 0
        clusterings.update(
            cold_group_clusterings(base.centers, base_sizes, cold, params.group_iters, restarts)
        )
    clusterings = {k: clusterings[k] for k in ks}
    for k in ks:
        if dist is None:
            dist = _pairwise(base.centers)
        sils[k] = silhouette(base.centers, clusterings[k].labels, dist)
    smoother = state.get("smoother")
    if ks:
        best = max(sils.values())
        this_k = max(k for k in ks if sils[k] == best)  # ties -> larger k (Clojure max-key)
        smoother = smooth_k(this_k, smoother, params.k_buffer, allowed=ks)
        chosen = clusterings[smoother["smoothed_k"]]
    else:
        chosen = None

    # --- groups with stable public ids (matched to the previous snapshot by member overlap)
    if chosen is not None:
        k = chosen.ids.size
        prev_groups = state.get("groups") or []
        prev_ids = [g["id"] for g in prev_groups]
        overlap = np.zeros((k, len(prev_groups)))
        if prev_groups:
            prev_group_of: dict = {}
            for gi, g in enumerate(prev_groups):
                for p in g.get("members", []):
                    prev_group_of[p] = gi
            gor = chosen.labels[base.labels]
            for pos, p in enumerate(keys.tolist()):
                pg = prev_group_of.get(p)
                if pg is not None:
                    overlap[gor[pos], pg] += 1
            public = match_ids(overlap, prev_ids)
        else:
            public = chosen.ids.tolist()  # cold start: Pol.is's ids 0..k-1
        gorder = np.argsort(np.asarray(public), kind="stable")
        ginv = np.empty_like(gorder)
        ginv[gorder] = np.arange(k)
        group_ids = [public[i] for i in gorder.tolist()]
        group_of_base = ginv[chosen.labels]
        group_centers = chosen.centers[gorder]
    else:
        k = 0
        group_ids = []
        group_of_base = np.zeros(n_base, np.int64)
        group_centers = np.zeros((0, 2))
    group_of_row = np.full(n_rows, -1, np.int64)
    if k:
        group_of_row[ic] = group_of_base[base.labels]

    # --- counts and Pol.is statistics
    # in-conv group members (raw matrix) and every participant, in one pass over the votes
    gv, av = counts_with_total(votes, group_of_row, k)
    if k:
        gac = group_informed_consensus(gv)
    else:
        icv = group_counts(votes, np.where(in_conv, 0, -1), 1)
        gac = group_informed_consensus(icv)
    repness = select_repness(gv, mod_out, sids, params.repness_max) if k else []
    consensus = consensus_lists(av[0], av[1], av.sum(axis=0), mod_out, sids, params.consensus_max)
    tot = gv.sum(axis=1) if k else np.zeros((3, n_cols))
    prio = priorities(tot[0], tot[1], tot.sum(axis=0), extremity, is_meta, params.meta_priority)
    extra: dict = {}
    if statements is not None:
        meta = moderation.meta
        for s in statements:
            if s not in col_index:
                extra[s] = params.meta_priority**2 if s in meta else params.unseen_priority
    bridging = (
        bridging_scores(gv)
        if k
        else bridging_scores(group_counts(votes, np.where(in_conv, 0, -1), 1))
    )
    div = divisiveness(gv, mod_out, params.divisive_min_votes) if k else np.full(n_cols, np.nan)
    elig = np.flatnonzero(div > 0)  # NaN (not eligible) compares False
    div_order = elig[np.argsort(-div[elig], kind="stable")][: params.divisive_max]
    divisive = [sids[j] for j in div_order.tolist()]

    orgs = (
        _org.organisation_view(votes, organisation_of, mod_out, params.consensus_max)
        if organisation_of is not None
        else None
    )

    # --- stability (bootstrap)
    stab = None
    if params.bootstrap_replicates > 0 and n_rows and n_cols:
        seen_all = av.sum(axis=0)
        share = np.where(seen_all > 0, av[0] / np.maximum(seen_all, 1), 0.0)
        cdir = np.zeros(n_cols)
        for e in consensus["agree"]:
            cdir[col_index[e["statement"]]] = 1
        for e in consensus["disagree"]:
            cdir[col_index[e["statement"]]] = -1
        stab = bootstrap(
            votes,
            group_of_row,
            k,
            base_of_row,
            base.ids,
            base.centers,
            proj,
            group_of_base,
            group_centers,
            mod_out,
            {"gac": gac, "bridging": bridging, "agree_share": share},
            cdir,
            in_conv,
            replicates=params.bootstrap_replicates,
            buckets=params.bootstrap_buckets,
            level=params.stability_level,
            group_iters=params.group_iters,
            consensus_max=params.consensus_max,
            rng=rng,
        )

    # --- state for the next update
    new_state = {
        "version": STATE_VERSION,
        "in_conv": votes.participant_ids[in_conv].tolist(),
        "pca": {"statements": list(sids), "components": pca.components.tolist()},
        "base_clusters": {
            "id": base.ids.tolist(),
            "members": _members_by_label(keys, base.labels, n_base),
        },
        "group_clusterings": {
            str(kk): {
                "id": cl.ids.tolist(),
                "members": _members_by_label(base.ids, cl.labels, cl.ids.size),
            }
            for kk, cl in clusterings.items()
        },
        "smoother": smoother,
        "groups": [
            {"id": g, "members": members}
            for g, members in zip(
                group_ids, _members_by_label(keys, group_of_row[ic], len(group_ids)), strict=True
            )
        ],
        "last_created": votes.last_created
        if not isinstance(votes.last_created, np.generic)
        else votes.last_created.item(),
    }

    return AnalysisResult(
        participant_ids=pids,
        statement_ids=sids,
        n_votes=votes.nnz,
        params=params,
        in_conv=in_conv,
        user_vote_counts=uvc,
        mod_out=mod_out,
        is_meta=is_meta,
        center=pca.center,
        components=pca.components,
        eigenvalues=pca.eigenvalues,
        projections=proj,
        statement_projection=sproj,
        extremity=extremity,
        base_ids=base.ids,
        base_centers=base.centers,
        base_of_row=base_of_row,
        group_ids=group_ids,
        group_of_row=group_of_row,
        group_centers=group_centers,
        group_of_base=group_of_base,
        silhouettes=sils,
        k=k,
        group_votes=gv,
        all_votes=av,
        repness=repness,
        consensus=consensus,
        gac=gac,
        bridging=bridging,
        divisiveness=div,
        divisive=divisive,
        priority_values=prio,
        extra_priorities=extra,
        organisations=orgs,
        stability=stab,
        state=new_state,
    )
