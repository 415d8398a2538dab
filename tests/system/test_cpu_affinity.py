"""The web processes' CPUs (deliberate.serving pre_fork/post_fork): with as many gunicorn
processes as CPUs each runs on a CPU of its own, a process started after a crash takes the CPU
its predecessor left, "off" leaves the placement to the kernel, and the in-process analysis
thread runs on every CPU the process had."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deliberate import serving
from tests.system.servers import (
    BIN,
    ProcessGroup,
    free_port,
    living_members,
    server_env,
    wait_for,
    wait_until_serving,
)

LINUX_AFFINITY = hasattr(os, "sched_getaffinity") and Path("/proc/self/status").exists()
two_cpus = pytest.mark.skipif(
    not LINUX_AFFINITY or len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs (Linux)"
)


# --- the choice, without processes ------------------------------------------------------


def test_a_new_process_takes_the_least_used_cpu():
    assert serving.choose_cpu([0, 1], []) == 0
    assert serving.choose_cpu([0, 1], [0]) == 1
    assert serving.choose_cpu([0, 1], [1]) == 0  # the one a crashed process left
    assert serving.choose_cpu([2, 5], [2, 5, 2]) == 5  # more processes than CPUs: spread
    assert serving.choose_cpu([0, 1], [None, 7]) == 0  # unknown or foreign CPUs count for none


def test_processes_are_pinned_only_with_at_least_one_per_cpu(monkeypatch):
    monkeypatch.delenv("DELIBERATE_WEB_CPU_AFFINITY", raising=False)
    assert serving.pins_processes(workers=2, cpus=2)
    assert serving.pins_processes(workers=4, cpus=2)
    assert not serving.pins_processes(workers=1, cpus=2)  # keeps both CPUs
    assert not serving.pins_processes(workers=2, cpus=1)
    monkeypatch.setenv("DELIBERATE_WEB_CPU_AFFINITY", "off")
    assert not serving.pins_processes(workers=2, cpus=2)
    monkeypatch.setenv("DELIBERATE_WEB_CPU_AFFINITY", "sometimes")
    with pytest.raises(SystemExit, match="DELIBERATE_WEB_CPU_AFFINITY"):
        serving.pins_processes(workers=2, cpus=2)


@two_cpus
def test_the_analysis_thread_leaves_the_pin_and_the_web_threads_keep_it():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    script = f"""
import json, os, threading
from deliberate import worker
os.sched_setaffinity(0, {set(cpus)!r})
worker.pin_process_to({cpus[1]})
seen = {{}}
def web():
    seen["web"] = sorted(os.sched_getaffinity(0))
def analysis():
    worker._unpin_this_thread()
    seen["analysis"] = sorted(os.sched_getaffinity(0))
for target in (web, analysis):
    t = threading.Thread(target=target)
    t.start()
    t.join()
seen["main"] = sorted(os.sched_getaffinity(0))
print(json.dumps(seen))
"""
    out = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"web": [cpus[1]], "analysis": cpus, "main": [cpus[1]]}


# --- real gunicorn ------------------------------------------------------------------------


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _allowed_cpus(tid: int, pid: int | None = None) -> set[int]:
    """The CPUs a process (or one thread of process `pid`) may run on."""
    status = Path(f"/proc/{pid}/task/{tid}/status" if pid else f"/proc/{tid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                first, _, last = part.partition("-")
                cpus.update(range(int(first), int(last or first) + 1))
            return cpus
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def _web_processes(server: ProcessGroup) -> list[int]:
    master = server.process.pid
    return sorted(pid for pid in living_members(master) if pid != master)


def _server_on(cpus: list[int], env: dict[str, str], tmp_path: Path, port: int) -> ProcessGroup:
    """gunicorn (deliberate.serving, 2 processes x 2 threads) on exactly these CPUs."""
    gunicorn = [
        str(BIN / "gunicorn"),
        "-c",
        "python:deliberate.serving",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "2",
        "wsgi:app",
    ]
    launcher = (
        f"import os; os.sched_setaffinity(0, {set(cpus)!r}); "
        f"os.execv({gunicorn[0]!r}, {gunicorn!r})"
    )
    return ProcessGroup("gunicorn", [sys.executable, "-c", launcher], env, tmp_path / "g.log")


@two_cpus
@pytest.mark.xdist_group("system")
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_each_web_process_runs_on_a_cpu_of_its_own(app, db, tmp_path, database_url, mode):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    port = free_port()
    env = server_env(
        database_url,
        DELIBERATE_WEB_CPU_AFFINITY=mode,
        DELIBERATE_ACCESS_LOG="",
        DELIBERATE_ANALYSIS_WORKER="thread",  # started by each process's first request
    )
    server = _server_on(cpus, env, tmp_path, port)
    try:
        server.start()
        wait_until_serving(server, port)
        workers = wait_for(lambda: (w := _web_processes(server)) and len(w) == 2 and w)
        if mode == "auto":  # each is pinned by post_fork, a moment after its fork
            wait_for(lambda: all(len(_allowed_cpus(pid)) == 1 for pid in workers))
        placed = {pid: _allowed_cpus(pid) for pid in workers}
        if mode == "off":
            assert all(allowed == set(cpus) for allowed in placed.values()), placed
            return
        assert sorted(min(a) for a in placed.values()) == cpus, placed
        assert all(len(allowed) == 1 for allowed in placed.values()), placed
        assert _allowed_cpus(server.process.pid) == set(cpus)  # the master is not pinned

        # every thread of a process stays on its CPU but the analysis thread, which runs on
        # both (started by the requests each process serves)
        def analysis_threads():
            for _ in range(20):
                _get(port, "/healthz")
            wide = {}
            for pid in workers:
                tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
                cpus_of = [_allowed_cpus(t, pid) for t in tasks]
                assert all(c in (placed[pid], set(cpus)) for c in cpus_of), (pid, cpus_of)
                wide[pid] = sum(c == set(cpus) for c in cpus_of)
            return wide if any(wide.values()) else None

        assert set(wait_for(analysis_threads).values()) <= {0, 1}

        # a crashed process's replacement takes the CPU it left
        victim = workers[0]
        left = placed[victim]
        os.kill(victim, 9)
        newcomer = wait_for(
            lambda: [p for p in _web_processes(server) if p not in workers] or None, timeout=60
        )[0]
        # (pinned by post_fork, a moment after the fork)
        assert wait_for(lambda: len(a := _allowed_cpus(newcomer)) == 1 and a) == left
        wait_until_serving(server, port)
    finally:
        server.close()
