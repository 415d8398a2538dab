"""gunicorn settings for production: `gunicorn -c python:deliberate.serving wsgi:app`.

`make serve` runs exactly that after `deliberate db upgrade` (docs/operations.md explains each
choice). Every setting can still be overridden on gunicorn's command line (`--workers 4`) or
through these variables:

- DELIBERATE_BIND (default 127.0.0.1:8000): where to listen; `make serve` passes --bind.
- DELIBERATE_WEB_PROCESSES (default 2): gunicorn worker processes, one per core.
- DELIBERATE_WEB_THREADS (default 4): request threads per process (gthread).
- DELIBERATE_ACCESS_LOG (default "-", standard output; "" turns it off).
- DELIBERATE_WEB_CPU_AFFINITY (default "auto"): with at least as many processes as CPUs, each
  process runs on a CPU of its own (see pre_fork); "off" leaves the placement to the kernel.

The module is named explicitly (`-c python:deliberate.serving`) rather than being a
`gunicorn.conf.py` in the working directory, which gunicorn would load silently into every
other gunicorn started there (the benchmarks, the tests).
"""

from __future__ import annotations

import os
from pathlib import Path

from deliberate.worker import EXTENSION_KEY, NUMERIC_THREAD_VARIABLES, pin_process_to

# Before the app (and so numpy) is loaded in the master, and so inherited by every worker
# process: one BLAS/OpenMP thread each. Two processes on two cores, plus the analysis thread,
# must not each start a thread pool as large as the machine.
for _name in NUMERIC_THREAD_VARIABLES:
    os.environ.setdefault(_name, "1")

wsgi_app = "wsgi:app"
bind = [os.environ.get("DELIBERATE_BIND", "127.0.0.1:8000")]

# Two processes for two cores: Python runs one thread at a time per process, so one process
# per core; threads inside each cover the time a request waits for the database (SQLite's
# write lock, PostgreSQL round trips) and slow clients.
workers = int(os.environ.get("DELIBERATE_WEB_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("DELIBERATE_WEB_THREADS", "4"))

# Load the app once in the master, before forking: a broken configuration (no secret key, no
# database driver) stops the server at once with one message instead of looping on worker
# boots; workers share the loaded code's memory. No database connection may cross the fork:
# `on_starting` disposes of the one it uses, and `post_fork` drops any left in the pool.
preload_app = True

# A worker silent for `timeout` seconds (a request stuck that long) is killed and replaced.
timeout = 30
# On SIGTERM or SIGHUP, requests in flight get this long to finish.
graceful_timeout = 20
# Idle keep-alive connections (from a reverse proxy) are closed after this.
keepalive = 5

accesslog = os.environ.get("DELIBERATE_ACCESS_LOG", "-") or None
errorlog = "-"
# The usual combined format, plus the time taken in milliseconds.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'

# gunicorn 25.1+ opens a control socket for `gunicornc` at one fixed path per user, which
# several servers on one machine would fight over; the signals (TERM, HUP, TTIN, TTOU) do.
control_socket_disable = True

# The heartbeat files of the workers: in memory, so a slow disk never gets a worker killed.
SHARED_MEMORY = "/dev/shm"  # noqa: S108 (a folder gunicorn creates private files in)
if Path(SHARED_MEMORY).is_dir():
    worker_tmp_dir = SHARED_MEMORY


def _flask_app(server):
    """The Flask app gunicorn loaded (preloaded in the master)."""
    from flask import Flask

    app = server.app.wsgi()
    return app if isinstance(app, Flask) else None


def check_schema(app) -> None:
    """Refuse to serve a database that is not at the latest migration.

    Migrations run once, before the server starts (`deliberate db upgrade`, which `make serve`
    does); the app never migrates by itself, and a server started on an older schema would
    fail request by request.
    """
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from deliberate.extensions import db

    with app.app_context():
        heads = set(ScriptDirectory(app.extensions["migrate"].directory).get_heads())
        try:
            with db.engine.connect() as connection:
                current = set(MigrationContext.configure(connection).get_current_heads())
        finally:
            db.engine.dispose()  # no connection is inherited by the workers
    if current != heads:
        raise SystemExit(
            f"deliberate: the database is at migration {sorted(current) or 'none'}, not "
            f"{sorted(heads)}: run `deliberate db upgrade` (or `make serve`) first."
        )


def on_starting(server) -> None:
    cpu_affinity_mode()  # a wrong value stops the server at once
    app = _flask_app(server)
    if app is not None:
        check_schema(app)
        server.log.info(
            "deliberate: %s processes x %s threads, analysis worker: %s",
            server.cfg.workers,
            server.cfg.threads,
            app.config.get("ANALYSIS_WORKER"),
        )


AFFINITY_MODES = ("auto", "off")


def cpu_affinity_mode() -> str:
    mode = os.environ.get("DELIBERATE_WEB_CPU_AFFINITY", "auto").strip().lower() or "auto"
    if mode not in AFFINITY_MODES:
        raise SystemExit(
            f"deliberate: DELIBERATE_WEB_CPU_AFFINITY must be one of {', '.join(AFFINITY_MODES)},"
            f" not {mode!r}"
        )
    return mode


def pins_processes(workers: int, cpus: int) -> bool:
    """Whether the web processes get a CPU each: only with at least as many processes as
    CPUs (one process on two CPUs keeps both: SQLite and numpy work outside the GIL)."""
    return cpu_affinity_mode() == "auto" and cpus > 1 and workers >= cpus


def choose_cpu(cpus: list[int], taken: list[int | None]) -> int:
    """The CPU for a new web process: the one fewest live processes run on (the first such),
    so that a process replaced after a crash takes the place its predecessor left."""
    load = dict.fromkeys(cpus, 0)
    for cpu in taken:
        if cpu in load:
            load[cpu] += 1
    return min(cpus, key=lambda cpu: load[cpu])


def pre_fork(server, worker) -> None:
    """Give the process about to start a CPU of its own (in the master, which knows the others).

    Each gunicorn process runs Python one thread at a time (the GIL); on a CPU of its own its
    threads hand the GIL to each other on that CPU, instead of waking each other across CPUs
    and moving between them with their caches. Measured in bench/README-load.md.
    """
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if pins_processes(server.cfg.workers, len(cpus)):
        taken = [getattr(w, "deliberate_cpu", None) for w in server.WORKERS.values()]
        worker.deliberate_cpu = choose_cpu(cpus, taken)


def post_fork(server, worker) -> None:
    """Pin the new process to its CPU; drop database connections inherited from the master
    (none are expected)."""
    cpu = getattr(worker, "deliberate_cpu", None)
    if cpu is not None:
        pin_process_to(cpu)
    app = _flask_app(server)
    if app is None:
        return
    from deliberate.extensions import db

    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)


def worker_exit(server, worker) -> None:
    """Stop this process's analysis thread: the round it computes is finished and released."""
    app = _flask_app(server)
    analysis = app.extensions.get(EXTENSION_KEY) if app is not None else None
    if analysis is not None and analysis.pid == os.getpid():
        analysis.stop(timeout=max(1.0, graceful_timeout / 2))
