"""Database engine set-up: SQLite pragmas, and running migrations."""

from __future__ import annotations

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

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _write_intent.get() else "BEGIN")
