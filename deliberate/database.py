"""Database engine set-up: SQLite pragmas, and running migrations."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine


def configure_sqlite(engine: Engine) -> None:
    """Turn on the SQLite settings every connection needs.

    - foreign_keys: SQLite ignores foreign keys unless asked, on every connection.
    - journal_mode=WAL: readers do not block the writer, and the writer does not block readers.
    - synchronous=NORMAL: with WAL a commit is durable against an application crash and the
      database is never corrupted; only an OS crash or power loss may lose the last
      transactions. FULL would fsync on every commit (documented in the README).
    - busy_timeout: wait for the write lock instead of failing at once.
    - BEGIN IMMEDIATE: take the write lock when a transaction starts, so two writers never
      deadlock upgrading read locks (pysqlite's own BEGIN handling is switched off for this).
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
        conn.exec_driver_sql("BEGIN IMMEDIATE")
