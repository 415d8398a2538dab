"""Rate limits: counters shared through the database, the keys requests are counted under, and
the configured limit values.

Flask-Limiter (through the `limits` library) counts requests in fixed windows. By default the
counters live in the app's own database (table `rate_limit_counters`), so every web process of
an installation shares them without another server; `DELIBERATE_RATELIMIT_STORAGE_URI` can point
at `redis://...` or `memory://` instead (see docs/security.md).

Views use the decorators at the end of this module (`login_limits`, `vote_limits`, ...); each
applies two limits, one per account and one per address, with values read from the app's
configuration on every request (`RATELIMIT_<KIND>` and `RATELIMIT_<KIND>_PER_ADDRESS`).
Key functions never touch the database (they read the signed session cookie, the submitted
email or the link's token), and the decorators go above `login_required` and friends, so on
SQLite the counter is written before the request's own transaction takes the write lock.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app, g, has_app_context, has_request_context, request, session
from limits import RateLimitItem, parse_many
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import http_date

from .database import holds_write_lock, sqlite_write_gate, write_intent

TABLE = "rate_limit_counters"

# Default limit values: per account (the login email, the invitation link, the member) and
# per address. Addresses get more room than accounts: a whole office may share one address.
DEFAULT_LIMITS: dict[str, str] = {
    "RATELIMIT_LOGIN": "10 per minute; 50 per hour",
    "RATELIMIT_LOGIN_PER_ADDRESS": "30 per minute; 300 per hour",
    "RATELIMIT_INVITE": "10 per minute; 50 per hour",
    "RATELIMIT_INVITE_PER_ADDRESS": "30 per minute; 300 per hour",
    "RATELIMIT_VOTE": "240 per minute",
    "RATELIMIT_VOTE_PER_ADDRESS": "2400 per minute",
    "RATELIMIT_STATEMENT": "20 per hour",
    "RATELIMIT_STATEMENT_PER_ADDRESS": "200 per hour",
    "RATELIMIT_EXPORT": "30 per minute",
    "RATELIMIT_EXPORT_PER_ADDRESS": "120 per minute",
}

_UPSERT = text(
    f"""
    INSERT INTO {TABLE} ("key", "count", expires_at) VALUES (:key, :amount, :expires_at)
    ON CONFLICT ("key") DO UPDATE SET
        "count" = CASE WHEN {TABLE}.expires_at <= :now THEN excluded."count"
                       ELSE {TABLE}."count" + excluded."count" END,
        expires_at = CASE WHEN {TABLE}.expires_at <= :now THEN excluded.expires_at
                          ELSE {TABLE}.expires_at END
    RETURNING "count", expires_at
    """  # noqa: S608 - the table name is a constant; values are bound parameters
)
_SELECT = text(f'SELECT "count", expires_at FROM {TABLE} WHERE "key" = :key')  # noqa: S608
_DELETE_KEY = text(f'DELETE FROM {TABLE} WHERE "key" = :key')  # noqa: S608
_DELETE_ALL = text(f"DELETE FROM {TABLE}")  # noqa: S608
_DELETE_EXPIRED = text(f"DELETE FROM {TABLE} WHERE expires_at < :before")  # noqa: S608

_REQUEST_CACHE = "deliberate.ratelimit.counters"

# Counters written in one statement by the write-behind flusher (at most this many per statement).
_BATCH_ROWS = 200

log = logging.getLogger(__name__)


def _batch_upsert(rows: int):
    """The upsert of `rows` counters in one statement, returning each row's key."""
    values = ", ".join(f"(:k{i}, :a{i}, :e{i})" for i in range(rows))
    return text(
        f"""
        INSERT INTO {TABLE} ("key", "count", expires_at) VALUES {values}
        ON CONFLICT ("key") DO UPDATE SET
            "count" = CASE WHEN {TABLE}.expires_at <= :now THEN excluded."count"
                           ELSE {TABLE}."count" + excluded."count" END,
            expires_at = CASE WHEN {TABLE}.expires_at <= :now THEN excluded.expires_at
                              ELSE {TABLE}.expires_at END
        RETURNING "key", "count", expires_at
        """  # noqa: S608 - the table name is a constant; values are bound parameters
    )


