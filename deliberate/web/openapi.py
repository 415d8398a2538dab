"""The OpenAPI 3 description of the JSON API (/api/v1), served as JSON and as a readable page.

GET /api/openapi.json  the document (public)
GET /api/docs          the same, rendered server-side as an HTML reference (no script needed)

The document is built here in Python so that its limits come from the code's own constants
(page sizes, id range, vote values). tests/web/test_api_v1.py checks that every /api/v1 route
of the app is described here and nothing else is; tests/web/test_api_fuzz.py throws requests
generated from this document at the app.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from flask import Blueprint, jsonify, render_template

from ..models import MAX_ID, ROLE_VALUES, RoundState, StatementOrigin, StatementState
from ..services import report
from .api_v1 import DEFAULT_PER_PAGE, MAX_PAGE, MAX_PER_PAGE

bp = Blueprint("api_docs", __name__)

JSON = "application/json"
REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": REF + name}


def _nullable(schema: dict) -> dict:
    """A schema that also allows null (OpenAPI 3.0 style)."""
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def _int(description: str, **extra) -> dict:
    return {"type": "integer", "description": description, **extra}


def _str(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


def _bool(description: str) -> dict:
    return {"type": "boolean", "description": description}


def _obj(description: str, properties: dict, required: list[str] | None = None, **extra) -> dict:
    schema = {"type": "object", "description": description, "properties": properties}
    schema["required"] = list(properties) if required is None else required
    schema.update(extra)
    return schema


def _array(items: dict, description: str) -> dict:
    return {"type": "array", "items": items, "description": description}


def _page_of(item: str, description: str) -> dict:
    return _obj(
        description,
        {
            "items": _array(_ref(item), "This page's items."),
            "page": _int("The page number (from 1).", minimum=1),
            "per_page": _int("Items per page.", minimum=1, maximum=MAX_PER_PAGE),
            "total": _int("Items on all pages together.", minimum=0),
            "next_page": _nullable(_int("The next page's number, or null on the last page.")),
        },
    )


DATE_TIME = {"type": "string", "format": "date-time"}
VOTE_VALUE = {
    "type": "integer",
    "enum": [-1, 0, 1],
    "description": "agree = 1, pass = 0, disagree = -1",
}


def _schemas() -> dict[str, dict]:
    shares_props = {
        "seen": _nullable(_int("People who saw the statement and voted (null: fewer than 3).")),
        "agree": _nullable(_int("How many agreed (null when suppressed).")),
        "disagree": _nullable(_int("How many disagreed (null when suppressed).")),
        "pass": _nullable(_int("How many passed (null when suppressed).")),
        "agree_pct": _nullable(_int("Share agreeing, in per cent.")),
        "disagree_pct": _nullable(_int("Share disagreeing, in per cent.")),
        "pass_pct": _nullable(_int("Share passing, in per cent.")),
    }
    return {
        "Error": _obj(
            "Every failure is answered with this body and the status code.",
            {
                "error": _obj(
                    "What went wrong.",
                    {
                        "status": _int("The HTTP status code, again."),
                        "title": _str("A short title, such as 'Not found'."),
                        "message": _str("A message fit to show a person."),
                    },
                )
            },
        ),
        "Organisation": _obj(
            "A member organisation of the coalition.",
            {"id": _int("The organisation's number."), "name": _str("Its name.")},
        ),
        "User": _obj(
            "The authenticated user.",
            {
                "id": _int("The user's number."),
                "name": _str("Their name."),
                "email": _str("Their email address."),
                "role": _str("Their role.", enum=list(ROLE_VALUES)),
                "organisation": _nullable(_ref("Organisation")),
                "authenticated_by": _str(
                    "How this request was authenticated.", enum=["token", "session"]
                ),
            },
        ),
        "RoundSettings": _obj(
            "How the round is run.",
            {
                "allow_member_statements": _bool("Whether members may write statements."),
                "moderation": _str(
                    "pre: statements wait for a facilitator; post: shown at once.",
                    enum=["pre", "post"],
                ),
                "statement_max_length": _int("The longest statement, in characters."),
                "results_visibility": _str(
                    "When members may read the results.",
                    enum=["never", "after_voting", "after_close"],
                ),
                "author_display": _str(
                    "Whether statements name the author's organisation.",
                    enum=["anonymous", "organisation"],
                ),
            },
        ),
        "Round": _obj(
            "A consultation round.",
            {
                "id": _int("The round's number."),
                "question": _str("The question put to members."),
                "context": _str("Background, as Markdown source (sanitise before showing it)."),
                "state": _str("The round's state.", enum=[s.value for s in RoundState]),
                "status": _str("Whether it takes votes now, in words."),
                "accepting_votes": _bool("Whether it takes votes and statements now."),
                "can_participate": _bool("Whether the user is in the round's audience."),
                "opens_at": _nullable({**DATE_TIME, "description": "When it opens (UTC)."}),
                "closes_at": _nullable({**DATE_TIME, "description": "When it closes (UTC)."}),
                "settings": _ref("RoundSettings"),
            },
        ),
        "Progress": _obj(
            "How many of the statements offered to the user they have voted on.",
            {
                "voted": _int("Statements voted on.", minimum=0),
                "total": _int("Statements offered.", minimum=0),
            },
        ),
        "RoundDetail": {
            "description": "A round with the user's progress in it.",
            "allOf": [
                _ref("Round"),
                _obj(
                    "Per-user details.",
                    {
                        "progress": _ref("Progress"),
                        "results_available": _bool("Whether the user may read the results now."),
                        "links": _obj(
                            "Where to read more.",
                            {
                                "statements": _str("The round's statements."),
                                "votes": _str("The user's votes."),
                                "results": _str("The latest analysis."),
                            },
                        ),
                    },
                ),
            ],
        },
        "RoundPage": _page_of("Round", "A page of rounds, newest first."),
        "Statement": _obj(
            "A statement as voters see it.",
            {
                "id": _int("The statement's number."),
                "text": _str("The statement."),
                "author_label": _str("Who wrote it, as the round's settings allow."),
                "origin": _str("Where it came from.", enum=[o.value for o in StatementOrigin]),
                "is_meta": _bool("About the process rather than the question."),
                "created_at": _nullable({**DATE_TIME, "description": "When it was written."}),
                "yours": _bool("Whether the user wrote it (nobody votes on their own)."),
                "your_vote": _nullable(
                    _int("The user's vote (1, 0, -1), or null.", minimum=-1, maximum=1)
                ),
            },
        ),
        "StatementPage": _page_of("Statement", "A page of statements, oldest first."),
        "Vote": _obj(
            "One of the user's votes.",
            {
                "statement_id": _int("The statement voted on."),
                "text": _str("The statement."),
                "value": VOTE_VALUE,
            },
        ),
        "VotePage": _page_of("Vote", "A page of the user's votes, oldest first."),
        "VoteRequest": _obj(
            "A vote to cast or change.",
            {
                "statement_id": _int("The statement's number.", minimum=1, maximum=MAX_ID),
                "value": VOTE_VALUE,
            },
            additionalProperties=False,
            example={"statement_id": 12, "value": 1},
        ),
        "OfferedStatement": _obj(
            "The next statement to vote on.",
            {
                "id": _int("The statement's number."),
                "text": _str("The statement."),
                "author_label": _str("Who wrote it, as the round's settings allow."),
            },
        ),
        "VoteOutcome": _obj(
            "The recorded vote, the user's progress and what to vote on next.",
            {
                "recorded": _bool("Always true."),
                "status": _str(
                    "new: a first vote; changed: an earlier vote replaced; unchanged: the same.",
                    enum=["new", "changed", "unchanged"],
                ),
                "statement_id": _int("The statement voted on."),
                "value": VOTE_VALUE,
                "previous_value": _nullable(
                    _int("The vote it replaced, or null.", minimum=-1, maximum=1)
                ),
                "progress": _ref("Progress"),
                "next": _nullable(_ref("OfferedStatement")),
            },
        ),
        "StatementRequest": _obj(
            "A statement to add to the round.",
            {
                "text": _str(
                    "The statement (the round's statement_max_length applies).",
                    minLength=1,
                    maxLength=2000,
                )
            },
            additionalProperties=False,
            example={"text": "Bus fares should be free for under-18s."},
        ),
        "StatementCreated": _obj(
            "The statement as stored.",
            {
                "statement": _obj(
                    "The new statement.",
                    {
                        "id": _int("Its number."),
                        "text": _str("Its text as stored (white space tidied)."),
                        "moderation_state": _str(
                            "Its moderation state.", enum=[s.value for s in StatementState]
                        ),
                        "visible": _bool("Whether voters see it now."),
                    },
                ),
                "message": _str("What happens next, in words."),
            },
        ),
        "Shares": _obj("Votes on a statement; null where fewer than 3 people.", shares_props),
        "GroupShares": _obj(
            "Votes on a statement within one opinion group.",
            {"group_id": _int("The group."), **shares_props},
        ),
        "StatementFigures": _obj(
            "A statement's results.",
            {
                "id": _int("The statement's number."),
                "text": _str("The statement."),
                "votes": _int("Votes on it.", minimum=0),
                "overall": _ref("Shares"),
                "by_group": _array(_ref("GroupShares"), "The same per opinion group."),
                "group_informed_consensus": _nullable(
                    {"type": "number", "description": "Agreement across every group (0-1)."}
                ),
                "bridging": _nullable(
                    {"type": "number", "description": "Bridging score: agreement across groups."}
                ),
                "divisiveness": _nullable(
                    {"type": "number", "description": "How much the groups differ on it."}
                ),
            },
        ),
        "ConsensusItem": _obj(
            "A statement the coalition agrees (or disagrees) on.",
            {
                "statement_id": _int("The statement's number."),
                "text": _str("The statement."),
                "direction": _str("Agreed or disagreed.", enum=["agree", "disagree"]),
                "overall_pct": _nullable(_int("The share overall, in per cent.")),
                "min_group_pct": _nullable(_int("The lowest share in any group shown.")),
                "robust": _nullable(_bool("Whether it held in every resample (null: unchecked).")),
                "wording": _str("The same in words."),
            },
        ),
        "Representative": _obj(
            "A statement that sets a group apart.",
            {
                "statement_id": _int("The statement's number."),
                "text": _str("The statement."),
                "direction": _str("How the group leans.", enum=["agree", "disagree"]),
                "group_pct": _nullable(_int("The group's share, in per cent.")),
                "others_pct": _nullable(_int("Everyone else's share, in per cent.")),
            },
        ),
        "Group": _obj(
            "An opinion group: people who vote alike.",
            {
                "id": _int("The group's number (stable within a round)."),
                "label": _str("Its name."),
                "size": _nullable(_int("Its members (null: fewer than 3).")),
                "size_text": _str("Its size in words."),
                "stability": _nullable(
                    {"type": "number", "description": "Share of resamples it re-formed in."}
                ),
                "representative": _array(_ref("Representative"), "What sets it apart."),
            },
        ),
        "Headline": _obj(
            "Headline figures.",
            {
                "participants": _int("People who voted."),
                "audience": _int("Members the round is for."),
                "organisations_taking_part": _int("Organisations with a member who voted."),
                "organisations_in_audience": _int("Organisations the round is for."),
                "votes": _int("Votes analysed."),
                "statements": _int("Statements in the results."),
                "groups": _int("Opinion groups."),
            },
        ),
        "Results": _obj(
            "The latest analysis of a round, as its report shows it. No figure about fewer "
            "than min_cell people is given.",
            {
                "round_id": _int("The round's number."),
                "analysed": _bool("Whether the analysis has run; if not, the rest is empty."),
                "message": _nullable(_str("Why there are no results yet.")),
                "analysed_at": _nullable({**DATE_TIME, "description": "When it ran."}),
                "min_cell": _int("The smallest number of people a figure may be about."),
                "headline": _nullable(_ref("Headline")),
                "groups": _array(_ref("Group"), "The opinion groups."),
                "consensus": _array(_ref("ConsensusItem"), "What unites: in every group."),
                "majority_only": _array(
                    _ref("ConsensusItem"), "Agreed overall but not in every group."
                ),
                "divisive": _array(_int("A statement's number."), "What divides the groups."),
                "uncertain": _array(_int("A statement's number."), "Many people passed."),
                "bridging": _array(
                    _int("A statement's number."), "Statements by bridging score, highest first."
                ),
                "statements": _array(_ref("StatementFigures"), "Every statement's results."),
                "warnings": _array(
                    _obj(
                        "A caveat.",
                        {"title": _str("The caveat."), "text": _str("What it means.")},
                    ),
                    "Caveats about the data.",
                ),
            },
        ),
    }


ERRORS = {
    400: ("BadRequest", "The request is malformed or a value is out of range."),
    401: ("Unauthorized", "No valid API token or session."),
    403: ("Forbidden", "The user may not do this (for example read results not shared yet)."),
    404: ("NotFound", "No such round or statement, or one the user may not see."),
    405: ("MethodNotAllowed", "That method is not allowed here."),
    409: ("Conflict", "The round does not take this now, or the statement already exists."),
    413: ("PayloadTooLarge", "The body is too large."),
    429: ("TooManyRequests", "Too many requests: wait and try again."),
}


def _responses(ok: tuple[int, str, str], *errors: int) -> dict:
    status, schema, description = ok
    responses: dict[str, Any] = {
        str(status): {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    }
    for code in sorted({400, 401, *errors}):
        responses[str(code)] = {"$ref": f"#/components/responses/{ERRORS[code][0]}"}
    return responses


def _json_body(schema: str) -> dict:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


ROUND_ID = {"$ref": "#/components/parameters/RoundId"}
PAGING = [{"$ref": "#/components/parameters/Page"}, {"$ref": "#/components/parameters/PerPage"}]
WRITE_ERRORS = (403, 404, 409, 413, 429)


def _paths() -> dict:
    return {
        "/api/v1/me": {
            "get": {
                "operationId": "getMe",
                "summary": "Who am I",
                "description": "The authenticated user: a quick check that a token works.",
                "tags": ["Account"],
                "responses": _responses((200, "User", "The user.")),
            }
        },
        "/api/v1/rounds": {
            "get": {
                "operationId": "listRounds",
                "summary": "List rounds",
                "description": "The rounds the user may see, newest first. Members see the "
                "rounds for their organisation that are not drafts; facilitators, leadership "
                "and admins see every round.",
                "tags": ["Rounds"],
                "parameters": PAGING,
                "responses": _responses((200, "RoundPage", "A page of rounds.")),
            }
        },
        "/api/v1/rounds/{round_id}": {
            "get": {
                "operationId": "getRound",
                "summary": "Get a round",
                "description": "One round with the user's progress and whether they may read "
                "its results now.",
                "tags": ["Rounds"],
                "parameters": [ROUND_ID],
                "responses": _responses((200, "RoundDetail", "The round."), 404),
            }
        },
        "/api/v1/rounds/{round_id}/statements": {
            "get": {
                "operationId": "listStatements",
                "summary": "List a round's statements",
                "description": "The statements voters see (under pre-moderation only accepted "
                "ones), oldest first, each with the user's own vote.",
                "tags": ["Statements"],
                "parameters": [ROUND_ID, *PAGING],
                "responses": _responses((200, "StatementPage", "A page of statements."), 404),
            },
            "post": {
                "operationId": "postStatement",
                "summary": "Write a statement",
                "description": "Add a statement to an open round that takes members' "
                "statements. Under pre-moderation it waits for a facilitator before others see "
                "it. Rate-limited per user.",
                "tags": ["Statements"],
                "parameters": [ROUND_ID],
                "requestBody": _json_body("StatementRequest"),
                "responses": _responses(
                    (201, "StatementCreated", "The statement was stored."), *WRITE_ERRORS
                ),
            },
        },
        "/api/v1/rounds/{round_id}/votes": {
            "get": {
                "operationId": "listVotes",
                "summary": "List the user's votes",
                "description": "The user's own votes in the round, oldest first.",
                "tags": ["Votes"],
                "parameters": [ROUND_ID, *PAGING],
                "responses": _responses((200, "VotePage", "A page of votes."), 404),
            },
            "post": {
                "operationId": "castVote",
                "summary": "Cast or change a vote",
                "description": "Vote agree (1), pass (0) or disagree (-1) on a visible "
                "statement of an open round; voting again changes the vote (every change is "
                "kept in the vote history). Rate-limited per user.",
                "tags": ["Votes"],
                "parameters": [ROUND_ID],
                "requestBody": _json_body("VoteRequest"),
                "responses": _responses(
                    (200, "VoteOutcome", "The vote was recorded."), *WRITE_ERRORS
                ),
            },
        },
        "/api/v1/rounds/{round_id}/results": {
            "get": {
                "operationId": "getResults",
                "summary": "Read a round's results",
                "description": "The latest analysis snapshot as the round's report shows it: "
                "opinion groups, what unites, what divides, bridging statements, each group's "
                "representative statements. Facilitators, leadership and admins may always "
                "read it; members as the round's results setting allows (otherwise 403). "
                "Figures about fewer than 3 people are null.",
                "tags": ["Results"],
                "parameters": [ROUND_ID, {"$ref": "#/components/parameters/Sort"}],
                "responses": _responses((200, "Results", "The results."), 403, 404),
            }
        },
    }


@lru_cache(maxsize=1)
def _document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "deliberate API",
            "version": "1",
            "description": "Rounds, statements, votes and results of deliberate, for "
            "integrations. Authenticate with a personal API token (create one on your "
            "account's API tokens page) sent as `Authorization: Bearer <token>`. The API uses "
            "the same rules as the web pages: you see and do exactly what you could there.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "tags": [
            {"name": "Account", "description": "The authenticated user."},
            {"name": "Rounds", "description": "Consultation rounds."},
            {"name": "Statements", "description": "Statements in a round."},
            {"name": "Votes", "description": "The user's votes."},
            {"name": "Results", "description": "The latest analysis."},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A personal API token, such as dlb_Xy12...: "
                    "Authorization: Bearer <token>. No CSRF token is needed.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "The browser session of the web pages. Requests that "
                    "change something must also send the page's CSRF token in the X-CSRFToken "
                    "header.",
                },
            },
            "parameters": {
                "RoundId": {
                    "name": "round_id",
                    "in": "path",
                    "required": True,
                    "description": "The round's number.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                },
                "Page": {
                    "name": "page",
                    "in": "query",
                    "required": False,
                    "description": "The page number, from 1.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
                },
                "PerPage": {
                    "name": "per_page",
                    "in": "query",
                    "required": False,
                    "description": f"Items per page (at most {MAX_PER_PAGE}).",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_PER_PAGE,
                        "default": DEFAULT_PER_PAGE,
                    },
                },
                "Sort": {
                    "name": "sort",
                    "in": "query",
                    "required": False,
                    "description": "The order of the statements' results.",
                    "schema": {
                        "type": "string",
                        "enum": list(report.SORTS),
                        "default": "consensus",
                    },
                },
            },
            "responses": {
                name: {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
                for name, description in ERRORS.values()
            },
            "schemas": _schemas(),
        },
    }


def openapi_document() -> dict:
    """Return the OpenAPI 3 document of /api/v1 (a copy: callers may change it)."""
    return copy.deepcopy(_document())


# --- the rendered reference ------------------------------------------------------------------


def _schema_name(schema: dict) -> str | None:
    ref = schema.get("$ref", "")
    return ref[len(REF) :] if ref.startswith(REF) else None


def type_text(schema: dict) -> tuple[str, str | None]:
    """Describe a schema's type in words, with the schema it links to (if any)."""
    name = _schema_name(schema)
    if name:
        return name, name
    if "allOf" in schema and len(schema["allOf"]) == 1:
        text, link = type_text(schema["allOf"][0])
    elif "allOf" in schema:
        names = [type_text(part)[0] for part in schema["allOf"]]
        text, link = " and ".join(names), None
    elif schema.get("type") == "array":
        inner, link = type_text(schema.get("items") or {})
        text = f"array of {inner}"
    else:
        text, link = str(schema.get("type", "any")), None
        if "format" in schema:
            text += f" ({schema['format']})"
        if "enum" in schema:
            text += ": one of " + ", ".join(str(v) for v in schema["enum"])
        limits = [
            f"{word} {schema[key]}"
            for key, word in (
                ("minimum", "min"),
                ("maximum", "max"),
                ("minLength", "min length"),
                ("maxLength", "max length"),
            )
            if key in schema
        ]
        if limits:
            text += f" ({', '.join(limits)})"
    if schema.get("nullable"):
        text += " or null"
    return text, link


