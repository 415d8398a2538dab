"""Security headers on every response, and guards on every request's input."""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from .services.errors import ValidationError

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


NUL_MESSAGE = "The request contains a NUL character, which no field accepts."


DEEP_JSON_MESSAGE = "The JSON body is nested too deeply."


def _has_nul(value: object) -> bool:
    """Whether any string in the (JSON-like) value contains NUL; iterative, any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def init_request_guards(app: Flask) -> None:
    """Refuse oversized bodies and NUL characters before any view runs.

    Werkzeug only enforces MAX_CONTENT_LENGTH when a view reads the body, so a view that reads
    nothing would accept any size. NUL is never valid text here, and PostgreSQL refuses it in
    a query parameter (a 500), so it is refused up front rather than in every service.
    """

    @app.before_request
    def _guard_input() -> None:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and (request.content_length or 0) > limit:
            raise RequestEntityTooLarge()
        values: list = [v for _, v in request.args.items(multi=True)]
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            values += [v for _, v in request.form.items(multi=True)]
            if request.is_json:
                try:
                    values.append(request.get_json(silent=True))
                except RecursionError:
                    raise ValidationError(DEEP_JSON_MESSAGE) from None
        if _has_nul(values):
            raise ValidationError(NUL_MESSAGE)


def trust_proxies(app: Flask) -> None:
    """Behind PROXY_FIX reverse proxies, take the client's address and scheme from them.

    Only the last PROXY_FIX hops of X-Forwarded-For / X-Forwarded-Proto are believed (werkzeug
    ProxyFix); with the default 0 the peer address is the client (per-address rate limits) and
    a forged X-Forwarded-For header changes nothing.
    """
    proxies = int(app.config.get("PROXY_FIX") or 0)
    if proxies > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)


_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
)


def security_headers(secure: bool, mimetype: str | None) -> list[tuple[str, str]]:
    """The security headers every response carries. `secure`: the request came over HTTPS
    (then HSTS too); `mimetype`: the response's (pages and JSON are never cached)."""
    headers = list(_HEADERS)
    if secure:
        headers.append(("Strict-Transport-Security", "max-age=31536000; includeSubDomains"))
    # Pages and JSON can carry personal data and CSRF tokens: never let caches keep them.
    if mimetype in ("text/html", "application/json"):
        headers.append(("Cache-Control", "no-store"))
    return headers


def add_security_headers(response: Response, secure: bool) -> None:
    """Add security_headers to a response (a header the view set itself is kept)."""
    headers = response.headers
    for name, value in security_headers(secure, response.mimetype):
        headers.setdefault(name, value)


def init_security_headers(app: Flask) -> None:
    """Strict security headers on every response: pages, errors, JSON, files, static assets."""
    init_request_guards(app)
    trust_proxies(app)

    @app.after_request
    def _set_headers(response: Response) -> Response:
        add_security_headers(response, request.is_secure)
        return response
