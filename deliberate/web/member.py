"""Blueprint: member. The round list, the voting page, changing votes and writing statements.

Everything works without JavaScript (plain forms, Post/Redirect/Get); static/js/vote.js
enhances the vote form to use the JSON API in web/api.py.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, TextAreaField
from wtforms.validators import InputRequired, Optional

from ..models import is_valid_id
from ..ratelimit import account_key, configured, statement_limits, vote_limits
from ..services import statements as statements_service
from ..services import voting
from ..services.errors import DomainError
from .decorators import actor, login_required, reads_first

bp = Blueprint("member", __name__)


# Rate limits (deliberate/ratelimit.py): values from the configuration, per member and per
# address. The names below stay for views elsewhere that apply one limit themselves.
user_rate_key = account_key
VOTE_RATE_LIMIT = configured("RATELIMIT_VOTE")
STATEMENT_RATE_LIMIT = configured("RATELIMIT_STATEMENT")
VOTES_PAGE_SIZE = voting.VOTES_PAGE_SIZE


class VoteForm(FlaskForm):
    """A vote: the statement and agree (1), pass (0) or disagree (-1)."""

    statement_id = IntegerField(validators=[InputRequired("Choose a statement to vote on.")])
    value = IntegerField(validators=[InputRequired("Choose agree, disagree or pass.")])
    next = HiddenField(validators=[Optional()])


class StatementForm(FlaskForm):
    """A statement written by a member; the service checks length and duplicates."""

    text = TextAreaField("Your statement")


def _vote_form_error(form: VoteForm) -> str:
    if form.value.errors:
        return voting.BAD_VALUE_MESSAGE
    if form.statement_id.errors:
        return "Choose a statement to vote on."
    return "The form could not be read. Reload the page and try again."


def _round_page(round_id: int, form: StatementForm | None = None, status: int = 200):
    page = voting.voting_page(actor(), round_id)
    statement_form = form or StatementForm(formdata=None)
    statement_form.text.render_kw = {
        "maxlength": page.round.statement_max_length,
        "rows": 4,
        "data-char-counter": "",
    }
    return (
        render_template(
            "member/round.html",
            page=page,
            round=page.round,
            statement_form=statement_form,
            author_label=voting.author_label,
        ),
        status,
    )


@bp.get("/rounds")
@login_required
def rounds():
    """List the rounds the member can see: open ones first, with their progress."""
    listings = voting.member_rounds(actor())
    open_rounds = [listing for listing in listings if listing.accepting]
    other_rounds = [listing for listing in listings if not listing.accepting]
    return render_template("member/rounds.html", open_rounds=open_rounds, other_rounds=other_rounds)


@bp.get("/rounds/<int:round_id>")
@login_required
def round_page(round_id: int):
    """Show the round: question, context, progress, the next statement and the statement form."""
    return _round_page(round_id)


@bp.post("/rounds/<int:round_id>/vote")
@vote_limits()
@login_required
def vote(round_id: int):
    """Record a vote from the plain HTML form, then redirect back (Post/Redirect/Get)."""
    form = VoteForm()
    back_to_votes = request.form.get("next") == "votes"
    place = _votes_cursor(request.form) if back_to_votes else {}
    if not form.validate():
        flash(_vote_form_error(form), "error")
        return _back(round_id, back_to_votes, place=place)
    try:
        result = voting.cast_vote(
            actor(), form.statement_id.data, form.value.data, round_id=round_id
        )
    except voting.RoundNotFound:
        raise
    except DomainError as error:
        flash(error.message, "error")
        return _back(round_id, back_to_votes, place=place)
    flash("Vote changed." if result.changed else "Vote recorded.", "success")
    return _back(round_id, back_to_votes, statement_id=result.statement_id, place=place)


def _back(
    round_id: int, to_votes: bool, statement_id: int | None = None, place: dict | None = None
):
    if to_votes:
        anchor = f"statement-{statement_id}" if statement_id else None
        return redirect(
            url_for("member.my_votes", round_id=round_id, _anchor=anchor, **(place or {})),
            code=303,
        )
    return redirect(url_for("member.round_page", round_id=round_id), code=303)


def _votes_cursor(values) -> dict:
    """Return the votes page's cursor from query or form values: after or before (an id)."""
    for name in ("after", "before"):
        value = values.get(name, type=int)
        if is_valid_id(value):
            return {name: value}
    return {}


@bp.get("/rounds/<int:round_id>/votes")
@login_required
def my_votes(round_id: int):
    """List a page of the member's votes in the round, each with buttons to change it."""
    page = voting.voting_page(actor(), round_id)
    place = _votes_cursor(request.args)
    votes = voting.member_votes_page(
        actor(),
        round_id,
        limit=VOTES_PAGE_SIZE,
        after_id=place.get("after"),
        before_id=place.get("before"),
    )
    return render_template(
        "member/votes.html",
        page=page,
        round=page.round,
        votes=votes.items,
        votes_page=votes,
        place=place,
        author_label=voting.author_label,
    )


@bp.post("/rounds/<int:round_id>/statements")
@statement_limits()
@reads_first  # the service takes SQLite's write lock for its insert only
@login_required
def write_statement(round_id: int):
    """Submit the member's statement; on refusal show the page again with their text kept."""
    form = StatementForm()
    form.validate()  # only CSRF here; the service validates the text
    try:
        statement = statements_service.submit_statement(actor(), round_id, form.text.data or "")
    except DomainError as error:
        flash(error.message, "error")
        form.text.errors = [error.message]  # also beside the field, with aria-invalid
        return _round_page(round_id, form=form, status=error.status_code)
    if not statements_service.is_visible(statement):
        flash(
            "Thank you. Your statement waits for moderation: a facilitator will review it "
            "before others see it.",
            "success",
        )
    else:
        flash("Thank you. Your statement is now in the round for others to vote on.", "success")
    return redirect(url_for("member.round_page", round_id=round_id), code=303)
