"""Benchmark of deliberate's opinion analysis against red-dwarf 0.4.0.

For every case (synthetic conversations with known groups, Pol.is's largest real shape, and every
real conversation in ../shared/data/polis-opendata) it measures, each call in a fresh subprocess
pinned to one CPU with one BLAS/OpenMP thread:

* deliberate: ``Votes.from_arrays`` + ``run_analysis`` (wall time, peak resident memory);
* red-dwarf 0.4.0: ``reddwarf.implementations.polis.run_pipeline`` on the same votes;

and prints the ratio, the number of groups found and the adjusted Rand index of the groups
against the known groups (the generator's latent groups, or Pol.is's own group-id column for
real conversations). Benchmarks print figures; they never assert. See bench/README.md.

Usage: ``.venv/bin/python bench/analysis.py [--sizes ...] [--skip-reddwarf] [--smoke] ...``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# numpy is imported lazily: in a worker, the thread environment and the CPU affinity are set
# before numpy (and its BLAS) is loaded.

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "polis-opendata"
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Named synthetic cases: (participants, statements, total votes or None, latent groups).
SYNTHETIC = {
    "1000x100": (1_000, 100, None, 3),
    "5000x300": (5_000, 300, None, 4),
    "20000x1000": (20_000, 1_000, None, 5),
    "50000x2000": (50_000, 2_000, None, 4),
    # Pol.is's largest real conversation: 33,422 participants, 783 statements, ~2M votes.
    "polis": (33_422, 783, 2_000_000, 4),
}
DEFAULT_SIZES = ["1000x100", "5000x300", "20000x1000", "50000x2000", "polis", "real"]
SMOKE_SIZE = "1000x100"

TARGET_RATIO = 10.0
TARGET_POLIS_S = 1.0
TARGET_BIG_S = 10.0
TARGET_BIG_MB = 3000.0  # 3 GB (decimal), peak resident set of the whole process


# --------------------------------------------------------------------------------------------
# Worker side: runs in a fresh interpreter, one measured call, writes a JSON result file.
# --------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb(reset_ok: bool) -> float:
    import resource

    hwm = _status_kib("VmHWM") if reset_ok else None
    if hwm is None:  # fall back to the lifetime maximum of the process
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return hwm * 1024 / 1e6


def _ari_against_truth(np, pids, labels, truth_pid, truth_label) -> float | None:
    """ARI over participants that are both grouped and have a known group."""
    sys.path.insert(0, str(BENCH_DIR))
    from synthetic import adjusted_rand_index

    if len(pids) == 0 or len(truth_pid) == 0:
        return None
    pids = np.asarray(pids, dtype=np.int64)
    labels = np.asarray(labels)
    order = np.argsort(truth_pid, kind="stable")
    tp = np.asarray(truth_pid, dtype=np.int64)[order]
    tl = np.asarray(truth_label)[order]
    pos = np.searchsorted(tp, pids)
    pos = np.clip(pos, 0, max(len(tp) - 1, 0))
    known = tp[pos] == pids
    if known.sum() < 2:
        return None
    return float(adjusted_rand_index(labels[known], tl[pos[known]]))


def _warm_up(fn) -> None:
    """One untimed call on a small conversation, so that lazy imports (numpy.ma, numpy.random,
    scipy/sklearn submodules...) and first-call caches are not charged to the measured call,
    as in a long-running analysis worker. 300 x 30 with 3 groups: large enough that every code
    path of both engines runs (a full set of base clusters, the group clusterings' restarts,
    the bootstrap); the tiny 60 x 12 used before left some first calls to the measured run.
    Both engines get the same treatment; disabled by --no-warmup."""
    if os.environ.get("DELIBERATE_BENCH_WARMUP", "1") != "1":
        return
    sys.path.insert(0, str(BENCH_DIR))
    from synthetic import generate

    fn(generate(300, 30, n_groups=3, seed=12345))


def _latest_wins(np, p, s, v, created):
    """Deduplicate (participant, statement) keeping the latest vote (red-dwarf's pivot refuses
    duplicates). Not timed."""
    n = p.shape[0]
    if created is None:
        created = np.arange(n)
    order = np.lexsort((np.arange(n), created, s, p))
    p2, s2 = p[order], s[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = (p2[1:] != p2[:-1]) | (s2[1:] != s2[:-1])
    keep = order[last]
    keep.sort()
    return p[keep], s[keep], v[keep]


def _build_moderation(mod_out, meta):
    """deliberate's Moderation from lists of statement ids (rejected = Pol.is mod -1)."""
    from deliberate.analysis import Moderation

    return Moderation(rejected=frozenset(mod_out), meta=frozenset(meta))


