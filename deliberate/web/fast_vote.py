"""The vote fast path: `POST /api/rounds/<id>/votes` answered in front of the Flask app.

Votes are most of what a busy round's server does, and through the whole Flask stack (request
context, session, Flask-Login's user load, Flask-WTF, Flask-Limiter's request hooks, the
after-request hooks) a vote cost about three times its own work (bench/README-load.md). This
WSGI middleware answers an *ordinary, valid* vote itself, with the same checks, the same
service and the same answer as the view `api.cast_vote`:

- the signed session cookie, read with the app's own session serializer (same key, same age);
  Flask-Login's session protection (the `_id` identifier of address and user agent);
- the CSRF token from the `X-CSRFToken` / `X-CSRF-Token` header, checked as Flask-WTF checks
  it (the session's token, signed with the app's key; on HTTPS the Referer must be this host);
- the JSON body, parsed by the view's own rules (`api.parse_vote_body`);
- the per-account and per-address vote limits, counted in Flask-Limiter's storage under the
  same keys (`ratelimit.count_directly`), with the same X-RateLimit-* headers;
- the member's row (exists, active, the session's auth version), read in the vote's own
  transaction, then the vote service's checks and writes (`voting.vote_and_advance_as`);
- the same JSON answer, with the same security headers (`security.add_security_headers`).

Anything else is handed, untouched, to the Flask app, which answers it as before: no session
cookie, a bad or expired signature or token, a remember-me login, a session-protection
mismatch, an unusual body (not application/json, too large, NUL characters, not a vote), a
query string, a limit without room (Flask-Limiter counts it and answers 429), and any refusal
by the service (no such round, closed, not a participant, logged out...). The hand-over
happens before anything is written; when the limits were already counted, the environ says
so and the view's limits do not count the request twice. So every error is the view's own
answer, and with `DELIBERATE_FAST_VOTE=0` (config FAST_VOTE_PATH) every vote takes the view.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import time
from hashlib import sha512

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import same_origin
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.exceptions import SecurityError
from werkzeug.http import parse_cookie
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_host

from ..extensions import login_manager
from ..models import MAX_ID
from ..ratelimit import (
    COUNTED_ENVIRON_KEY,
    address_key_of,
    count_directly,
    user_key,
)
from ..security import _has_nul, security_headers
from ..services import voting
from ..services.errors import DomainError
from ..worker import start_with_requests
from .api import parse_vote_body, vote_payload

log = logging.getLogger(__name__)

_VOTE_PATH = re.compile(r"/api/rounds/([1-9][0-9]{0,18})/votes\Z")

# A vote body is a few dozen bytes; anything much larger is left to the view (and its 413).
_MAX_BODY = 4096


class _HandOver(Exception):
    """The request is not an ordinary valid vote: the Flask app answers it."""


class _Answer:
    """A 200 JSON answer, as a WSGI application."""

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: list[tuple[str, str]]):
        self.body = body
        self.headers = headers

    def __call__(self, environ, start_response):
        start_response("200 OK", self.headers)
        return [self.body]


class _Verified:
    """Signed values (session cookies, CSRF tokens) already verified, by their exact text: a
    member's browser sends the same cookie and token with every vote, and checking the
    signature again would give the same answer. Bounded; the age limit is checked on every
    use, as itsdangerous does."""

    SIZE = 20_000

    def __init__(self, serializer) -> None:
        self.serializer = serializer
        self._known: dict[str, tuple[object, float]] = {}

    def loads(self, text: str, max_age: float | None) -> object:
        known = self._known.get(text)
        if known is None:
            value, signed_at = self.serializer.loads(text, return_timestamp=True)
            known = (value, signed_at.timestamp())
            if len(self._known) >= self.SIZE:
                self._known.clear()
            self._known[text] = known
        if max_age is not None:
            age = int(time.time()) - known[1]
            if age > max_age or age < 0:  # as itsdangerous: expired, or from the future
                raise BadData("signature expired")
        return known[0]


class FastVotePath:
    """WSGI middleware: answer ordinary votes, hand everything else to `wsgi_app`."""

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        # How many votes it answered and handed over (tests and benchmarks read these).
        self.answered = 0
        self.handed_over = 0

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST":
            match = _VOTE_PATH.match(environ.get("PATH_INFO") or "")
            if match is not None:
                response = self._answer(environ, int(match.group(1)))
                if response is not None:
                    self.answered += 1
                    return response(environ, start_response)
                self.handed_over += 1
        return self.wsgi_app(environ, start_response)

    # --- configuration read once ------------------------------------------------------------

    @cached_property
    def _session_serializer(self) -> _Verified:
        return _Verified(self.app.session_interface.get_signing_serializer(self.app))

    @cached_property
    def _csrf_serializer(self) -> _Verified:
        config = self.app.config
        key = config.get("WTF_CSRF_SECRET_KEY") or self.app.secret_key
        return _Verified(URLSafeTimedSerializer(key, salt="wtf-csrf-token"))

    # --- the request ------------------------------------------------------------------------

    def _answer(self, environ, round_id: int):
        """The response to an ordinary valid vote, or None to hand the request over."""
        if round_id > MAX_ID or environ.get("QUERY_STRING"):
            return None
        try:
            self._check_host(environ)
            body = self._read_body(environ)
        except _HandOver:
            return None
        try:
            statement_id, value = self._vote(body)
            session = self._session(environ)
            user_id, auth_version = self._member(session)
            self._check_session_protection(environ, session)
            self._check_csrf(environ, session)
        except _HandOver:
            return None
        with self.app.app_context():
            start_with_requests(self.app)
            try:
                counted = count_directly(
                    "VOTE", user_key(user_id), address_key_of(environ.get("REMOTE_ADDR"))
                )
            except Exception:  # the storage failed: the view's limiter falls back to memory
                log.debug("vote fast path: rate-limit storage failed; handed over", exc_info=True)
                return None
            if not counted.counted:
                return None  # no room: the view's limits count it and answer 429
            # If handed over now, the view must not count it again (and shows this count's
            # headers: ratelimit.add_counted_limit_headers).
            environ[COUNTED_ENVIRON_KEY] = counted.headers or True
            try:
                outcome = voting.vote_and_advance_as(
                    user_id, auth_version, round_id, statement_id, value
                )
            except DomainError:
                return None  # refused, nothing written: the view answers with its message
            except Exception:
                # E.g. the database failed: the view tries again and answers (its error page
                # and logging included). The vote's write is atomic: if it was not committed
                # the view records it, if it was the view finds it ("unchanged").
                log.warning("vote fast path failed; handed to the view", exc_info=True)
                return None
            # As jsonify (the app's JSON provider's response()): compact unless debugging, and
            # a final newline.
            provider = self.app.json
            if (provider.compact is None and self.app.debug) or provider.compact is False:
                layout: dict = {"indent": 2}
            else:
                layout = {"separators": (",", ":")}
            body = f"{provider.dumps(vote_payload(outcome), **layout)}\n".encode()
            headers = [
                ("Content-Type", self.app.json.mimetype),
                ("Content-Length", str(len(body))),
                ("Vary", "Cookie"),  # as Flask's session interface adds for a read session
            ]
            headers += counted.headers
        headers += security_headers(environ.get("wsgi.url_scheme") == "https", "application/json")
        return _Answer(body, headers)

    def _read_body(self, environ) -> bytes:
        """The body of an application/json request of known, small length; it is put back in
        the environ so that a request handed over reads it again."""
        content_type = (environ.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise _HandOver
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise _HandOver from None
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if not 0 < length <= _MAX_BODY or (limit is not None and length > limit):
            raise _HandOver
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        if len(body) != length:
            raise _HandOver
        return body

    @staticmethod
    def _vote(body: bytes) -> tuple[int, int]:
        try:
            parsed = json.loads(body)
            if _has_nul(parsed):
                raise _HandOver
            return parse_vote_body(parsed)
        except (ValueError, RecursionError, DomainError):
            raise _HandOver from None

    def _session(self, environ) -> dict:
        """The session, as Flask's SecureCookieSessionInterface reads it."""
        app = self.app
        if type(app.session_interface) is not SecureCookieSessionInterface:
            raise _HandOver
        cookie = parse_cookie(environ).get(app.config["SESSION_COOKIE_NAME"])
        if not cookie:
            raise _HandOver
        max_age = int(app.permanent_session_lifetime.total_seconds())
        try:
            session = self._session_serializer.loads(cookie, max_age)
        except BadData:
            raise _HandOver from None
        # A permanent session is re-sent on every response, and a remember-me change sets a
        # cookie: the view's session handling answers those.
        if not isinstance(session, dict) or "_permanent" in session or "_remember" in session:
            raise _HandOver
        return session

    @staticmethod
    def _member(session: dict) -> tuple[int, int]:
        """The '<user id>:<auth version>' Flask-Login keeps in the session."""
        raw = session.get("_user_id")
        if not isinstance(raw, str):
            raise _HandOver
        user_id, _, version = raw.partition(":")
        if not (user_id.isdigit() and version.isdigit() and user_id.isascii()):
            raise _HandOver
        user_id_int = int(user_id)
        if not 0 < user_id_int <= MAX_ID:
            raise _HandOver
        return user_id_int, int(version)

    def _check_session_protection(self, environ, session: dict) -> None:
        """Flask-Login's session protection: the session was made for this address and user
        agent (flask_login.utils._create_identifier's value)."""
        mode = self.app.config.get("SESSION_PROTECTION", login_manager.session_protection)
        if not mode or mode not in ("basic", "strong"):
            return
        address = environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR"))
        if address is not None:
            address = address.encode("utf-8").split(b",")[0].strip()
        agent = environ.get("HTTP_USER_AGENT")
        if agent is not None:
            agent = agent.encode("utf-8")
        identifier = sha512(f"{address}|{agent}".encode()).hexdigest()
        if identifier != session.get("_id"):
            raise _HandOver

    def _check_csrf(self, environ, session: dict) -> None:
        """Flask-WTF's CSRFProtect for this request (a JSON body has no form field)."""
        config = self.app.config
        if not config.get("WTF_CSRF_ENABLED", True) or not config.get(
            "WTF_CSRF_CHECK_DEFAULT", True
        ):
            return
        if "POST" not in config.get("WTF_CSRF_METHODS", ("POST", "PUT", "PATCH", "DELETE")):
            return
        token = None
        for header in config.get("WTF_CSRF_HEADERS", ("X-CSRFToken", "X-CSRF-Token")):
            token = environ.get("HTTP_" + header.upper().replace("-", "_"))
            if token:
                break
        field = config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
        if not token or field not in session:
            raise _HandOver
        try:
            signed = self._csrf_serializer.loads(token, config.get("WTF_CSRF_TIME_LIMIT", 3600))
        except BadData:
            raise _HandOver from None
        if not isinstance(signed, str) or not isinstance(session[field], str):
            raise _HandOver
        if not hmac.compare_digest(session[field], signed):
            raise _HandOver
        if environ.get("wsgi.url_scheme") == "https" and config.get("WTF_CSRF_SSL_STRICT", True):
            self._check_referrer(environ)

    def _host(self, environ) -> str:
        """The request's host as Flask's request.host reads it (TRUSTED_HOSTS applied)."""
        try:
            return get_host(environ, self.app.config.get("TRUSTED_HOSTS"))
        except (SecurityError, ValueError):
            raise _HandOver from None

    def _check_host(self, environ) -> None:
        """With TRUSTED_HOSTS, Flask refuses other hosts (400): the view answers those."""
        if self.app.config.get("TRUSTED_HOSTS"):
            self._host(environ)

    def _check_referrer(self, environ) -> None:
        """On HTTPS, Flask-WTF requires a Referer of this very origin (https://<host>/)."""
        referrer = environ.get("HTTP_REFERER")
        if not referrer or not same_origin(referrer, f"https://{self._host(environ)}/"):
            raise _HandOver


def install(app: Flask) -> None:
    """Put the fast path in front of the app unless FAST_VOTE_PATH is off. Call it before
    ProxyFix wraps the app (security.trust_proxies), so that it sees the client's address and
    scheme as the views do."""
    if app.config.get("FAST_VOTE_PATH", True) and not app.config.get("SERVER_NAME"):
        app.wsgi_app = FastVotePath(app, app.wsgi_app)
    # (With SERVER_NAME set, Flask routes by host too; the fast path leaves those apps alone.)


def fast_path(app: Flask) -> FastVotePath | None:
    """The app's fast path, if installed (the innermost FastVotePath under any middleware)."""
    wsgi = app.wsgi_app
    while wsgi is not None:
        if isinstance(wsgi, FastVotePath):
            return wsgi
        wsgi = getattr(wsgi, "app", None)
    return None
