"""Domain errors raised by services; the web layer turns them into messages and status codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: a request that cannot be carried out, with a message fit for the user."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ValidationError(DomainError):
    """The input is malformed or out of range."""

    status_code = 400


class NotAuthenticated(DomainError):
    """No one is logged in (or the session has ended: password changed, account deactivated)."""

    status_code = 401


class NotAllowed(DomainError):
    """The acting user may not do this."""

    status_code = 403


class NotFound(DomainError):
    """The thing does not exist (or the acting user may not know it exists)."""

    status_code = 404


class Conflict(DomainError):
    """The request conflicts with the current state (for example a duplicate)."""

    status_code = 409


class RoundClosed(Conflict):
    """The round does not accept votes or statements now."""


class DuplicateStatement(Conflict):
    """An equal statement (ignoring case and white space) already exists in the round."""

    def __init__(self, message: str, existing_id: int | None = None):
        super().__init__(message)
        self.existing_id = existing_id


class InvalidToken(DomainError):
    """An invitation or reset link is unknown, used or expired."""

    status_code = 400
