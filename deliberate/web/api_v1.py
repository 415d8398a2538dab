"""Blueprint: api_v1. The JSON API for integrations, at /api/v1 (described in web/openapi.py).

Authentication, checked before every view of this blueprint:
- `Authorization: Bearer <token>`: a personal API token (services/api_tokens.py). It acts as
  its user here and nowhere else; no CSRF token is needed (a cross-site page cannot set the
  header). A bad token is a 401 even when a session cookie comes with it.
- Otherwise the browser session (the same login as the pages). Then requests that change
  something must carry the session's CSRF token in the `X-CSRFToken` header, as the pages' own
  scripts do: CSRFProtect is told to skip this blueprint and the check is made here instead.
Rate limits: the same per-account and per-address limits as the pages' votes and statements
(deliberate/ratelimit.py), shared with them. Errors are always JSON:
{"error": {"status", "title", "message"}}. Every view calls the same
services as the pages, so the same authorisation, moderation and privacy rules apply.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, current_app, g, jsonify, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError as FormValidationError

from ..database import commit_keeping_objects, write_intent
from ..extensions import csrf, db
from ..models import MAX_ID, Round, User, utcnow
from ..ratelimit import statement_limits, vote_limits
from ..services import api_tokens, report, round_statements, rounds, voting
from ..services import statements as statements_service
from ..services.authz import can_participate
from ..services.errors import ValidationError
from ..services.privacy import MIN_CELL
from .decorators import actor, reads_first
from .errors import error_response

bp = Blueprint("api_v1", __name__)
csrf.exempt(bp)

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
JSON_BODY_MESSAGE = "Send a JSON object with the header Content-Type: application/json"


# --- authentication --------------------------------------------------------------------------


def _unauthorized(message: str, error: str | None = None):
    response, status = error_response(401, "Unauthorized", message)
    challenge = 'Bearer realm="deliberate"'
    if error:
        challenge += f', error="{error}"'
    response.headers["WWW-Authenticate"] = challenge
    return response, status


@bp.before_request
def _authenticate():
    """Authenticate by bearer token or session; check CSRF for session requests that write.

    The look-up only reads, and its transaction ends here: on SQLite a POST's transaction would
    otherwise take the write lock before the rate limits are counted (deliberate/ratelimit.py:
    the counters would then join the request's transaction, and a refused request would roll
    its count back).
    """
    with write_intent(False):
        refusal = _check_credentials()
        # Keep the user loaded: reading an expired attribute (the rate limits' key reads the
        # user's id) would begin the request's transaction again.
        commit_keeping_objects(db.session())
    return refusal


def _check_credentials():
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            return _unauthorized(
                "Send the API token as the header: Authorization: Bearer <token>.",
                "invalid_request",
            )
        user = api_tokens.authenticate(credentials)
        if user is None:
            return _unauthorized(
                "The API token is not valid: it may be mistyped, expired or revoked.",
                "invalid_token",
            )
        # Flask-Login's per-request user: current_user is the token's user for this request
        # only. Nothing is written to the session.
        g._login_user = user
        g.api_authenticated_by = "token"
        return None
    if not current_user.is_authenticated:
        return _unauthorized("Log in, or send an API token: Authorization: Bearer <token>.")
    g.api_authenticated_by = "session"
    if request.method not in SAFE_METHODS and current_app.config.get("WTF_CSRF_ENABLED", True):
        try:
            validate_csrf(request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token"))
        except (FormValidationError, CSRFError):
            return error_response(
                400,
                "CSRF token missing or invalid",
                "Requests made with the browser session must send the page's CSRF token in the "
                "X-CSRFToken header. Integrations should use an API token instead.",
            )
    return None


@bp.after_request
def _no_store(response):
    """Answers carry personal data (votes, names): no shared cache may keep them."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.vary.update(("Authorization", "Cookie"))
    return response


@bp.errorhandler(RecursionError)
def _too_deep(_error: RecursionError):
    return error_response(400, "Bad request", "The JSON is nested too deeply.")


# --- reading the request ---------------------------------------------------------------------


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise ValidationError(f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


def _paging() -> tuple[int, int]:
    return _int_arg("page", 1, 1, MAX_PAGE), _int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)


def _json_object(fields: tuple[str, ...], example: str) -> dict:
    """Return the JSON object body, refusing anything else and fields not in `fields`."""
    # Only a JSON content type: a cross-site <form> can send text/plain, never application/json.
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise ValidationError(f"{JSON_BODY_MESSAGE}, such as {example}.")
    if set(body) - set(fields):
        raise ValidationError(f"Only these fields are accepted: {', '.join(fields)}.")
    missing = [name for name in fields if name not in body]
    if missing:
        raise ValidationError(f"Missing field: {', '.join(missing)}.")
    return body


