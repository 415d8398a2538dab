"""Error pages and JSON errors: every failure gets a clear message, never a bare 500."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..extensions import db
from ..services.errors import DomainError


def wants_json() -> bool:
    """API paths and JSON clients get JSON errors; browsers get a page."""
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def error_response(status: int, title: str, message: str):
    if wants_json():
        return jsonify({"error": {"status": status, "title": title, "message": message}}), status
    return render_template("errors/error.html", status=status, title=title, message=message), status


def init_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(error: DomainError):
        db.session.rollback()
        titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict"}
        return error_response(
            error.status_code, titles.get(error.status_code, "Error"), error.message
        )

    @app.errorhandler(CSRFError)
    def _csrf_error(error: CSRFError):
        return error_response(
            400,
            "Form expired",
            "The form's security token was missing or expired. Go back, reload the page and "
            "try again.",
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        messages = {
            400: "The request could not be understood.",
            401: "Please log in first.",
            403: "You do not have permission to see this page.",
            404: "There is no page at this address.",
            405: "That method is not allowed here.",
            413: "The request is too large.",
            429: "Too many requests. Please wait a moment and try again.",
        }
        message = messages.get(status, error.description or "Something went wrong.")
        if status == 429 and error.description:
            message = f"Too many requests ({error.description}). Please wait and try again."
        return error_response(status, error.name, message)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        db.session.rollback()
        app.logger.exception("Unhandled error")
        return error_response(
            500, "Something went wrong", "An unexpected error occurred; nothing was saved."
        )