@dataclass(slots=True)
class _Window:
    """One counter's current window as this process knows it (write-behind mode)."""

    expires_at: float  # the end of the shared window (as stored in the database)
    length: int  # the window's length in seconds (to start a new one)
    shared: int  # the shared count, as the database last answered
    pending: int = 0  # this process's increments not yet written
    writing: int = 0  # this process's increments being written by the flusher now

    def count(self) -> int:
        return self.shared + self.writing + self.pending


class DatabaseStorage(Storage):
    """Fixed-window counters in the app's database, shared by every process that uses it.

    URI: ``database://`` (the app's own database). Each increment is ONE atomic statement
    (INSERT ... ON CONFLICT DO UPDATE ... RETURNING; SQLite >= 3.35 and PostgreSQL) in its own
    short transaction on its own connection, so it never commits or rolls back the request's
    work. One exception, SQLite only: when the request's session already holds the write lock
    (a limit checked after the view's transaction began writing), a second connection would wait
    for that lock until the busy timeout, so the increment joins the request's transaction
    instead (and is rolled back with it). The decorators in this module avoid that case.

    Expired rows are deleted now and then (every `cleanup_every` increments of this process).
    Errors are SQLAlchemy errors; the app configures Flask-Limiter to fall back to per-process
    in-memory counters while the database cannot be reached (see docs/security.md).

    **Write-behind** (``sync_seconds`` > 0; the app's default, DELIBERATE_RATELIMIT_SYNC_SECONDS):
    a counter's first increment in a window is written at once as above (so the process learns
    the shared count and when the window ends); later increments in that window are counted in
    this process's memory and written by a background thread every ``sync_seconds``, all
    counters in one short transaction, which also reads back the shared counts. A request is
    then counted without touching the database. What a process decides on is the shared count
    as of its last write plus its own increments since, so a limit can be exceeded by what the
    OTHER processes counted in the last ``sync_seconds`` (with 2 processes and 0.25 s: a member
    voting at 10 a second gets 2-3 extra votes in a window); within one process it is exact.
    Increments not yet written when a process is killed (at most ``sync_seconds`` of them) are
    lost; a process that exits normally writes them first. ``sync_seconds`` = 0 writes every
    increment at once (exact across processes).
    """

    STORAGE_SCHEME = ["database"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        engine: Engine | None = None,
        cleanup_every: int = 1000,
        sync_seconds: float = 0.0,
        **options,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._engine = engine
        self._cleanup_every = max(1, int(cleanup_every))
        self._increments = itertools.count(1)
        # Write-behind (sync_seconds > 0): see the class docstring.
        self.sync_seconds = max(0.0, float(sync_seconds))
        self._lock = threading.Lock()
        # (id of the engine, key) -> window; and the engines of those ids (kept while a window
        # of theirs is, so an id is never reused meanwhile).
        self._windows: dict[tuple[int, str], _Window] = {}
        self._engines: dict[int, Engine] = {}
        self._flusher_pid: int | None = None
        self._atexit_pid: int | None = None
        self._last_warning = float("-inf")
        self._listening: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._flush_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    # --- helpers ------------------------------------------------------------------------------

    def engine(self) -> Engine:
        """The engine given, else the current app's (each app its own database)."""
        if self._engine is not None:
            return self._engine
        return current_app.extensions["sqlalchemy"].engine

    @staticmethod
    def _cache() -> dict[str, tuple[int, float]]:
        """Counters this request has just written: the headers then need no extra query."""
        if not has_request_context():
            return {}
        return request.environ.setdefault(_REQUEST_CACHE, {})

    def _request_holds_sqlite_write_lock(self, engine: Engine) -> bool:
        if self._engine is not None or engine.dialect.name != "sqlite" or not has_app_context():
            return False
        registry = current_app.extensions["sqlalchemy"].session.registry
        if not registry.has():
            return False
        transaction = registry().get_transaction()
        # The connections the session's transaction holds (no public accessor in SQLAlchemy).
        connections = getattr(transaction, "_connections", None) or {}
        return any(
            holds_write_lock(entry[0])
            for entry in connections.values()
            if isinstance(entry, tuple) and entry and isinstance(entry[0], Connection)
        )

    def _sqlite_autocommit(self, engine: Engine, params: dict) -> tuple | None:
        """Run the upsert as one autocommitted statement on a pooled SQLite connection.

        The hot path (every vote passes here): a single statement is atomic by itself and takes
        the write lock for just its own duration, and skipping SQLAlchemy's transaction
        bookkeeping roughly halves the cost. Connections not in autocommit mode (not set up by
        database.configure_sqlite) get None, and the caller uses a transaction instead.
        """
        raw = engine.raw_connection()
        try:
            if getattr(raw.driver_connection, "isolation_level", "") is not None:
                return None
            cursor = raw.cursor()
            try:
                # Queue with the database's other writers (database.WriterGate), as the
                # transactions begun through SQLAlchemy do.
                with sqlite_write_gate(engine):
                    cursor.execute(_UPSERT.text, params)
                    rows = cursor.fetchall()
                    if next(self._increments) % self._cleanup_every == 0:
                        cursor.execute(_DELETE_EXPIRED.text, {"before": params["now"] - 60})
            finally:
                cursor.close()
        finally:
            raw.close()
        return rows[0]

    def _read(self, key: str) -> tuple[int, float] | None:
        cached = self._cache().get(key)
        if cached is not None:
            return cached
        # A read-only transaction: on SQLite a plain BEGIN, which never waits for the write lock.
        with write_intent(False), self.engine().connect() as conn:
            row = conn.execute(_SELECT, {"key": key}).first()
        return (int(row[0]), float(row[1])) if row else None

    # --- the Storage interface ----------------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        engine = self.engine()
        joins_request = self._request_holds_sqlite_write_lock(engine)
        if self.sync_seconds > 0 and not joins_request:
            return self._incr_behind(engine, key, expiry, amount)
        return self._upsert(engine, key, expiry, amount, time.time(), joins_request)[0]

    def _upsert(
        self,
        engine: Engine,
        key: str,
        expiry: int,
        amount: int,
        now: float,
        joins_request: bool = False,
    ) -> tuple[int, float]:
        """Write the increment at once: the shared count after it and the window's end.
        `joins_request`: the request's session holds SQLite's write lock; count in it."""
        params = {"key": key, "amount": amount, "expires_at": now + expiry, "now": now}
        row = None
        if joins_request:
            session = current_app.extensions["sqlalchemy"].session
            row = session.execute(_UPSERT, params).one()
        elif engine.dialect.name == "sqlite":
            row = self._sqlite_autocommit(engine, params)
        if row is None:
            with write_intent(True), engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    # A counter needs no durability: do not hold its row lock (every vote from
                    # one address updates one row) until the commit is flushed to disk.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                row = conn.execute(_UPSERT, params).one()
                if next(self._increments) % self._cleanup_every == 0:
                    conn.execute(_DELETE_EXPIRED, {"before": now - 60})
        count, expires_at = int(row[0]), float(row[1])
        self._cache()[key] = (count, expires_at)
        return count, expires_at

    # --- write-behind -------------------------------------------------------------------------

    def _incr_behind(self, engine: Engine, key: str, expiry: int, amount: int) -> int:
        now = time.time()
        where = (id(engine), key)
        with self._lock:
            window = self._windows.get(where)
            if window is not None and window.expires_at > now:
                window.pending += amount
                self._start_flusher()
                return window.count()
        # The first increment of a window in this process: written at once, which tells the
        # shared count and the window's end.
        count, expires_at = self._upsert(engine, key, expiry, amount, now)
        with self._lock:
            self._engines.setdefault(where[0], engine)
            if engine not in self._listening:
                # A disposed engine (the app stopping; tests) takes its windows with it, so
                # that the flusher never writes to a database that may be gone.
                self._listening.add(engine)
                event.listen(engine, "engine_disposed", self._forget_engine)
            window = self._windows.get(where)
            if window is None or window.expires_at <= now:
                self._windows[where] = _Window(expires_at=expires_at, length=expiry, shared=count)
                return count
            # Another thread of this process began the window meanwhile: both increments are
            # in the database, and `count` saw at least as many as that thread's answer (an
            # increment being written may be counted twice until the next write: a limit then
            # applies a little early, never late).
            window.shared = max(window.shared, count)
            return window.count()

    def _start_flusher(self) -> None:
        """Start this process's flusher thread unless it runs (threads do not survive a fork).
        Called with self._lock held."""
        pid = os.getpid()
        if self._flusher_pid == pid:
            return
        self._flusher_pid = pid
        thread = threading.Thread(target=self._flush_forever, name="ratelimit-flush", daemon=True)
        thread.start()
        if self._atexit_pid != pid:
            self._atexit_pid = pid
            atexit.register(self._flush_quietly)

    def _flush_forever(self) -> None:
        """Write every sync_seconds; end once no window is left (the next count restarts it)."""
        while not self._stopped.wait(self.sync_seconds):
            self._flush_quietly()
            with self._lock:
                if not self._windows:
                    self._flusher_pid = None
                    return

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as error:  # the counts are kept and written next time
            # One line, at most once a minute while it lasts (no traceback: this runs every
            # sync_seconds in a background thread).
            now = time.monotonic()
            if now - self._last_warning >= 60.0:
                self._last_warning = now
                log.warning(
                    "rate-limit counters could not be written (retrying every %s s): %s",
                    self.sync_seconds,
                    str(error).splitlines()[0] if str(error) else type(error).__name__,
                )
        else:
            self._last_warning = float("-inf")

    def _forget_engine(self, engine: Engine) -> None:
        """Drop the windows of a disposed engine (their unwritten counts with them)."""
        with self._lock:
            for where in [w for w in self._windows if w[0] == id(engine)]:
                del self._windows[where]
            self._engines.pop(id(engine), None)

    def flush(self) -> int:
        """Write this process's pending increments now (one transaction per database); how many
        counters were written. Windows that have ended are forgotten."""
        with self._flush_lock:
            now = time.time()
            batches: dict[int, list[tuple[str, _Window]]] = {}
            with self._lock:
                for where, window in list(self._windows.items()):
                    if window.expires_at <= now:
                        del self._windows[where]  # its pending increments were for that window
                    elif window.pending:
                        window.writing, window.pending = window.pending, 0
                        batches.setdefault(where[0], []).append((where[1], window))
                for engine_id in set(self._engines) - {engine_id for engine_id, _ in self._windows}:
                    del self._engines[engine_id]
            written = 0
            for engine_id, batch in batches.items():
                try:
                    answers = self._write_batch(self._engines[engine_id], batch, now)
                except BaseException:
                    with self._lock:
                        for _, window in batch:
                            window.pending += window.writing
                            window.writing = 0
                    raise
                with self._lock:
                    for key, window in batch:
                        window.writing = 0
                        answer = answers.get(key)
                        if answer is not None:
                            window.shared, window.expires_at = answer
                written += len(batch)
            return written

    def _write_batch(
        self, engine: Engine, batch: list[tuple[str, _Window]], now: float
    ) -> dict[str, tuple[int, float]]:
        answers: dict[str, tuple[int, float]] = {}
        with write_intent(True), engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            for start in range(0, len(batch), _BATCH_ROWS):
                part = batch[start : start + _BATCH_ROWS]
                params: dict[str, object] = {"now": now}
                for i, (key, window) in enumerate(part):
                    params[f"k{i}"] = key
                    params[f"a{i}"] = window.writing
                    params[f"e{i}"] = now + window.length
                for key, count, expires_at in conn.execute(_batch_upsert(len(part)), params):
                    answers[key] = (int(count), float(expires_at))
        return answers

    def _local(self, key: str) -> _Window | None:
        if self.sync_seconds <= 0 or not self._windows:
            return None
        with self._lock:
            window = self._windows.get((id(self.engine()), key))
        return window if window is not None and window.expires_at > time.time() else None

    def _forget(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._windows.clear()
            else:
                self._windows.pop((id(self.engine()), key), None)

    # --- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> int:
        window = self._local(key)
        if window is not None:
            return window.count()
        row = self._read(key)
        if row is None or row[1] <= time.time():
            return 0
        return row[0]

    def get_expiry(self, key: str) -> float:
        window = self._local(key)
        if window is not None:
            return window.expires_at
        row = self._read(key)
        now = time.time()
        if row is None or row[1] <= now:
            return now
        return row[1]

    def check(self) -> bool:
        try:
            with write_intent(False), self.engine().connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        self._cache().clear()
        self._forget()
        with write_intent(True), self.engine().begin() as conn:
            return conn.execute(_DELETE_ALL).rowcount

    def clear(self, key: str) -> None:
        self._cache().pop(key, None)
        self._forget(key)
        with write_intent(True), self.engine().begin() as conn:
            conn.execute(_DELETE_KEY, {"key": key})

    def delete_expired(self, before: float | None = None) -> int:
        """Delete the counters whose window ended before `before` (default: now)."""
        with write_intent(True), self.engine().begin() as conn:
            result = conn.execute(_DELETE_EXPIRED, {"before": before or time.time()})
            return result.rowcount


# --- keys ---------------------------------------------------------------------------------------


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


def client_address() -> str:
    """The client's address: the peer, or what a trusted proxy reports (DELIBERATE_PROXY_FIX)."""
    return request.remote_addr or "unknown"


def address_key() -> str:
    """Count per client address."""
    return address_key_of(client_address())


def address_key_of(address: str | None) -> str:
    """The per-address key of a client address (address_key, without a request)."""
    return f"addr:{address or 'unknown'}"


def user_key(user_id: int | str) -> str:
    """The per-account key of a logged-in user (account_key, without a request)."""
    return f"user:{user_id}"


def _session_user_id() -> str | None:
    user = g.get("_login_user")
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.id)
    # Flask-Login keeps "<user id>:<auth version>" in the signed session cookie: reading it
    # here costs no query (so the counter is written before the request's transaction begins).
    raw = session.get("_user_id")
    if isinstance(raw, str):
        user_id = raw.split(":", 1)[0]
        if user_id.isdigit():
            return user_id
    return None


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return None


def account_key() -> str:
    """Count per account: the logged-in user, else the API token used, else the address.

    A token is counted under a hash of itself (looking up its user would cost a query before
    the limit is checked); a user with several tokens therefore has a limit per token, and the
    per-address limit applies to all of them together.
    """
    user_id = _session_user_id()
    if user_id is not None:
        return user_key(user_id)
    token = _bearer_token()
    if token is not None:
        return f"token:{_digest(token)}"
    return f"anon:{client_address()}"


def login_account_key() -> str:
    """Count logins per account: the email address typed in, trimmed and lower-cased."""
    email = request.form.get("email") or ""
    if not email and request.is_json:
        body = request.get_json(silent=True)
        email = body.get("email") if isinstance(body, dict) else ""
    email = email.strip().lower()[:254] if isinstance(email, str) else ""
    return f"login:{_digest(email)}"


def link_key() -> str:
    """Count per invitation or reset link (its token, hashed): the link is the account."""
    token = (request.view_args or {}).get("token") or ""
    return f"link:{_digest(str(token))}"


# --- limit values ---------------------------------------------------------------------------------


def configured(name: str) -> Callable[[], str]:
    """The limit value named `name`, read from the app's configuration on each request."""

    def value() -> str:
        return str(current_app.config.get(name) or DEFAULT_LIMITS[name])

    value.__name__ = f"limit_{name.lower()}"
    return value


def limits_from_environment(environ) -> dict[str, str]:
    """RATELIMIT_* values from DELIBERATE_RATELIMIT_* environment variables, else the defaults."""
    return {
        name: environ.get(f"DELIBERATE_{name}") or default
        for name, default in DEFAULT_LIMITS.items()
    }


# --- counting without a request (the vote fast path) --------------------------------------

# Set in the WSGI environ by a caller that counted the request with count_directly and then
# handed it to the Flask view (to answer an error): the view's limits then do not count it
# again. A client cannot set an environ key (its headers arrive as HTTP_*).
COUNTED_ENVIRON_KEY = "deliberate.ratelimit.counted"


def counted_already() -> bool:
    """Whether this request's limits were counted before it reached Flask (see above)."""
    return bool(request.environ.get(COUNTED_ENVIRON_KEY))


def add_counted_limit_headers(response):
    """After a request whose limits were counted before it reached Flask (the view's limits
    were then skipped): the X-RateLimit-* headers of that count, as the view's limits would
    have added them (kept in the environ; True: no headers)."""
    headers = request.environ.get(COUNTED_ENVIRON_KEY)
    if isinstance(headers, tuple):
        for name, value in headers:
            response.headers.set(name, value)
    return response


@functools.lru_cache(maxsize=64)
def _parsed(value: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(value))


@dataclass(frozen=True, slots=True)
class DirectCount:
    """What counting a request's limits outside Flask-Limiter's request hooks found."""

    counted: bool  # every limit had room, and the request was counted against each
    headers: tuple[tuple[str, str], ...] = ()  # the X-RateLimit-* headers of that count


def count_directly(kind: str, account: str, address: str) -> DirectCount:
    """Count a request against the two limits of `kind` as the `_limits` decorators would
    (same strategy and storage, same keys and scopes, same order, stopping at the first limit
    without room), for a caller outside Flask-Limiter's request hooks: web/fast_vote.py.
    Needs an app context.

    `counted` False: a limit had no room; the caller hands the request to the Flask view,
    whose limits count it again and answer 429 (so the limits before the full one, in
    Flask-Limiter's order, count that refused request twice). Limits off: counted, no
    headers. Storage errors propagate (the caller hands the request over: Flask-Limiter then
    applies its in-memory fallback)."""
    from .extensions import limiter

    if not (limiter.enabled and limiter.initialized):
        return DirectCount(True)
    config = current_app.config
    prefix = config.get("RATELIMIT_KEY_PREFIX") or ""
    scope = kind.lower()
    entries: list[tuple[RateLimitItem, tuple[str, ...]]] = []
    for name, key, suffix in (
        (f"RATELIMIT_{kind}_PER_ADDRESS", address, "address"),
        (f"RATELIMIT_{kind}", account, "account"),
    ):
        value = str(config.get(name) or DEFAULT_LIMITS[name])
        ids = (key, f"{scope}:{suffix}")
        for item in _parsed(value):
            entries.append((item, (prefix, *ids) if prefix else ids))
    entries.sort(key=lambda entry: entry[0])  # stable: Flask-Limiter's order
    strategy = limiter.limiter
    if type(strategy) is FixedWindowRateLimiter:
        # Its hit() is an increment compared with the limit: made here, the count answered
        # gives the headers without reading the counter again.
        storage = strategy.storage
        counts = []
        for item, ids in entries:
            count = storage.incr(item.key_for(*ids), item.get_expiry(), amount=1)
            if count > item.amount:
                return DirectCount(False)
            counts.append(count)
        if not entries:
            return DirectCount(True)
        item, ids = entries[0]
        reset = storage.get_expiry(item.key_for(*ids))
        return DirectCount(True, _headers(item, max(0, item.amount - counts[0]), reset))
    for item, ids in entries:
        if not strategy.hit(item, *ids):
            return DirectCount(False)
    if not entries:
        return DirectCount(True)
    item, ids = entries[0]
    reset, remaining = strategy.get_window_stats(item, *ids)
    return DirectCount(True, _headers(item, remaining, reset))


def _headers(item: RateLimitItem, remaining: int, reset: float) -> tuple[tuple[str, str], ...]:
    """The X-RateLimit-* and Retry-After headers Flask-Limiter adds for a limit (with its
    configuration: RATELIMIT_HEADERS_ENABLED, RATELIMIT_HEADER_*); none when they are off."""
    config = current_app.config
    if not config.get("RATELIMIT_HEADERS_ENABLED"):
        return ()
    reset_at = int(reset + 1)
    if config.get("RATELIMIT_HEADER_RETRY_AFTER_VALUE") == "http-date":
        retry_after = http_date(reset_at)
    else:
        retry_after = str(int(reset_at - time.time()))
    return (
        (config.get("RATELIMIT_HEADER_LIMIT") or "X-RateLimit-Limit", str(item.amount)),
        (config.get("RATELIMIT_HEADER_REMAINING") or "X-RateLimit-Remaining", str(remaining)),
        (config.get("RATELIMIT_HEADER_RESET") or "X-RateLimit-Reset", str(reset_at)),
        (config.get("RATELIMIT_HEADER_RETRY_AFTER") or "Retry-After", retry_after),
    )


# --- decorators ------------------------------------------------------------------------------


def _limits(kind: str, account: Callable[[], str], *, scope: str | None = None, methods=None):
    """Apply the per-account and the per-address limit of `kind` (shared by every view using it).

    Put it ABOVE login_required and the role decorators: then it runs before anything of the
    request touches the database.
    """
    from .extensions import limiter

    scope = scope or kind.lower()
    per_account = limiter.shared_limit(
        configured(f"RATELIMIT_{kind}"),
        scope=f"{scope}:account",
        key_func=account,
        methods=methods,
        exempt_when=counted_already,
    )
    per_address = limiter.shared_limit(
        configured(f"RATELIMIT_{kind}_PER_ADDRESS"),
        scope=f"{scope}:address",
        key_func=address_key,
        methods=methods,
        exempt_when=counted_already,
    )

    def decorate(view):
        return per_account(per_address(view))

    return decorate


def login_limits():
    """Logins (POST): per email address typed in and per client address."""
    return _limits("LOGIN", login_account_key, methods=["POST"])


def invitation_limits(scope: str = "invite"):
    """Accepting an invitation or a reset link (POST): per link and per client address."""
    return _limits("INVITE", link_key, scope=scope, methods=["POST"])


def vote_limits():
    """Votes, from every endpoint that records one: per member and per client address."""
    return _limits("VOTE", account_key)


def statement_limits():
    """Statements written by members, from every endpoint: per member and per address."""
    return _limits("STATEMENT", account_key)


def export_limits():
    """Downloads (exports, the board paper): per user and per client address."""
    return _limits("EXPORT", account_key)


__all__ = [
    "DEFAULT_LIMITS",
    "DatabaseStorage",
    "account_key",
    "address_key",
    "client_address",
    "configured",
    "export_limits",
    "invitation_limits",
    "limits_from_environment",
    "link_key",
    "login_account_key",
    "login_limits",
    "statement_limits",
    "vote_limits",
]
