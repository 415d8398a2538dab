"""Database engine set-up: SQLite pragmas, and running migrations."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import event
from sqlalchemy.engine import Engine

# Whether transactions started in this context may write. Outside requests (CLI, worker) they
# may; the web layer clears it for GET/HEAD requests, so page reads do not take the write lock.
_write_intent: ContextVar[bool] = ContextVar("deliberate_write_intent", default=True)


def set_write_intent(may_write: bool) -> None:
    """Declare whether the transactions that follow in this context may write."""
    _write_intent.set(may_write)


def configure_sqlite(engine: Engine) -> None:
    """Turn on the SQLite settings every connection needs.

    - foreign_keys: SQLite ignores foreign keys unless asked, on every connection.
    - journal_mode=WAL: readers do not block the writer, and the writer does not block readers.
    - synchronous=NORMAL: with WAL a commit is durable against an application crash and the
      database is never corrupted; only an OS crash or power loss may lose the last
      transactions. FULL would fsync on every commit (documented in the README).
    - busy_timeout: wait for the write lock instead of failing at once.
    - BEGIN IMMEDIATE for transactions that may write: they take the write lock when they
      start, so two writers never deadlock upgrading a read to a write (in WAL mode such an
      upgrade fails at once with SQLITE_BUSY, whatever the busy timeout). Read-only contexts
      (GET requests) use a plain deferred BEGIN: in WAL mode they read a consistent snapshot
      and never hold the write lock. pysqlite's own BEGIN handling is switched off for this.
    - Writers queue on a WriterGate (a lock per process, an flock between processes) before
      BEGIN IMMEDIATE, instead of polling in SQLite's busy handler; see WriterGate.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.close()

    gate = WriterGate.for_database(engine.url.database) if writer_gate_enabled() else None

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = _write_intent.get()
        conn.info[BEGAN_IMMEDIATE] = immediate  # see holds_write_lock()
        # On the driver's connection: a statement through SQLAlchemy costs 20 times as much,
        # and every transaction begins here.
        driver = conn.connection.driver_connection
        if immediate and gate is not None and gate.acquire():
            conn.info[_GATE_HELD] = gate
            try:
                driver.execute("BEGIN IMMEDIATE")
            except BaseException:
                held = conn.info.pop(_GATE_HELD, None)  # the rollback event may have let it go
                if held is not None:
                    held.release()
                raise
            return
        driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    if gate is None:
        return

    # The gate is released once SQLite's lock is: so the commit (or rollback) is done here,
    # right away, and SQLAlchemy's own call after this event finds no transaction (a no-op).
    @event.listens_for(engine, "commit")
    def _on_commit(conn):
        held = conn.info.pop(_GATE_HELD, None)
        if held is not None:
            try:
                conn.connection.driver_connection.commit()
            finally:
                held.release()

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn):
        held = conn.info.pop(_GATE_HELD, None)
        if held is not None:
            try:
                conn.connection.driver_connection.rollback()
            finally:
                held.release()

    # A connection returned to the pool, closed or invalidated in a transaction: SQLAlchemy
    # rolls it back (or drops it) itself; let the gate go.
    def _release_if_held(record) -> None:
        held = record.info.pop(_GATE_HELD, None) if record is not None else None
        if held is not None:
            held.release()

    @event.listens_for(engine.pool, "reset")
    def _on_reset(_dbapi_connection, record, _reset_state):
        _release_if_held(record)

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi_connection, record):
        _release_if_held(record)

    @event.listens_for(engine.pool, "invalidate")
    def _on_invalidate(_dbapi_connection, record, _exception):
        _release_if_held(record)

    @event.listens_for(engine.pool, "close")
    def _on_close(_dbapi_connection, record):
        _release_if_held(record)


_GATE_HELD = "deliberate_writer_gate"


