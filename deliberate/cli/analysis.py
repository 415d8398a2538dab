"""CLI commands: analysis (analyze, import-polis, worker, snapshot).

Exit statuses: 0 done; 1 refused or failed (already imported, analysis error); 2 bad input
(missing files, wrong columns, unknown vote signs, empty conversation, not a folder, unknown
round). Errors are one line on stderr, never a traceback.

numpy and the engine are imported inside the commands, so that `deliberate worker` can pin the
numeric libraries to one thread before numpy loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time

import click
from flask import current_app
from flask.cli import with_appcontext

BAD_INPUT = 2
FAILED = 1


def _fail(message: object, status: int) -> click.exceptions.Exit:
    """Print a one-line error on stderr and return the exit to raise."""
    line = " ".join(str(message).split()) or "error"
    click.echo(f"Error: {line}", err=True)
    return click.exceptions.Exit(status)


@click.command("analyze")
@click.argument("path")
@click.option(
    "--format", "output_format", default="json", show_default=True, help="Output format (json)."
)
def analyze_command(path: str, output_format: str) -> None:
    """Analyse a Pol.is export or math-fixture folder and print the result as JSON.

    PATH holds votes.csv and comments.csv (a Pol.is export) or votes.json and comments.json
    (a Pol.is math fixture). Votes are agree = +1, disagree = -1, pass = 0. No database needed.
    """
    from ..polis_io import PolisFormatError, read_polis_folder

    if output_format != "json":
        raise _fail(f"unknown format {output_format!r} (only json is supported)", BAD_INPUT)
    try:
        conversation = read_polis_folder(path)
    except PolisFormatError as exc:
        raise _fail(exc, BAD_INPUT) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"cannot read {path}: {exc}", BAD_INPUT) from None

    from ..analysis import Moderation, Votes, run_analysis
    from ..services.snapshots import json_safe

    try:
        votes = Votes.from_arrays(
            conversation.participant,
            conversation.statement,
            conversation.value,
            created=conversation.created,
        )
    except ValueError as exc:
        raise _fail(f"{path}: {exc}", BAD_INPUT) from None
    try:
        result = run_analysis(
            votes,
            moderation=Moderation(
                rejected=conversation.rejected,
                meta=conversation.meta,
                accepted=conversation.accepted,
            ),
            statements=[s.id for s in conversation.statements if s.moderation != -1],
            seed=0,
        )
        output = json.dumps(json_safe(result.to_dict()), allow_nan=False)
    except Exception as exc:  # an engine bug: still one line, but not "bad input"
        raise _fail(f"the analysis failed: {type(exc).__name__}: {exc}", FAILED) from None
    click.echo(output)


@click.command("import-polis")
@click.argument("path")
@click.option("--force", is_flag=True, help="Import again a conversation imported before.")
@with_appcontext
def import_polis_command(path: str, force: bool) -> None:
    """Create a closed round from a Pol.is export or math-fixture folder."""
    from ..polis_io import PolisFormatError
    from ..services.errors import Conflict, DomainError
    from ..services.polis_import import import_polis_folder

    started = time.perf_counter()
    # The bar starts with the first rows written: input errors are reported before it.
    with contextlib.ExitStack() as stack:
        state: dict = {"bar": None, "done": 0}

        def progress(done: int, total: int) -> None:
            if state["bar"] is None:
                state["bar"] = stack.enter_context(
                    click.progressbar(
                        length=max(total, 1),
                        label="Importing",
                        file=sys.stderr,
                    )
                )
            state["bar"].update(done - state["done"])
            state["done"] = done

        try:
            round_ = import_polis_folder(None, path, force=force, progress=progress)
        except PolisFormatError as exc:
            raise _fail(exc, BAD_INPUT) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read {path}: {exc}", BAD_INPUT) from None
        except Conflict as exc:
            raise _fail(exc.message, FAILED) from None
        except DomainError as exc:
            raise _fail(exc.message, BAD_INPUT) from None
    from sqlalchemy import func, select

    from ..extensions import db
    from ..models import Statement, Vote, VoteEvent

    def count(model):
        return db.session.scalar(
            select(func.count()).select_from(model).where(model.round_id == round_.id)
        )

    n_statements, n_votes, n_events = count(Statement), count(Vote), count(VoteEvent)
    n_members = db.session.scalar(
        select(func.count(func.distinct(Vote.user_id))).where(Vote.round_id == round_.id)
    )
    click.echo(
        f"Imported round {round_.id} ({round_.source}): {n_statements} statements, "
        f"{n_members} voters, {n_votes} votes ({n_events} with changes) "
        f"in {time.perf_counter() - started:.1f} s."
    )


def _log_to_stderr() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        )


def _run_worker_loop(worker, parent_pid: int | None = None) -> None:
    """Run the worker loop until SIGTERM or SIGINT (or, in a child, until its parent is gone)."""
    import threading

    def _stop(signum, frame):  # noqa: ARG001
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if parent_pid is not None:

        def watch_parent() -> None:
            # A child whose supervisor was killed (kill -9) stops instead of living on.
            while not worker.stop_event.wait(1.0):
                if os.getppid() != parent_pid:
                    worker.stop_event.set()

        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    worker.run()


def _worker_process(parent_pid: int) -> None:
    """One worker process started by `deliberate worker --processes N` (a fresh interpreter)."""
    from ..worker import AnalysisWorker, pin_numeric_threads

    pin_numeric_threads()
    _log_to_stderr()
    from .. import create_app

    app = create_app()
    with app.app_context():
        pass  # fail early on a broken configuration
    _run_worker_loop(AnalysisWorker(app), parent_pid)


def _supervise(processes: int) -> None:
    """Start `processes` worker processes, restart any that dies, stop them all on a signal."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters: numpy not yet loaded
    stopping = {"now": False}

    def _stop(signum, frame):  # noqa: ARG001
        stopping["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log = logging.getLogger("deliberate.worker")

    def start(slot: int):
        child = context.Process(
            target=_worker_process, args=(os.getpid(),), name=f"deliberate-worker-{slot}"
        )
        child.start()
        return child, time.monotonic()

    children = [start(slot) for slot in range(processes)]
    click.echo(
        f"Analysis worker: {processes} processes ({', '.join(str(c.pid) for c, _ in children)})."
    )
    try:
        while not stopping["now"]:
            time.sleep(0.5)
            for slot, (child, started) in enumerate(children):
                if child.is_alive() or stopping["now"]:
                    continue
                if time.monotonic() - started < 2.0:
                    continue  # one that dies at once is restarted at most every 2 s
                log.warning(
                    "worker process %s exited with status %s; starting another",
                    child.pid,
                    child.exitcode,
                )
                children[slot] = start(slot)
    finally:
        for child, _ in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: the current round finishes, its claim is released
        deadline = time.monotonic() + 30.0
        for child, _ in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join()


@click.command("worker")
@click.option("--once", is_flag=True, help="Analyse what is pending now, then exit.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes to run (each analyses one round at a time; they share the rounds).",
)
@with_appcontext
def worker_command(once: bool, processes: int) -> None:
    """Run the analysis worker in the foreground (use with ANALYSIS_WORKER=off in the web app).

    Several workers, on this machine or others, may run against the same database: each claims
    a round before analysing it, so no round is analysed twice at once, and the round of a
    worker that dies is taken over once its claim lapses (ANALYSIS_LEASE_SECONDS).
    """
    from ..worker import AnalysisWorker, pin_numeric_threads

    pin_numeric_threads()
    _log_to_stderr()
    if once:
        worker = AnalysisWorker(current_app._get_current_object())
        stored = worker.drain()
        click.echo(f"Analysed {stored} round(s).")
        return
    if processes > 1:
        _supervise(processes)
        return
    worker = AnalysisWorker(current_app._get_current_object())
    click.echo(
        f"Analysis worker running (debounce {worker.debounce:g} s, lease "
        f"{worker.lease_seconds:g} s, owner {worker.owner}); Ctrl-C stops it."
    )
    _run_worker_loop(worker)


@click.command("snapshot")
@click.argument("round_id", type=int)
@with_appcontext
def snapshot_command(round_id: int) -> None:
    """Recompute a round's analysis snapshot now and print a summary."""
    from ..services.errors import NotFound
    from ..services.snapshots import AnalysisFailed, latest_snapshot, refresh_snapshot

    try:
        snapshot = refresh_snapshot(round_id, force=True)
    except NotFound:
        raise _fail(f"no round {round_id}", BAD_INPUT) from None
    except AnalysisFailed as exc:
        raise _fail(exc, FAILED) from None
    if snapshot is None:
        previous = latest_snapshot(round_id)
        if previous is None:
            click.echo(f"Round {round_id} has no votes yet: nothing to analyse.")
        else:
            click.echo(f"Round {round_id}: snapshot {previous.id} is current.")
        return
    result = snapshot.result or {}
    click.echo(
        f"Round {round_id}: snapshot {snapshot.id}, {snapshot.n_votes} votes, "
        f"{result.get('participants', 0)} participants, {result.get('statements', 0)} statements, "
        f"{len(result.get('groups') or [])} groups, {snapshot.duration_ms} ms."
    )


commands: list[click.Command] = [
    analyze_command,
    import_polis_command,
    worker_command,
    snapshot_command,
]
