"""Blueprint: api. JSON endpoints, used by static/js/vote.js and by integrations.

Authentication is the session cookie; POSTs need the CSRF token in the `X-CSRFToken` header
(Flask-WTF's CSRFProtect checks it). Errors are JSON: {"error": {"status", "title", "message"}}.
"""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, jsonify, request
from flask_login import current_user

from ..ratelimit import vote_limits
from ..services import voting
from ..services.errors import ValidationError
from .decorators import actor, reads_first
from .errors import error_response

bp = Blueprint("api", __name__)


def api_login_required(view):
    """Answer 401 JSON for anonymous requests instead of redirecting to the login page."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        if not current_user.is_authenticated:
            return error_response(401, "Unauthorized", "Please log in first.")
        return view(*args, **kwargs)

    return wrapped


def _statement_json(statement: voting.OfferedStatement | None) -> dict | None:
    if statement is None:
        return None
    return {"id": statement.id, "text": statement.text, "author_label": statement.author_label}


def _read_vote_body() -> tuple[int, int]:
    """Read {"statement_id": int, "value": -1|0|1} from the body, or raise ValidationError."""
    # Only a JSON content type: a cross-site <form> can send text/plain, never application/json.
    body = request.get_json(silent=True) if request.is_json else None
    return parse_vote_body(body)


def parse_vote_body(body: object) -> tuple[int, int]:
    """The statement id and value of a parsed vote body, or ValidationError (also used by the
    fast path, web/fast_vote.py)."""
    if not isinstance(body, dict):
        raise ValidationError(
            'Send a JSON object such as {"statement_id": 12, "value": 1} '
            "with the header Content-Type: application/json."
        )
    missing = [name for name in ("statement_id", "value") if name not in body]
    if missing:
        raise ValidationError(f"Missing field: {', '.join(missing)}.")
    statement_id, value = body["statement_id"], body["value"]
    if type(statement_id) is not int or statement_id < 1:
        raise ValidationError("statement_id must be a statement's number, such as 12.")
    if type(value) is not int or value not in (-1, 0, 1):
        raise ValidationError(voting.BAD_VALUE_MESSAGE)
    return statement_id, value


def vote_payload(outcome: voting.VoteOutcome) -> dict:
    """The answer to a recorded vote (also the fast path's)."""
    return {
        "recorded": True,
        "changed": outcome.result.changed,
        "status": outcome.result.status,
        "statement_id": outcome.result.statement_id,
        "value": outcome.result.value,
        "progress": outcome.progress.as_dict(),
        "next": _statement_json(outcome.next),
    }


@bp.post("/rounds/<int:round_id>/votes")
@vote_limits()  # above the login check: the counters are written before the vote's transaction
@reads_first
@api_login_required
def cast_vote(round_id: int):
    """Record a vote and answer with the member's progress and the next statement.

    An ordinary, valid vote is answered before it gets here, by the fast path in front of the
    Flask app (web/fast_vote.py), with the same checks and the same answer; this view answers
    everything else (errors, unusual requests) and every vote when the fast path is off."""
    statement_id, value = _read_vote_body()
    outcome = voting.vote_and_advance(actor(), round_id, statement_id, value)
    return jsonify(vote_payload(outcome))


@bp.get("/rounds/<int:round_id>/next")
@api_login_required
def next_statement(round_id: int):
    """Answer with the member's progress and the next statement to vote on (or null)."""
    offer = voting.next_offer(actor(), round_id)
    return jsonify(
        {
            "accepting": offer.accepting,
            "progress": offer.progress.as_dict(),
            "next": _statement_json(offer.next),
        }
    )