def _group_members(res: dict):
    """(participant ids, group labels) from deliberate's result.to_dict()."""
    pids, labels = [], []
    for i, g in enumerate(res.get("groups", [])):
        gid = g.get("id", i)
        for m in g.get("members", []):
            pids.append(int(m))
            labels.append(gid)
    return pids, labels


def _run_ours(np, d, out: dict, profile: bool, core: bool = False) -> None:
    from deliberate.analysis import Params, Votes, run_analysis

    p, s, v = d["participant"], d["statement"], d["value"]
    created = d.get("created", None)
    moderation = _build_moderation(d["mod_out"].tolist(), d["meta"].tolist())
    defaults = Params()
    overrides = {}
    for item in json.loads(os.environ.get("DELIBERATE_BENCH_PARAMS", "[]")):
        key, _, raw = item.partition("=")
        overrides[key] = type(getattr(defaults, key))(raw)
    if core:
        # The core analysis: everything but the stability bootstrap (which red-dwarf does not
        # compute either); the app's snapshots include it.
        overrides["bootstrap_replicates"] = 0
    params = Params(**overrides)
    out["params"] = overrides

    def call(p=p, s=s, v=v, created=created, moderation=moderation):
        votes = Votes.from_arrays(p, s, v, created=created)
        return run_analysis(votes, moderation=moderation, state=None, params=params, seed=0)

    _warm_up(lambda w: call(w.participant, w.statement, w.value, None, _build_moderation([], [])))
    out["base_mb"] = (_status_kib("VmRSS") or 0) * 1024 / 1e6
    reset_ok = _reset_peak()
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile(time.process_time)  # CPU time: robust to a shared CPU
        c0, t0 = time.process_time(), time.perf_counter()
        result = prof.runcall(call)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        out["profile"] = buf.getvalue()
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        result = call()
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
    out["peak_mb"] = _peak_mb(reset_ok)
    t1 = time.perf_counter()
    res = result.to_dict()
    out["to_dict_seconds"] = time.perf_counter() - t1
    pids, labels = _group_members(res)
    out["groups"] = len(res.get("groups", []))
    out["grouped"] = len(pids)
    out["ari"] = _ari_against_truth(np, pids, labels, d["truth_pid"], d["truth_label"])


