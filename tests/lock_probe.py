"""Whether SQLite's write lock is free while some slow step runs (a password hash)."""

from __future__ import annotations

import sqlite3


class WriteLockProbe:
    """Wraps a function: each call first tries to take the database's write lock from another
    connection (as another writer, e.g. a vote, would), records whether it could, then calls
    the function. `free` lists the answers, one per call."""

    def __init__(self, database_path: str, function):
        self.path = database_path
        self.function = function
        self.free: list[bool] = []

    def __call__(self, *args, **kwargs):
        other = sqlite3.connect(self.path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            self.free.append(True)
        except sqlite3.OperationalError:  # database is locked
            self.free.append(False)
        finally:
            other.close()
        return self.function(*args, **kwargs)