def _fields(schema: dict) -> list[dict]:
    required = set(schema.get("required") or [])
    rows = []
    for name, prop in (schema.get("properties") or {}).items():
        text, link = type_text(prop)
        description = prop.get("description") or next(
            (p.get("description") for p in prop.get("allOf", []) if p.get("description")), ""
        )
        rows.append(
            {
                "name": name,
                "type": text,
                "link": link,
                "required": name in required,
                "description": description,
            }
        )
    return rows


def _resolve(doc: dict, item: dict, kind: str) -> dict:
    ref = item.get("$ref")
    if ref:
        return doc["components"][kind][ref.rsplit("/", 1)[1]]
    return item


def reference_model(doc: dict) -> dict:
    """Turn the document into plain lists for the reference page's template."""
    operations = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parameters = []
            for raw in op.get("parameters", []):
                param = _resolve(doc, raw, "parameters")
                text, _link = type_text(param["schema"])
                parameters.append(
                    {
                        "name": param["name"],
                        "in": param["in"],
                        "required": param.get("required", False),
                        "type": text,
                        "description": param.get("description", ""),
                    }
                )
            body = None
            if "requestBody" in op:
                schema = op["requestBody"]["content"][JSON]["schema"]
                name = _schema_name(schema)
                body = {
                    "schema": name,
                    "example": doc["components"]["schemas"][name].get("example"),
                }
            responses = []
            for status, raw in op["responses"].items():
                response = _resolve(doc, raw, "responses")
                schema = (response.get("content") or {}).get(JSON, {}).get("schema", {})
                responses.append(
                    {
                        "status": status,
                        "description": response["description"],
                        "schema": _schema_name(schema),
                    }
                )
            operations.append(
                {
                    "anchor": op["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "tag": (op.get("tags") or [""])[0],
                    "parameters": parameters,
                    "body": body,
                    "responses": responses,
                }
            )
    schemas = []
    for name, schema in doc["components"]["schemas"].items():
        parts = schema.get("allOf") or [schema]
        fields = []
        includes = []
        for part in parts:
            if "$ref" in part:
                includes.append(_schema_name(part))
            else:
                fields.extend(_fields(part))
        schemas.append(
            {
                "name": name,
                "description": schema.get("description", ""),
                "includes": includes,
                "fields": fields,
                "example": schema.get("example"),
            }
        )
    return {
        "info": doc["info"],
        "security": doc["components"]["securitySchemes"],
        "operations": operations,
        "schemas": schemas,
    }


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document of the JSON API (public)."""
    return jsonify(openapi_document())


@bp.get("/docs")
def reference():
    """The API reference: the OpenAPI document rendered as a page (public)."""
    return render_template("api/reference.html", ref=reference_model(openapi_document()))