def _run_reddwarf(np, d, out: dict, profile: bool) -> None:
    import pandas  # noqa: F401  (imported before timing, like deliberate's own imports)
    from reddwarf.implementations.polis import run_pipeline

    created = d.get("created", None)
    p, s, v = _latest_wins(np, d["participant"], d["statement"], d["value"], created)
    # red-dwarf's run_pipeline takes "a list of vote dicts" and only builds a DataFrame from it
    # (pd.DataFrame.from_dict + pivot). A dict of columns is the same DataFrame without tens of
    # millions of Python dicts, so it is the kindest input for red-dwarf. Agree = +1 as we store.
    votes = {"participant_id": p, "statement_id": s, "vote": v}
    mod_out = d["mod_out"].tolist()
    meta = d["meta"].tolist()

    def call(votes=votes, mod_out=mod_out, meta=meta):
        return run_pipeline(
            votes=votes, mod_out_statement_ids=mod_out, meta_statement_ids=meta, random_state=0
        )

    _warm_up(
        lambda w: call(
            {"participant_id": w.participant, "statement_id": w.statement, "vote": w.value}, [], []
        )
    )

    out["base_mb"] = (_status_kib("VmRSS") or 0) * 1024 / 1e6
    reset_ok = _reset_peak()
    c0, t0 = time.process_time(), time.perf_counter()
    result = call()
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0
    out["peak_mb"] = _peak_mb(reset_ok)
    cid = result.participants_df["cluster_id"].dropna()
    out["groups"] = int(cid.nunique())
    out["grouped"] = int(cid.shape[0])
    out["ari"] = _ari_against_truth(
        np, cid.index.to_numpy(), cid.to_numpy(dtype=np.int64), d["truth_pid"], d["truth_label"]
    )


def worker_main(engine: str, datafile: str, outfile: str, cpu: int | None, profile: bool) -> int:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    for var in THREAD_VARS:
        os.environ[var] = "1"
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")
    out: dict = {"engine": engine, "ok": False}
    try:
        with np.load(datafile) as z:
            d = {k: z[k] for k in z.files}
        if engine == "ours":
            _run_ours(np, d, out, profile)
        elif engine == "ours-core":
            _run_ours(np, d, out, profile, core=True)
        elif engine == "reddwarf":
            _run_reddwarf(np, d, out, profile)
        else:
            raise ValueError(engine)
        out["ok"] = True
    except MemoryError:
        out["error"] = "MemoryError (over the memory limit)"
    except Exception as exc:  # reported, not raised: the parent prints it
        import traceback

        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
    with open(outfile, "w") as fh:
        json.dump(out, fh)
    return 0 if out["ok"] else 1


# --------------------------------------------------------------------------------------------
# Parent side: cases, data files, subprocesses, table.
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    kind: str  # "synthetic" | "real"
    participants: int = 0
    statements: int = 0
    votes: int = 0
    total_votes: int | None = None
    groups: int = 4
    path: Path | None = None
    results: dict = field(default_factory=dict)  # engine -> list of result dicts


def parse_sizes(spec: list[str], data_dir: Path, groups_override: int | None) -> list[Case]:
    cases: list[Case] = []
    for item in spec:
        for name in [x for x in item.split(",") if x]:
            if name == "real":
                if not data_dir.is_dir():
                    print(f"note: {data_dir} not found, skipping real conversations")
                    continue
                for conv in sorted(p for p in data_dir.iterdir() if (p / "votes.csv").exists()):
                    cases.append(Case(name=conv.name, kind="real", path=conv))
            elif (data_dir / name / "votes.csv").exists():
                cases.append(Case(name=name, kind="real", path=data_dir / name))
            elif name in SYNTHETIC:
                n_p, n_s, tv, g = SYNTHETIC[name]
                cases.append(
                    Case(
                        name=name,
                        kind="synthetic",
                        participants=n_p,
                        statements=n_s,
                        total_votes=tv,
                        groups=groups_override or g,
                    )
                )
            else:
                parts = name.lower().split("x")
                try:
                    nums = [int(x.replace("_", "")) for x in parts]
                except ValueError:
                    raise SystemExit(
                        f"unknown size {name!r}: use PxS, PxSxVOTES, 'polis', "
                        f"'real' or a conversation folder name"
                    ) from None
                if len(nums) not in (2, 3):
                    raise SystemExit(f"unknown size {name!r}")
                cases.append(
                    Case(
                        name=name,
                        kind="synthetic",
                        participants=nums[0],
                        statements=nums[1],
                        total_votes=nums[2] if len(nums) == 3 else None,
                        groups=groups_override or 4,
                    )
                )
    return cases


