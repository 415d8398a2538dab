"""Security headers on every response, and guards on every request's input."""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

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


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
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
                values.append(request.get_json(silent=True))
        if _has_nul(values):
            raise ValidationError(NUL_MESSAGE)


def init_security_headers(app: Flask) -> None:
    init_request_guards(app)

    @app.after_request
    def _set_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        headers.setdefault(
            "Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"
        )
        if request.is_secure:
            headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        # Pages can carry personal data and CSRF tokens: never let shared caches keep them.
        if response.mimetype == "text/html":
            headers.setdefault("Cache-Control", "no-store")
        return response
