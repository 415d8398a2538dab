"""The analysis worker: recomputes round snapshots off the request path.

One loop (`AnalysisWorker.run`): about every second, ask which rounds' votes or moderation
moved past their latest snapshot (`rounds_needing_analysis`), and refresh each of them, at most
once every ANALYSIS_DEBOUNCE_SECONDS per round. Every exception is caught and logged; a round
whose analysis fails is retried with a growing back-off (up to a minute), and its previous
snapshot stays.

Several workers, one database: before computing a round a worker claims it
(`services.snapshots.claim_analysis`, one row per round in `analysis_leases`) for
ANALYSIS_LEASE_SECONDS; a heartbeat thread renews the claim every third of that while the
analysis runs, and the claim is released after the snapshot is stored, with a hold of
ANALYSIS_DEBOUNCE_SECONDS (or the failure back-off) so that the debounce holds across workers
too. Two workers therefore never compute the same round at once, and a killed worker's claim
lapses after at most ANALYSIS_LEASE_SECONDS, when another worker takes the round over.

Where the loop runs (config ANALYSIS_WORKER):
- "thread" (default): one daemon thread per app and process, started by the first request the
  process serves, so `make run` stays one process; under `make serve` each gunicorn process
  has one, and they share the rounds through the claims. Starting on the first request (not in
  create_app) keeps CLI commands (`deliberate db upgrade`, ...) and the reloader's watcher
  process free of workers, and works with servers that fork after loading the app.
- "off": nothing here; run `deliberate worker` (optionally `--processes N`) as its own
  process(es) (or nothing, in tests).

Numeric libraries: the analysis should use one core per worker. `deliberate worker` sets
OPENBLAS/OMP/MKL_NUM_THREADS=1 before numpy is first imported. In "thread" mode numpy is
loaded by the web process; set those variables in the server's environment (for example
`OPENBLAS_NUM_THREADS=1 gunicorn ...`) so the analysis does not compete with requests for
every core; the worker also limits BLAS threads with threadpoolctl when it is installed.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
SCHEDULE_SECONDS = 30.0  # how often rounds are opened and closed by their scheduled times
MAX_BACKOFF_SECONDS = 60.0
DEFAULT_LEASE_SECONDS = 30.0
NUMERIC_THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
EXTENSION_KEY = "deliberate.analysis_worker"
_start_lock = threading.Lock()


def pin_numeric_threads() -> bool:
    """Ask numeric libraries for one thread each; return whether it took effect for numpy.

    The variables only work before numpy is first imported; afterwards threadpoolctl (if
    installed) limits the already loaded BLAS.
    """
    import sys

    for name in NUMERIC_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    if "numpy" not in sys.modules:
        return True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("numpy was loaded before the thread limits were set; BLAS may use every core")
        return False
    threadpool_limits(1)
    return True


# The CPUs this process could use before serving.post_fork pinned it to one (None: not pinned).
_cpus_before_pinning: set[int] | None = None


def pin_process_to(cpu: int) -> None:
    """Run this (just forked, single-threaded) process on one CPU; the threads it starts later
    inherit it. The analysis thread goes back to the CPUs the process had (see run)."""
    global _cpus_before_pinning
    _cpus_before_pinning = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})


def _unpin_this_thread() -> None:
    """Let the calling thread (the analysis) run on every CPU the process had before pinning:
    on Linux an affinity belongs to a thread, so the web threads stay where they are."""
    if _cpus_before_pinning:
        try:
            os.sched_setaffinity(0, _cpus_before_pinning)
        except OSError:  # pragma: no cover - the CPUs were taken away meanwhile
            log.warning("analysis thread: could not widen its CPU affinity", exc_info=True)


class AnalysisWorker:
    """The worker loop over one app; `run` in the foreground or `start` a daemon thread."""

    def __init__(
        self,
        app: Flask,
        *,
        debounce: float | None = None,
        poll: float | None = None,
        lease_seconds: float | None = None,
    ):
        self.app = app
        self.debounce = float(
            app.config.get("ANALYSIS_DEBOUNCE_SECONDS", 3.0) if debounce is None else debounce
        )
        self.poll = float(min(POLL_SECONDS, max(self.debounce, 0.05)) if poll is None else poll)
        if lease_seconds is None:
            lease_seconds = app.config.get("ANALYSIS_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)
        self.lease_seconds = max(float(lease_seconds), 0.5)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        # Who holds a claim: unique per worker object, readable by an operator.
        self.owner = f"{socket.gethostname()[:60]}:{self.pid}:{uuid.uuid4().hex[:12]}"
        self._last_run: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._last_schedule: float | None = None

    def apply_schedule(self, *, force: bool = False) -> int:
        """Open and close rounds whose scheduled times passed, and purge rounds whose retention
        period passed (every SCHEDULE_SECONDS); return how many rounds changed state.

        Both are idempotent and safe with several workers (conditional updates, row locks).
        """
        from .extensions import db
        from .services.personal_data import apply_retention
        from .services.rounds import apply_scheduled_transitions

        now = time.monotonic()
        recent = self._last_schedule is not None and now - self._last_schedule < SCHEDULE_SECONDS
        if recent and not force:
            return 0
        self._last_schedule = now
        changed = 0
        with self.app.app_context():
            try:
                changed = len(apply_scheduled_transitions())
            except Exception:
                log.exception("analysis worker: applying round schedules failed")
            finally:
                db.session.remove()
            try:
                apply_retention()
            except Exception:
                log.exception("analysis worker: applying round retention failed")
            finally:
                db.session.remove()
        return changed

    # -- one pass
    def _due(self, round_id: int, now: float) -> bool:
        last = self._last_run.get(round_id)
        if last is None:
            return True
        return now - last >= self._backoff(round_id)

    def _backoff(self, round_id: int) -> float:
        failures = self._failures.get(round_id, 0)
        if not failures:
            return self.debounce
        return min(MAX_BACKOFF_SECONDS, max(self.debounce, 1.0) * 2 ** min(failures, 10))

    def run_once(self, *, ignore_debounce: bool = False) -> int:
        """Refresh every round that needs it and whose debounce expired; return how many.

        Each round is claimed first; a round another worker holds is left to it.
        """
        from .extensions import db
        from .services.snapshots import (
            AnalysisFailed,
            claim_analysis,
            refresh_snapshot,
            rounds_needing_analysis,
        )

        done = 0
        with self.app.app_context():
            try:
                pending = rounds_needing_analysis(skip_claimed=not ignore_debounce)
            except Exception:
                log.exception("analysis worker: could not list the rounds to analyse")
                db.session.remove()
                return 0
            for round_id in pending:
                if self.stop_event.is_set():
                    break
                now = time.monotonic()
                if not ignore_debounce and not self._due(round_id, now):
                    continue
                try:
                    claimed = claim_analysis(
                        round_id,
                        self.owner,
                        self.lease_seconds,
                        respect_hold=not ignore_debounce,
                    )
                except Exception:
                    log.exception("analysis worker: claiming round %s failed", round_id)
                    db.session.remove()
                    continue
                if not claimed:
                    continue  # another worker has it (or just did it)
                self._last_run[round_id] = now
                succeeded = False
                try:
                    with self._renewing(round_id):
                        if refresh_snapshot(round_id) is not None:
                            done += 1
                    succeeded = True
                    self._failures.pop(round_id, None)
                except AnalysisFailed:
                    self._failures[round_id] = self._failures.get(round_id, 0) + 1
                except Exception:
                    self._failures[round_id] = self._failures.get(round_id, 0) + 1
                    log.exception("analysis worker: refreshing round %s failed", round_id)
                finally:
                    db.session.remove()
                    self._release(round_id, succeeded)
        return done

    def _release(self, round_id: int, succeeded: bool) -> None:
        """Give the claim back, holding the round for the debounce (or the back-off)."""
        from .extensions import db
        from .services.snapshots import release_analysis

        try:
            if not release_analysis(
                round_id, self.owner, hold_seconds=self._backoff(round_id), succeeded=succeeded
            ):
                log.warning(
                    "analysis worker: the claim on round %s lapsed before it was released "
                    "(the analysis took longer than the lease, or the worker stalled)",
                    round_id,
                )
        except Exception:
            # The claim then lapses by itself after the lease.
            log.exception("analysis worker: releasing round %s failed", round_id)
        finally:
            db.session.remove()

    @contextmanager
    def _renewing(self, round_id: int) -> Iterator[None]:
        """Renew the claim on the round every third of the lease until the block ends."""
        from .extensions import db
        from .services.snapshots import renew_analysis

        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.lease_seconds / 3):
                try:
                    with self.app.app_context():
                        try:
                            if not renew_analysis(round_id, self.owner, self.lease_seconds):
                                log.warning("analysis worker: lost the claim on round %s", round_id)
                                return
                        finally:
                            db.session.remove()
                except Exception:
                    log.exception("analysis worker: renewing the claim on %s failed", round_id)

        beat = threading.Thread(target=heartbeat, name="deliberate-analysis-lease", daemon=True)
        beat.start()
        try:
            yield
        finally:
            done.set()
            beat.join(5.0)

    def drain(self) -> int:
        """Process everything pending now, ignoring the debounce; return how many were stored."""
        return self.run_once(ignore_debounce=True)

    # -- the loop
    def run(self) -> None:
        """Loop until `stop()`: check about every second, refresh what is due."""
        log.info("analysis worker started (debounce %.1f s)", self.debounce)
        if self.thread is threading.current_thread():
            _unpin_this_thread()
        while not self.stop_event.is_set():
            try:
                self.apply_schedule()
                self.run_once()
            except Exception:  # never let the loop die
                log.exception("analysis worker: unexpected error")
            self.stop_event.wait(self.poll)
        log.info("analysis worker stopped")

    def start(self) -> AnalysisWorker:
        """Start the loop in a daemon thread."""
        self.thread = threading.Thread(target=self.run, name="deliberate-analysis", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the loop to stop and wait for the thread (a running analysis finishes first)."""
        self.stop_event.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def ensure_worker_thread(app: Flask) -> AnalysisWorker | None:
    """Start the app's worker thread in this process unless it already runs (or is off)."""
    if app.config.get("ANALYSIS_WORKER") != "thread":
        return None
    worker = app.extensions.get(EXTENSION_KEY)
    if (
        worker is not None
        and worker.pid == os.getpid()
        and (worker.alive or worker.stop_event.is_set())
    ):
        return worker
    with _start_lock:
        worker = app.extensions.get(EXTENSION_KEY)
        if (
            worker is not None
            and worker.pid == os.getpid()
            and (worker.alive or worker.stop_event.is_set())
        ):
            return worker
        # A worker object inherited through fork has no thread here: start a fresh one.
        worker = AnalysisWorker(app).start()
        app.extensions[EXTENSION_KEY] = worker
        atexit.register(worker.stop, 2.0)
    return worker


def init_worker(app: Flask) -> None:
    """Start the in-process analysis worker thread when ANALYSIS_WORKER == 'thread'.

    The thread starts with the first request this process serves (see the module docstring).
    """
    mode = app.config.get("ANALYSIS_WORKER", "thread")
    if mode not in ("thread", "off"):
        from .config import ConfigError

        raise ConfigError("ANALYSIS_WORKER must be 'thread' or 'off'")
    if mode != "thread":
        return

    @app.before_request
    def _start_analysis_worker() -> None:
        start_with_requests(app)


def start_with_requests(app: Flask) -> None:
    """What every request does first: start this process's worker thread if the app runs one
    (ANALYSIS_WORKER == 'thread') and it has not started here yet. Cheap once it runs."""
    if app.config.get("ANALYSIS_WORKER") != "thread":
        return
    worker = app.extensions.get(EXTENSION_KEY)
    if worker is None or worker.pid != os.getpid():
        ensure_worker_thread(app)