def _read_real_fallback(folder: Path):
    """Minimal Pol.is export reader (used only if deliberate.polis_io is unavailable)."""
    import numpy as np

    p, s, v, t = [], [], [], []
    with open(folder / "votes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            p.append(int(row["voter-id"]))
            s.append(int(row["comment-id"]))
            v.append(int(row["vote"]))
            t.append(int(row["timestamp"]))
    mod_out = []
    with open(folder / "comments.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["moderated"]) == -1:
                mod_out.append(int(row["comment-id"]))
    return (
        np.array(p, np.int32),
        np.array(s, np.int32),
        np.array(v, np.int8),
        np.array(t, np.int64),
        sorted(mod_out),
        [],
    )


def _read_real(folder: Path):
    """Votes and moderation of a Pol.is export folder, through deliberate.polis_io if present
    (falls back to a minimal reader so red-dwarf can be measured without it)."""
    import numpy as np

    try:
        from deliberate.polis_io import read_polis_export
    except ImportError:
        return _read_real_fallback(folder) + ("bench fallback reader",)
    conv = read_polis_export(folder)
    created = np.asarray(conv.created, dtype=np.float64)
    if np.isnan(created).any():
        created = None
    return (
        np.asarray(conv.participant),
        np.asarray(conv.statement),
        np.asarray(conv.value, dtype=np.int8),
        created,
        sorted(conv.rejected),
        sorted(conv.meta),
        "deliberate.polis_io.read_polis_export",
    )


def _read_polis_groups(folder: Path):
    pids, labels = [], []
    path = folder / "participants-votes.csv"
    if not path.exists():
        return pids, labels
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            g = (row.get("group-id") or "").strip()
            if g != "":
                pids.append(int(row["participant"]))
                labels.append(int(g))
    return pids, labels


def prepare(case: Case, tmp: Path, seed: int) -> Path:
    """Write the case's votes (and known groups) to an .npz file the workers load."""
    import numpy as np

    sys.path.insert(0, str(BENCH_DIR))
    from synthetic import generate

    datafile = tmp / f"{case.name}.npz"
    if case.kind == "synthetic":
        t0 = time.perf_counter()
        conv = generate(
            case.participants,
            case.statements,
            n_groups=case.groups,
            seed=seed,
            total_votes=case.total_votes,
        )
        case.votes = conv.n_votes
        case.results["generate_seconds"] = time.perf_counter() - t0
        arrays = {
            "participant": conv.participant,
            "statement": conv.statement,
            "value": conv.value,
            "truth_pid": np.arange(conv.n_participants, dtype=np.int32),
            "truth_label": conv.group.astype(np.int32),
            "mod_out": np.zeros(0, np.int32),
            "meta": np.zeros(0, np.int32),
        }
        del conv
    else:
        p, s, v, created, mod_out, meta, source = _read_real(case.path)
        tp, tl = _read_polis_groups(case.path)
        case.participants = int(np.unique(p).size)
        case.statements = int(np.unique(s).size)
        case.votes = int(p.size)
        case.results["reader"] = source
        arrays = {
            "participant": p,
            "statement": s,
            "value": v,
            "truth_pid": np.array(tp, np.int32),
            "truth_label": np.array(tl, np.int32),
            "mod_out": np.array(mod_out, np.int32),
            "meta": np.array(meta, np.int32),
        }
        if created is not None:
            arrays["created"] = created
    np.savez(datafile, **arrays)
    return datafile


def run_worker(
    engine: str,
    datafile: Path,
    tmp: Path,
    cpu: int | None,
    timeout: float,
    mem_limit_gb: float | None,
    profile: bool,
    params: list[str] | None = None,
    warmup: bool = True,
    nice: int = 0,
) -> dict:
    outfile = tmp / f"{datafile.stem}.{engine}.json"
    if outfile.exists():
        outfile.unlink()
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env["PYTHONHASHSEED"] = "0"
    env["DELIBERATE_BENCH_PARAMS"] = json.dumps(params or [])
    env["DELIBERATE_BENCH_WARMUP"] = "1" if warmup else "0"

    def preexec():
        if nice:
            # With scheduler autogroups (one per session), nice only ranks processes within
            # their session: give the measured process its own session and set that group's
            # nice too. Only the measured process is affected.
            os.setsid()
            try:
                with open("/proc/self/autogroup", "w") as fh:
                    fh.write(str(nice))
            except OSError:
                pass
            os.nice(nice)
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        if mem_limit_gb:
            import resource

            lim = int(mem_limit_gb * 1024**3)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_worker",
        engine,
        str(datafile),
        str(outfile),
    ]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if profile:
        cmd += ["--profile"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(PROJECT_ROOT),
        )
    except subprocess.TimeoutExpired:
        return {"engine": engine, "ok": False, "timeout": True, "seconds": timeout}
    wall = time.perf_counter() - t0
    if outfile.exists():
        with open(outfile) as fh:
            out = json.load(fh)
    else:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        out = {
            "engine": engine,
            "ok": False,
            "error": f"worker exited with status {proc.returncode}: " + " | ".join(tail),
        }
    out["process_seconds"] = wall
    return out


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def _summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    if ok:
        return {
            "ok": True,
            # Best of N, as timeit does: a shared CPU only ever adds time.
            "seconds": min(r["seconds"] for r in ok),
            "median_seconds": statistics.median(r["seconds"] for r in ok),
            "cpu_seconds": min(r["cpu_seconds"] for r in ok),
            "peak_mb": max(r["peak_mb"] for r in ok),
            "base_mb": max(r.get("base_mb", 0.0) for r in ok),
            "groups": ok[0].get("groups"),
            "grouped": ok[0].get("grouped"),
            "ari": ok[0].get("ari"),
            "runs": len(ok),
        }
    if runs and any(r.get("timeout") for r in runs):
        return {"ok": False, "timeout": True, "seconds": runs[0]["seconds"]}
    if runs:
        return {"ok": False, "error": runs[0].get("error", "failed")}
    return {"ok": False, "skipped": True}


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


CONTENDED = 0.85  # cpu / wall below this: the pinned CPU was shared with other processes


def _cell_time(s: dict) -> str:
    if s.get("ok"):
        mark = "*" if s["cpu_seconds"] < CONTENDED * s["seconds"] else ""
        return _fmt_s(s["seconds"]) + mark
    if s.get("timeout"):
        return f"> {s['seconds']:.0f} s (timeout)"
    if s.get("skipped"):
        return "skipped"
    err = s.get("error", "")
    return "out of memory" if "MemoryError" in err or "Cannot allocate" in err else "error"


def _cell_cpu(s: dict) -> str:
    return _fmt_s(s["cpu_seconds"]) if s.get("ok") else "-"


def _cell_mb(s: dict) -> str:
    return f"{s['peak_mb']:.0f}" if s.get("ok") else "-"


def _cell_k_ari(s: dict) -> str:
    if not s.get("ok"):
        return "-"
    ari = s.get("ari")
    return f"{s.get('groups')} / " + ("-" if ari is None else f"{ari:.2f}")


def _ratio(ours: dict, rd: dict, key: str) -> tuple[str, float | None]:
    if not ours.get("ok") or ours.get(key, 0) <= 0:
        return "-", None
    if rd.get("ok"):
        r = rd[key] / ours[key]
        return f"{r:.1f}x", r
    if rd.get("timeout") and key == "seconds":
        r = rd["seconds"] / ours["seconds"]
        return f"> {r:.1f}x", r
    return "-", None


def _check(name: str, wall_ok: bool, cpu_ok: bool | None) -> str:
    """One target: judged on wall time; '(cpu yes)' when only the CPU-time estimate meets it."""
    if wall_ok:
        return f"{name} yes"
    return f"{name} NO" + (" (cpu yes)" if cpu_ok else "")


def _targets(
    case: Case,
    ours: dict,
    rd: dict,
    ratio: float | None,
    cpu_ratio: float | None,
    core: dict | None = None,
    core_ratio: float | None = None,
    core_cpu_ratio: float | None = None,
) -> str:
    checks = []
    if core_ratio is not None:
        checks.append(
            _check(
                ">=10x core",
                core_ratio >= TARGET_RATIO,
                core_cpu_ratio is not None and core_cpu_ratio >= TARGET_RATIO,
            )
        )
    if ratio is not None:
        checks.append(
            _check(
                ">=10x" + (" full" if core_ratio is not None else ""),
                ratio >= TARGET_RATIO,
                cpu_ratio is not None and cpu_ratio >= TARGET_RATIO,
            )
        )
    elif ours.get("ok") and not rd.get("skipped"):
        checks.append(">=10x ?")
    if ours.get("ok") and case.name == "polis":
        checks.append(
            _check("<1s", ours["seconds"] < TARGET_POLIS_S, ours["cpu_seconds"] < TARGET_POLIS_S)
        )
    if (
        ours.get("ok")
        and case.kind == "synthetic"
        and (case.participants, case.statements) == (50_000, 2_000)
    ):
        checks.append(
            _check("<10s", ours["seconds"] < TARGET_BIG_S, ours["cpu_seconds"] < TARGET_BIG_S)
        )
        checks.append(_check("<3GB", ours["peak_mb"] < TARGET_BIG_MB, None))
    if not ours.get("ok"):
        checks.append("n/a")
    return ", ".join(checks) if checks else "-"


def _label(case: Case) -> str:
    if case.kind == "synthetic":
        return f"{case.participants:,} x {case.statements:,}" + (
            " (Pol.is max)" if case.name == "polis" else ""
        )
    return f"{case.name} ({case.participants:,} x {case.statements:,})"


HEADER = (
    "size",
    "votes",
    "ours s",
    "ours cpu s",
    "ours MB",
    "red-dwarf s",
    "red-dwarf cpu s",
    "red-dwarf MB",
    "ratio",
    "cpu ratio",
    "k/ARI ours",
    "k/ARI rd",
    "core s",
    "core ratio",
    "targets",
)


def format_row(case: Case) -> tuple[str, ...]:
    ours = case.results.get("ours_summary", {"ok": False, "skipped": True})
    core = case.results.get("ours-core_summary", {"ok": False, "skipped": True})
    rd = case.results.get("reddwarf_summary", {"ok": False, "skipped": True})
    ratio_txt, ratio = _ratio(ours, rd, "seconds")
    cpu_ratio_txt, cpu_ratio = _ratio(ours, rd, "cpu_seconds")
    core_ratio_txt, core_ratio = _ratio(core, rd, "seconds")
    _, core_cpu_ratio = _ratio(core, rd, "cpu_seconds")
    return (
        _label(case),
        f"{case.votes:,}",
        _cell_time(ours),
        _cell_cpu(ours),
        _cell_mb(ours),
        _cell_time(rd),
        _cell_cpu(rd),
        _cell_mb(rd),
        ratio_txt,
        cpu_ratio_txt,
        _cell_k_ari(ours),
        _cell_k_ari(rd),
        _cell_time(core) if not core.get("skipped") else "-",
        core_ratio_txt,
        _targets(case, ours, rd, ratio, cpu_ratio, core, core_ratio, core_cpu_ratio),
    )


def print_table(cases: list[Case]) -> None:
    rows = [HEADER] + [format_row(c) for c in cases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    left = (0, len(HEADER) - 1)

    def line(r):
        return (
            "| "
            + " | ".join(
                x.ljust(w) if i in left else x.rjust(w)
                for i, (x, w) in enumerate(zip(r, widths, strict=False))
            )
            + " |"
        )

    print(line(rows[0]))
    print("|" + "|".join(("-" * (w + 2)) for w in widths) + "|")
    for r in rows[1:]:
        print(line(r))


def machine_info(cpu: int | None) -> dict:
    from importlib import metadata

    import numpy as np

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = int(fh.readline().split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in ("numpy", "red-dwarf", "pandas", "scikit-learn", "scipy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "engine_sources": _engine_fingerprint(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "pinned_cpu": cpu,
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "numpy_blas": _blas_name(np),
    }


def _engine_fingerprint() -> str:
    """Short hash of deliberate/analysis/*.py, to tell which engine version was measured (the
    tree may have uncommitted changes)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "deliberate" / "analysis").glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _blas_name(np) -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark deliberate's run_analysis against red-dwarf 0.4.0 "
        "(see bench/README.md)."
    )
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        metavar="SIZE",
        help="cases, space or comma separated: 1000x100 5000x300 20000x1000 "
        "50000x2000 polis (33,422 x 783 x 2M votes), any PxS or PxSxVOTES, "
        "'real' (every conversation in --data) or one conversation folder "
        "name (default: all of them)",
    )
    ap.add_argument("--skip-reddwarf", action="store_true", help="measure deliberate only")
    ap.add_argument("--skip-ours", action="store_true", help="measure red-dwarf only")
    ap.add_argument(
        "--reddwarf-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="kill a red-dwarf run after this long and report a lower bound (default 600)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="same cap for deliberate's runs (default 600)",
    )
    ap.add_argument(
        "--mem-limit-gb",
        type=float,
        default=12.0,
        metavar="GB",
        help="address-space limit per measured process, so a run cannot take the "
        "machine down; 0 = none (default 12)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="fresh-process runs per engine and case; the table shows the best "
        "time and the largest peak (default 1)",
    )
    ap.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="CPU to pin the measured processes to (default: the last allowed one)",
    )
    ap.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    ap.add_argument(
        "--groups",
        type=int,
        default=None,
        help="latent groups in every synthetic case (default: 3-5 depending on size)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder of Pol.is export folders (default {DEFAULT_DATA})",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every measurement and the machine description as JSON",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run deliberate under cProfile (times include profiler overhead) and "
        "print its top functions",
    )
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one field of deliberate's Params for every run, e.g. "
        "--param bootstrap_replicates=0 (repeatable; default: Params())",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="nice increment of the measured processes; negative (needs privileges) "
        "raises their priority on a busy machine (default 0)",
    )
    ap.add_argument(
        "--no-warmup",
        action="store_true",
        help="do not make one untimed call on a tiny conversation before the "
        "measured one (then lazy imports count in the time)",
    )
    ap.add_argument(
        "--no-core",
        action="store_true",
        help="do not also measure deliberate's core analysis (Params(bootstrap_replicates=0): "
        "no stability bootstrap, the work red-dwarf does) next to the full one",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=f"quick check that the benchmark runs: {SMOKE_SIZE} only, no red-dwarf",
    )
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        engine, datafile, outfile = args._worker
        return worker_main(engine, datafile, outfile, args.cpu, args.profile)

    if args.smoke:
        args.sizes = [SMOKE_SIZE]
        args.skip_reddwarf = True
        args.no_core = True
        args.repeat = 1
    sizes = args.sizes or DEFAULT_SIZES
    cpu = args.cpu
    if cpu is None and hasattr(os, "sched_getaffinity"):
        cpu = max(os.sched_getaffinity(0))
    cases = parse_sizes(sizes, args.data, args.groups)
    engines = [] if args.skip_ours else ["ours"]
    if not args.skip_ours and not args.no_core:
        engines.append("ours-core")
    if not args.skip_reddwarf:
        import importlib.util

        if importlib.util.find_spec("reddwarf") is None:
            print(
                "note: red-dwarf is not installed, measuring deliberate only "
                "(pip install -e '.[bench]' installs red-dwarf 0.4.0)"
            )
        else:
            engines.append("reddwarf")

    info = machine_info(cpu)
    print(
        f"machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['memory_gb']} GB RAM; "
        f"measured processes pinned to CPU {cpu}, 1 BLAS/OpenMP thread, nice {args.nice}; Python "
        f"{info['python']}, numpy {info['versions']['numpy']} ({info['numpy_blas']}), "
        f"red-dwarf {info['versions']['red-dwarf']}, pandas {info['versions']['pandas']}, "
        f"scikit-learn {info['versions']['scikit-learn']}; deliberate/analysis sources "
        f"sha256 {info['engine_sources']}"
    )
    print(
        "command: "
        + " ".join(
            [Path(sys.executable).name, "bench/analysis.py"]
            + (argv if argv is not None else sys.argv[1:])
        )
    )
    print(flush=True)

    ours_crashed = False
    with tempfile.TemporaryDirectory(prefix="deliberate-bench-") as tmpname:
        tmp = Path(tmpname)
        for case in cases:
            datafile = prepare(case, tmp, args.seed)
            for engine in engines:
                timeout = args.reddwarf_timeout if engine == "reddwarf" else args.timeout
                runs = []
                for _ in range(max(1, args.repeat)):
                    r = run_worker(
                        engine,
                        datafile,
                        tmp,
                        cpu,
                        timeout,
                        args.mem_limit_gb or None,
                        args.profile and engine != "reddwarf",
                        args.param,
                        not args.no_warmup,
                        args.nice,
                    )
                    runs.append(r)
                    if not r.get("ok"):
                        break  # a timeout or an error repeats; do not wait for it again
                case.results[engine] = runs
                s = _summary(runs)
                case.results[f"{engine}_summary"] = s
                msg = _cell_time(s) + (
                    f" s (cpu {s['cpu_seconds']:.3f} s), peak {s['peak_mb']:.0f} MB"
                    if s.get("ok")
                    else ""
                )
                print(f"  {_label(case)} [{case.votes:,} votes] {engine}: {msg}", flush=True)
                if not s.get("ok") and not s.get("timeout"):
                    print(f"    {s.get('error')}", flush=True)
                    if engine != "reddwarf":
                        ours_crashed = True
                if runs and runs[0].get("profile"):
                    print(runs[0]["profile"])
            datafile.unlink()

    print()
    print_table(cases)
    print()
    print(
        "ours = deliberate Votes.from_arrays + run_analysis (default Params: the full "
        "analysis, including the 40-replicate stability bootstrap); core = the same without "
        "the stability bootstrap (Params(bootstrap_replicates=0)), the work red-dwarf does; "
        "red-dwarf = reddwarf.implementations.polis.run_pipeline. s = wall seconds, cpu s = "
        "CPU seconds "
        f"of the call (best of {max(1, args.repeat)} fresh process(es) each); * = the pinned "
        "CPU was shared (cpu < 85% of wall), trust cpu s. MB = peak resident set of the whole "
        "process during the call (10^6 bytes; input arrays and libraries included). ratio = "
        "red-dwarf / ours (wall; cpu ratio on CPU seconds). k/ARI = groups found / adjusted "
        "Rand index vs the known groups (synthetic: the generator's latent groups; real: "
        "Pol.is's own group-id). Targets are judged on wall time; '(cpu yes)' = met on CPU "
        "time only (i.e. the miss is due to a shared CPU)."
    )
    if args.json:
        payload = {
            "machine": info,
            "argv": argv if argv is not None else sys.argv[1:],
            "cases": [
                {
                    "name": c.name,
                    "kind": c.kind,
                    "participants": c.participants,
                    "statements": c.statements,
                    "votes": c.votes,
                    "latent_groups": c.groups if c.kind == "synthetic" else None,
                    "results": c.results,
                }
                for c in cases
            ],
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.json}")
    return 1 if ours_crashed else 0


if __name__ == "__main__":
    sys.exit(main())