def writer_gate_enabled() -> bool:
    """Whether SQLite writers queue on a WriterGate (DELIBERATE_SQLITE_WRITER_GATE=0: not)."""
    return os.environ.get("DELIBERATE_SQLITE_WRITER_GATE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


@contextmanager
def sqlite_write_gate(engine: Engine) -> Iterator[None]:
    """Hold the SQLite database's writer gate around a write made outside a transaction.

    For an autocommitted write statement on a raw connection (which does not pass the
    "begin" event): it then queues with the other writers instead of polling in SQLite's busy
    handler. A no-op on other databases and when the gate is off.
    """
    gate = None
    if engine.dialect.name == "sqlite" and writer_gate_enabled():
        gate = WriterGate.for_database(engine.url.database)
    if gate is None or not gate.acquire():
        yield
        return
    try:
        yield
    finally:
        gate.release()


class WriterGate:
    """Queues an SQLite database's writers: a lock per process, an flock between processes.

    SQLite lets one transaction write at a time; the others wait in its busy handler, which
    polls with sleeps of 1 to 100 ms. Under many concurrent writers most of that is lost: the
    lock is often free while every waiter sleeps, and waits pile up into long tails. Writers
    queue on this gate instead before BEGIN IMMEDIATE: threads of a process on a lock, the
    processes on an exclusive flock of the file "<database>-writer.lock" next to the database
    (released by the kernel if a process dies). A waiter wakes as soon as the previous writer
    commits, and the busy handler stays only as the fallback for writers that do not use the
    gate (other programs, the sqlite3 shell). Re-entrant per thread: a thread with two
    connections waits for itself in SQLite's busy timeout as it would without the gate.

    Failure mode as without the gate: a thread that cannot take the process's lock within
    WAIT_SECONDS (the busy timeout) goes on without the gate, and SQLite's busy handler then
    reports "database is locked" if the writer holding it never finishes.
    """

    WAIT_SECONDS = 15.0  # as PRAGMA busy_timeout

    _gates: dict[str, WriterGate] = {}
    _gates_lock = threading.Lock()

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._fd: int | None = None
        self._fd_pid: int | None = None

    @classmethod
    def for_database(cls, database: str | None) -> WriterGate | None:
        """The gate of an SQLite database file (one per file and process); None in memory."""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        path = os.path.abspath(database) + "-writer.lock"
        with cls._gates_lock:
            gate = cls._gates.get(path)
            if gate is None:
                gate = cls._gates[path] = cls(path)
            return gate

    def _file(self) -> int:
        # Opened per process: a descriptor inherited through fork shares its lock.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd_pid = os.getpid()
        return self._fd

    def acquire(self) -> bool:
        """Take the gate (waiting for it); False if that took longer than WAIT_SECONDS."""
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return True
        if not self._lock.acquire(timeout=self.WAIT_SECONDS):
            return False
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        self._owner = me
        self._depth = 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        self._owner = None
        try:
            fcntl.flock(self._file(), fcntl.LOCK_UN)
        finally:
            self._lock.release()


BEGAN_IMMEDIATE = "deliberate_began_immediate"


def holds_write_lock(connection) -> bool:
    """Whether this SQLite connection's current transaction began with BEGIN IMMEDIATE."""
    return bool(connection.in_transaction() and connection.info.get(BEGAN_IMMEDIATE))


def write_intent_now() -> bool:
    """Whether transactions started now, in this context, may write."""
    return _write_intent.get()


@contextmanager
def write_intent(may_write: bool) -> Iterator[None]:
    """Declare the write intent of the transactions begun inside the block, then restore it."""
    token = _write_intent.set(may_write)
    try:
        yield
    finally:
        _write_intent.reset(token)


def end_read(session) -> None:
    """End the session's transaction if it only read, keeping its loaded objects, so that the
    next one can begin as a write (SQLite cannot turn a read transaction into a write one once
    another writer has committed). A transaction that holds SQLite's write lock, or none, is
    left as it is. For services that read, then do slow work (a password hash), then write:
    the write lock, which every vote needs, is then held for the write only."""
    if session.in_transaction() and not holds_write_lock(session.connection()):
        commit_keeping_objects(session)


def commit_keeping_objects(session) -> None:
    """Commit without expiring the session's loaded objects (such as the acting user).

    For a transaction that wrote nothing through them: reading them again would only cost
    queries, or begin a new transaction where the caller wants none yet.
    """
    expire, session.expire_on_commit = session.expire_on_commit, False
    try:
        session.commit()
    finally:
        session.expire_on_commit = expire


class DriverStatement:
    """A Core statement compiled once per dialect and run straight on the DB-API cursor of a
    SQLAlchemy Connection, inside that connection's transaction.

    For the few statements of the vote path, where SQLAlchemy's per-execution work (execution
    context, events, result objects: about 40 us) costs more than the database's own. The SQL,
    the bound values' conversions and the result columns' conversions are SQLAlchemy's own,
    taken from the compiled statement (so types such as UTCDateTime behave as with
    Connection.execute); rows are named tuples. Statements with parameters expanded at run
    time (IN lists) are not supported. `before_cursor_execute` listeners are called (without
    an execution context); SQLAlchemy's other execution events are not. Transactions stay
    SQLAlchemy's: begin and commit through the Connection (its events: BEGIN IMMEDIATE and
    the writer gate on SQLite).
    """

    def __init__(self, statement) -> None:
        self.statement = statement
        self._compiled: dict[str, _DriverForm] = {}

    def _form(self, dialect) -> _DriverForm:
        form = self._compiled.get(dialect.name)
        if form is None:
            form = _DriverForm(self.statement.compile(dialect=dialect), dialect)
            self._compiled[dialect.name] = form
        return form

    def rows(self, conn, params: dict, named: bool = True) -> list:
        """Every row (named tuples; plain ones with `named` False, cheaper for many rows);
        [] for a statement that returns none."""
        form = self._form(conn.dialect)
        cursor = conn.connection.driver_connection.cursor()
        parameters = form.parameters(params)
        if conn._has_events or conn.engine._has_events:
            # Statement listeners (logging, counting) see it too; they cannot change it.
            conn.dispatch.before_cursor_execute(conn, cursor, form.sql, parameters, None, False)
        try:
            cursor.execute(form.sql, parameters)
            if cursor.description is None:
                return []
            return form.convert(cursor.fetchall(), named)
        finally:
            cursor.close()

    def first(self, conn, params: dict):
        """The first row, or None."""
        rows = self.rows(conn, params)
        return rows[0] if rows else None


class _DriverForm:
    """A DriverStatement for one dialect: SQL text, parameter order and conversions."""

    def __init__(self, compiled, dialect) -> None:
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise NotImplementedError("DriverStatement: parameters expanded at run time")
        from collections import namedtuple

        self.sql = compiled.string
        self._compiled = compiled
        self._positions = tuple(compiled.positiontup) if compiled.positional else None
        self._bind = dict(compiled._bind_processors)
        names = [column[0] for column in compiled._result_columns]
        self._row = namedtuple("Row", names, rename=True) if names else None
        processors = [
            column[3]._cached_result_processor(dialect, None) for column in compiled._result_columns
        ]
        self._processors = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def parameters(self, params: dict):
        values = self._compiled.construct_params(params, _check=False)
        for name, process in self._bind.items():
            if name in values:
                values[name] = process(values[name])
        if self._positions is not None:
            return tuple(values[name] for name in self._positions)
        return values

    def convert(self, rows: list, named: bool = True) -> list:
        if not self._processors:
            return [self._row._make(row) for row in rows] if named else rows
        converted = []
        for row in rows:
            row = list(row)
            for i, process in self._processors:
                row[i] = process(row[i])
            converted.append(self._row._make(row) if named else tuple(row))
        return converted
