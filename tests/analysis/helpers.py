"""Shared helpers for the analysis tests: data locations, fixture loading, adjusted Rand index."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from deliberate.analysis import Moderation, Votes
from deliberate.polis_io import read_polis_folder

# ../shared/data relative to the project root (tests/analysis/helpers.py -> parents[2]).
DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
FIXTURES = DATA / "polis-math-fixtures"
OPENDATA = DATA / "polis-opendata"

FIXTURE_NAMES = ["below-100-ptpts", "25ptpt-3gp-no-strict-with-meta", "50ptpt-3gp-strict-no-meta"]
OPENDATA_NAMES = [
    "15-per-hour-seattle",
    "brexit-consensus",
    "canadian-electoral-reform",
    "football-concussions",
    "london.youth.policing",
    "scoop-hivemind.taxes",
    "scoop-hivemind.ubi",
]
BAD_FIXTURE = "50ptpt-3gp-strict-no-meta"  # misses 4 votes of pid 50: PCA-level values differ


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (expected ../shared/data next to the repo)")
    return path


@cache
def fixture(name: str):
    """(conversation, math-pca2 dict, Votes, Moderation) for a math fixture."""
    folder = require(FIXTURES / name)
    conv = read_polis_folder(folder)
    with open(folder / "math-pca2.json") as fh:
        math = json.load(fh)
    votes = Votes.from_arrays(conv.participant, conv.statement, conv.value, conv.created)
    mod = Moderation(rejected=conv.rejected, meta=conv.meta, accepted=conv.accepted)
    return conv, math, votes, mod


@cache
def export(name: str):
    folder = require(OPENDATA / name)
    conv = read_polis_folder(folder)
    votes = Votes.from_arrays(conv.participant, conv.statement, conv.value, conv.created)
    mod = Moderation(rejected=conv.rejected, meta=conv.meta, accepted=conv.accepted)
    return conv, votes, mod


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985), numpy only."""
    a = np.asarray(a)
    b = np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def comb2(x):
        x = np.asarray(x, dtype=np.float64)
        return (x * (x - 1) / 2).sum()

    n = a.size
    sum_ij = comb2(table)
    sa, sb = comb2(table.sum(axis=1)), comb2(table.sum(axis=0))
    expected = sa * sb / comb2([n]) if n > 1 else 0.0
    maximum = (sa + sb) / 2
    if maximum == expected:
        return 1.0
    return float((sum_ij - expected) / (maximum - expected))


def partition(groups) -> set[frozenset]:
    """A partition as a set of frozensets (label-free comparison)."""
    return {frozenset(g) for g in groups}


def fixture_groups(math: dict) -> list[list[int]]:
    """Participants of each fixture group (union of its base clusters' members), in group order."""
    bc = math["base-clusters"]
    members = dict(zip(bc["id"], bc["members"], strict=True))
    return [sorted(p for b in g["members"] for p in members[b]) for g in math["group-clusters"]]