# --- JSON shapes -----------------------------------------------------------------------------


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _page(items: list, page: int, per_page: int, total: int) -> dict:
    return {
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": total,
        "next_page": page + 1 if page * per_page < total else None,
    }


def _round_json(round_: Round, user: User, now: datetime) -> dict:
    return {
        "id": round_.id,
        "question": round_.question,
        "context": round_.context or "",
        "state": round_.state,
        "status": voting.round_status(round_, now),
        "accepting_votes": rounds.is_accepting_votes(round_, now),
        "can_participate": can_participate(user, round_),
        "opens_at": _dt(round_.opens_at),
        "closes_at": _dt(round_.closes_at),
        "settings": {
            "allow_member_statements": bool(round_.allow_member_statements),
            "moderation": round_.moderation,
            "statement_max_length": round_.statement_max_length,
            "results_visibility": round_.results_visibility,
            "author_display": round_.author_display,
        },
    }


def _offered_json(statement: voting.OfferedStatement | None) -> dict | None:
    if statement is None:
        return None
    return {"id": statement.id, "text": statement.text, "author_label": statement.author_label}


def _shares_json(shares: report.Shares) -> dict:
    return {
        "seen": shares.seen,
        "agree": shares.agree,
        "disagree": shares.disagree,
        "pass": shares.passes,
        "agree_pct": shares.agree_pct,
        "disagree_pct": shares.disagree_pct,
        "pass_pct": shares.pass_pct,
    }


def _figures_json(figures: report.StatementFigures) -> dict:
    return {
        "id": figures.id,
        "text": figures.text,
        "votes": figures.votes,
        "overall": _shares_json(figures.overall),
        "by_group": [
            {"group_id": ref.id, **_shares_json(shares)} for ref, shares in figures.by_group
        ],
        "group_informed_consensus": figures.gac,
        "bridging": figures.bridging,
        "divisiveness": figures.divisiveness,
    }


def _consensus_json(item: report.ConsensusItem) -> dict:
    return {
        "statement_id": item.statement.id,
        "text": item.statement.text,
        "direction": item.direction,
        "overall_pct": item.overall_pct,
        "min_group_pct": item.min_group_pct,
        "robust": item.robust,
        "wording": item.wording,
    }


def _results_json(rep: report.Report) -> dict:
    headline = rep.headline
    return {
        "round_id": rep.round.id,
        "analysed": rep.analysed,
        "message": rep.message,
        "analysed_at": _dt(headline.analysed_at) if headline else None,
        "min_cell": MIN_CELL,
        "headline": None
        if headline is None
        else {
            "participants": headline.participants,
            "audience": headline.audience,
            "organisations_taking_part": headline.organisations_taking_part,
            "organisations_in_audience": headline.organisations_in_audience,
            "votes": headline.votes,
            "statements": headline.statements,
            "groups": headline.groups,
        },
        "groups": [
            {
                "id": summary.group.id,
                "label": summary.group.label,
                "size": None if summary.group.small else summary.group.size,
                "size_text": summary.group.size_text,
                "stability": summary.stability,
                "representative": [
                    {
                        "statement_id": item.statement.id,
                        "text": item.statement.text,
                        "direction": item.direction,
                        "group_pct": item.group_pct,
                        "others_pct": item.others_pct,
                    }
                    for item in summary.representative
                ],
            }
            for summary in rep.group_summaries
        ],
        "consensus": [_consensus_json(item) for item in rep.consensus],
        "majority_only": [_consensus_json(item) for item in rep.majority_only],
        "divisive": [f.id for f in rep.divisive],
        "uncertain": [f.id for f in rep.uncertain],
        "bridging": [
            f.id
            for f in sorted(
                (f for f in rep.statements if f.bridging is not None),
                key=lambda f: (-(f.bridging or 0), f.id),
            )
        ],
        "statements": [_figures_json(f) for f in rep.statements],
        "warnings": [{"title": w.title, "text": w.text} for w in rep.warnings],
    }


# --- endpoints -------------------------------------------------------------------------------


@bp.get("/me")
def me():
    """Answer with the authenticated user (a quick check that a token works)."""
    user = actor()
    organisation = user.organisation
    return jsonify(
        {
            "id": user.id,
            "name": user.name,
            "email": user.email,
            "role": user.role,
            "organisation": None
            if organisation is None
            else {"id": organisation.id, "name": organisation.name},
            "authenticated_by": g.get("api_authenticated_by"),
        }
    )


@bp.get("/rounds")
def list_rounds():
    """List the rounds the user may see, newest first, a page at a time."""
    page, per_page = _paging()
    user = actor()
    visible = rounds.list_rounds(user)
    now = utcnow()
    start = (page - 1) * per_page
    items = [_round_json(r, user, now) for r in visible[start : start + per_page]]
    return jsonify(_page(items, page, per_page, len(visible)))


@bp.get("/rounds/<int:round_id>")
def get_round(round_id: int):
    """Answer with one round, the user's progress in it and whether they may read results."""
    user = actor()
    round_ = rounds.get_round(user, round_id)
    data = _round_json(round_, user, utcnow())
    data["progress"] = voting.progress(user, round_id).as_dict()
    data["results_available"] = report.can_see_results(user, round_)
    data["links"] = {
        "statements": url_for(".statements", round_id=round_id),
        "votes": url_for(".votes", round_id=round_id),
        "results": url_for(".results", round_id=round_id),
    }
    return jsonify(data)


# GET and POST of one path share one URL rule: with two rules, werkzeug answers an id beyond
# the database's range with 405 (it checks the method before the converter) instead of 404.


@bp.route("/rounds/<int:round_id>/statements", methods=["GET", "POST"])
def statements(round_id: int):
    """GET: list the round's statements; POST: write one."""
    if request.method == "POST":
        return post_statement(round_id)
    return list_statements(round_id)


@bp.route("/rounds/<int:round_id>/votes", methods=["GET", "POST"])
def votes(round_id: int):
    """GET: list the user's votes in the round; POST: cast or change one."""
    if request.method == "POST":
        return cast_vote(round_id)
    return list_votes(round_id)


def list_statements(round_id: int):
    """List the round's statements as voters see them, with the user's own votes."""
    page, per_page = _paging()
    listing = round_statements.visible_statements(
        actor(), round_id, offset=(page - 1) * per_page, limit=per_page
    )
    items = [
        {
            "id": s.id,
            "text": s.text,
            "author_label": s.author_label,
            "origin": s.origin,
            "is_meta": s.is_meta,
            "created_at": _dt(s.created_at),
            "yours": s.yours,
            "your_vote": s.your_vote,
        }
        for s in listing.items
    ]
    return jsonify(_page(items, page, per_page, listing.total))


@statement_limits()
@reads_first  # the service takes SQLite's write lock for its insert only
def post_statement(round_id: int):
    """Write a statement in the round (as the round's settings and moderation allow)."""
    body = _json_object(("text",), '{"text": "Bus fares should be free for under-18s."}')
    if not isinstance(body["text"], str):
        raise ValidationError("text must be a string.")
    statement = statements_service.submit_statement(actor(), round_id, body["text"])
    visible = statements_service.is_visible(statement)
    response = jsonify(
        {
            "statement": {
                "id": statement.id,
                "text": statement.text,
                "moderation_state": statement.moderation_state,
                "visible": visible,
            },
            "message": "Your statement is now in the round for others to vote on."
            if visible
            else "Your statement waits for moderation: a facilitator reviews it before others "
            "see it.",
        }
    )
    response.status_code = 201
    return response


def list_votes(round_id: int):
    """List the user's own votes in the round (statements still visible), oldest first."""
    page, per_page = _paging()
    votes = voting.my_votes(actor(), round_id)
    start = (page - 1) * per_page
    items = [
        {"statement_id": statement.id, "text": statement.text, "value": value}
        for statement, value in votes[start : start + per_page]
    ]
    return jsonify(_page(items, page, per_page, len(votes)))


@vote_limits()
@reads_first
def cast_vote(round_id: int):
    """Cast or change the user's vote on a statement; answer with progress and the next one."""
    body = _json_object(("statement_id", "value"), '{"statement_id": 12, "value": 1}')
    statement_id, value = body["statement_id"], body["value"]
    if type(statement_id) is not int or not 1 <= statement_id <= MAX_ID:
        raise ValidationError("statement_id must be a statement's number, such as 12.")
    if type(value) is not int or value not in (-1, 0, 1):
        raise ValidationError(voting.BAD_VALUE_MESSAGE)
    outcome = voting.vote_and_advance(actor(), round_id, statement_id, value)
    return jsonify(
        {
            "recorded": True,
            "status": outcome.result.status,
            "statement_id": outcome.result.statement_id,
            "value": outcome.result.value,
            "previous_value": outcome.result.previous_value,
            "progress": outcome.progress.as_dict(),
            "next": _offered_json(outcome.next),
        }
    )


@bp.get("/rounds/<int:round_id>/results")
def results(round_id: int):
    """The latest analysis of the round, as the report shows it (small cells left out)."""
    sort = request.args.get("sort", "consensus")
    if sort not in report.SORTS:
        raise ValidationError(f"sort must be one of: {', '.join(report.SORTS)}.")
    return jsonify(_results_json(report.build_report(actor(), round_id, sort=sort, with_map=False)))
