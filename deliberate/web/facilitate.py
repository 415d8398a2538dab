"""Blueprint: facilitate. Rounds, seed statements, the moderation queue and the audit log.

Every view is for facilitators and admins; the services check authorisation again.
Times on the forms are entered and shown in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateTimeLocalField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import InputRequired, Optional
from wtforms.widgets import CheckboxInput, ListWidget

try:  # WTForms 3.3 deprecates (value, label) tuples in favour of SelectChoice.
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None

from ..models import RoundState
from ..services import accounts as accounts_service
from ..services import audit as audit_service
from ..services import duplicates as duplicates_service
from ..services import personal_data as personal_data_service
from ..services import rounds as rounds_service
from ..services import statements as statements_service
from ..services.errors import Conflict, DomainError, NotFound, ValidationError
from .decorators import actor, roles_required

bp = Blueprint("facilitate", __name__)

facilitator_only = roles_required("facilitator")

DATETIME_FORMAT = "%Y-%m-%dT%H:%M"
AUDIT_PAGE_SIZE = 50
MODERATION_PAGE_SIZE = statements_service.MODERATION_PAGE_SIZE
ROUND_STATEMENTS_PAGE_SIZE = rounds_service.ROUND_STATEMENTS_PAGE_SIZE

MODERATION_CHOICES = [
    ("pre", "Before: members' statements wait for a facilitator before anyone sees them"),
    ("post", "After: members' statements show at once; a facilitator can reject them later"),
]
RESULTS_CHOICES = [
    ("after_voting", "After they have voted"),
    ("after_close", "After the round closes"),
    ("never", "Never (only facilitators and leadership)"),
]
AUTHOR_CHOICES = [
    ("anonymous", "Anonymous"),
    ("organisation", "By organisation"),
]
STATE_ACTIONS = {
    RoundState.DRAFT: ("open", "Open the round now"),
    RoundState.OPEN: ("close", "Close the round now"),
    RoundState.CLOSED: ("publish", "Publish the results"),
}


def _choices(pairs) -> list:
    """Return select choices in the form the installed WTForms prefers."""
    if SelectChoice is None:
        return list(pairs)
    return [SelectChoice(str(value), label) for value, label in pairs]


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class RoundForm(FlaskForm):
    """A round's question, context and settings."""

    question = StringField("Question", validators=[InputRequired("Write the round's question.")])
    context = TextAreaField("Context (Markdown)", validators=[Optional()])
    allow_member_statements = BooleanField("Members may write statements")
    moderation = SelectField(
        "Moderation of members' statements", choices=_choices(MODERATION_CHOICES)
    )
    statement_max_length = IntegerField(
        "Statement length limit (characters)",
        validators=[InputRequired("Give a length limit between 20 and 2000 characters.")],
    )
    results_visibility = SelectField(
        "When members see the results", choices=_choices(RESULTS_CHOICES)
    )
    author_display = SelectField(
        "Authors of statements are shown", choices=_choices(AUTHOR_CHOICES)
    )
    opens_at = DateTimeLocalField("Opens at (UTC)", format=DATETIME_FORMAT, validators=[Optional()])
    closes_at = DateTimeLocalField(
        "Closes at (UTC)", format=DATETIME_FORMAT, validators=[Optional()]
    )
    organisation_ids = MultiCheckboxField("Organisations taking part", coerce=int, choices=[])
    retention_days = IntegerField(
        "Delete personal data this many days after the round closes",
        validators=[Optional()],
    )

    def settings(self) -> dict:
        """Return the form's values as service settings (times as UTC)."""
        return {
            "question": self.question.data or "",
            "context": self.context.data or "",
            "allow_member_statements": bool(self.allow_member_statements.data),
            "moderation": self.moderation.data,
            "statement_max_length": self.statement_max_length.data,
            "results_visibility": self.results_visibility.data,
            "author_display": self.author_display.data,
            "opens_at": _utc(self.opens_at.data),
            "closes_at": _utc(self.closes_at.data),
            "organisation_ids": list(self.organisation_ids.data or ()),
            "retention_days": self.retention_days.data,
        }


class SeedForm(FlaskForm):
    """Seed statements pasted one per line."""

    statements = TextAreaField(
        "Seed statements, one per line",
        validators=[InputRequired("Paste at least one statement, one per line.")],
    )


class RejectForm(FlaskForm):
    reason = TextAreaField("Reason", validators=[InputRequired("Give a reason for rejecting.")])
    state = StringField(validators=[Optional()])


class CorrectForm(FlaskForm):
    text = TextAreaField("Corrected text", validators=[InputRequired("Write the corrected text.")])
    state = StringField(validators=[Optional()])


class MergeForm(FlaskForm):
    into = IntegerField(
        "Merge into statement number",
        validators=[InputRequired("Give the number of the statement to merge into.")],
    )
    state = StringField(validators=[Optional()])


class BackForm(FlaskForm):
    state = StringField(validators=[Optional()])


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _first_error(form: FlaskForm) -> str:
    for name, errors in form.errors.items():
        if errors:
            label = getattr(getattr(form, name, None), "label", None)
            prefix = f"{label.text}: " if label is not None and name != "csrf_token" else ""
            return f"{prefix}{errors[0]}"
    return "The form could not be read."


def _organisation_choices() -> list:
    return _choices((o.id, o.name) for o in accounts_service.list_organisations(actor()))


def _round_form(round_=None) -> RoundForm:
    form = RoundForm() if request.method == "POST" else RoundForm(obj=round_)
    if request.method != "POST":
        if round_ is None:
            form.allow_member_statements.data = True
            form.statement_max_length.data = 280
            form.moderation.data = "pre"
            form.results_visibility.data = "after_voting"
            form.author_display.data = "anonymous"
        else:
            form.organisation_ids.data = [o.id for o in round_.organisations]
    form.organisation_ids.choices = _organisation_choices()
    return form


# --- rounds ----------------------------------------------------------------------------


@bp.get("/")
@facilitator_only
def rounds():
    """List every round with its state and counts."""
    summaries = rounds_service.round_summaries(actor())
    return render_template("facilitate/rounds.html", summaries=summaries)


@bp.route("/rounds/new", methods=["GET", "POST"])
@facilitator_only
def new_round():
    """Show and handle the form creating a round."""
    form = _round_form()
    if request.method == "POST":
        if not form.validate():
            flash(_first_error(form), "error")
            return render_template("facilitate/round_form.html", form=form, round=None), 400
        try:
            round_ = rounds_service.create_round(actor(), **form.settings())
        except ValidationError as error:
            flash(error.message, "error")
            return render_template("facilitate/round_form.html", form=form, round=None), 400
        flash("Round created as a draft. Add seed statements, then open it.", "success")
        return redirect(url_for(".round_detail", round_id=round_.id), 303)
    return render_template("facilitate/round_form.html", form=form, round=None)


@bp.get("/rounds/<int:round_id>")
@facilitator_only
def round_detail(round_id: int):
    """Show a round: settings, state buttons, seed form, a page of statements, participation."""
    return _render_round(
        round_id, after=_cursor(request.args, "after"), before=_cursor(request.args, "before")
    )


def _render_round(
    round_id: int,
    seed_form: SeedForm | None = None,
    status: int = 200,
    after: int | None = None,
    before: int | None = None,
):
    overview, page = rounds_service.round_overview_page(
        actor(), round_id, limit=ROUND_STATEMENTS_PAGE_SIZE, after_id=after, before_id=before
    )
    return (
        render_template(
            "facilitate/round.html",
            overview=overview,
            page=page,
            round=overview.round,
            seed_form=seed_form or SeedForm(formdata=None),
            state_action=STATE_ACTIONS.get(RoundState(overview.round.state)),
            accepting=rounds_service.is_accepting_votes(overview.round),
            locked=rounds_service.LOCKED_ONCE_VOTED if overview.has_votes else (),
            labels=dict(MODERATION_CHOICES + RESULTS_CHOICES + AUTHOR_CHOICES),
            now_utc=datetime.now(UTC),
            purge_due=personal_data_service.purge_due_at(overview.round),
        ),
        status,
    )


@bp.route("/rounds/<int:round_id>/edit", methods=["GET", "POST"])
@facilitator_only
def edit_round(round_id: int):
    """Show and handle the form editing a round's settings."""
    round_ = rounds_service.get_round(actor(), round_id)
    # Services check again; this only keeps members from learning about draft rounds.
    form = _round_form(round_)
    locked = rounds_service.LOCKED_ONCE_VOTED if rounds_service.has_votes(round_) else ()
    context = {"form": form, "round": round_, "locked": locked}
    if request.method == "POST":
        if not form.validate():
            flash(_first_error(form), "error")
            return render_template("facilitate/round_form.html", **context), 400
        settings = form.settings()
        for name in ("opens_at", "closes_at"):
            # The form shows minutes; keep the stored seconds when the minute is unchanged.
            stored = getattr(round_, name)
            if stored is not None and settings[name] == stored.replace(second=0, microsecond=0):
                settings[name] = stored
        try:
            rounds_service.update_round(actor(), round_id, **settings)
        except DomainError as error:
            flash(error.message, "error")
            return render_template("facilitate/round_form.html", **context), error.status_code
        flash("Settings saved.", "success")
        return redirect(url_for(".round_detail", round_id=round_id), 303)
    return render_template("facilitate/round_form.html", **context)


def _state_change(round_id: int, action: str, message: str):
    getattr(rounds_service, f"{action}_round")(actor(), round_id)
    flash(message, "success")
    return redirect(url_for(".round_detail", round_id=round_id), 303)


@bp.post("/rounds/<int:round_id>/open")
@facilitator_only
def open_round(round_id: int):
    """Open a draft round."""
    return _state_change(round_id, "open", "The round is open: members can vote now.")


@bp.post("/rounds/<int:round_id>/close")
@facilitator_only
def close_round(round_id: int):
    """Close an open round."""
    return _state_change(round_id, "close", "The round is closed: no more votes or statements.")


@bp.post("/rounds/<int:round_id>/publish")
@facilitator_only
def publish_round(round_id: int):
    """Publish a closed round."""
    return _state_change(round_id, "publish", "The round's results are published.")


@bp.post("/rounds/<int:round_id>/seed")
@facilitator_only
def seed(round_id: int):
    """Add pasted seed statements, one per line."""
    form = SeedForm()
    if not form.validate():
        flash(_first_error(form), "error")
        return _render_round(round_id, form, 400)
    try:
        result = rounds_service.add_seed_statements(actor(), round_id, form.statements.data)
    except ValidationError as error:
        flash(error.message, "error")
        return _render_round(round_id, form, 400)
    n = len(result.added)
    flash(f"Added {n} statement{'s' if n != 1 else ''}.", "success" if n else "info")
    if result.duplicates:
        flash(
            f"Skipped {len(result.duplicates)} already in the round: "
            + "; ".join(_short(t) for t in result.duplicates[:5])
            + ("; …" if len(result.duplicates) > 5 else ""),
            "info",
        )
    if result.too_long:
        flash(
            f"Skipped {len(result.too_long)} longer than the limit: "
            + "; ".join(_short(t) for t in result.too_long[:5])
            + ("; …" if len(result.too_long) > 5 else ""),
            "error",
        )
    return redirect(url_for(".round_detail", round_id=round_id), 303)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --- moderation ------------------------------------------------------------------------


def _queue_state(value: str | None) -> str:
    return value if value in statements_service.QUEUE_STATES else "pending"


def _cursor(values, name: str) -> int | None:
    """Return a page cursor (a row id) from query or form values; anything else is None."""
    value = values.get(name, type=int)
    return value if rounds_service.is_valid_id(value) else None


def _queue_cursor(values) -> dict:
    """Return the moderation page's cursor from query or form values: after, before or at."""
    for name in ("after", "before", "at"):
        value = _cursor(values, name)
        if value is not None:
            return {name: value}
    return {}


@bp.get("/rounds/<int:round_id>/moderation")
@facilitator_only
def moderation(round_id: int):
    """Show a page of the moderation queue of a round."""
    return _render_queue(
        round_id, _queue_state(request.args.get("state")), cursor=_queue_cursor(request.args)
    )


def _render_queue(
    round_id: int,
    state: str,
    status: int = 200,
    drafts: dict | None = None,
    cursor: dict | None = None,
):
    cursor = cursor or {}
    round_ = rounds_service.get_round(actor(), round_id)
    page = statements_service.moderation_page(
        actor(),
        round_id,
        state,
        limit=MODERATION_PAGE_SIZE,
        after_id=cursor.get("after"),
        before_id=cursor.get("before"),
        from_id=cursor.get("at"),
    )
    total = statements_service.count_moderation_queue(actor(), round_id, state)
    pending = (
        total
        if state == "pending"
        else statements_service.count_moderation_queue(actor(), round_id, "pending")
    )
    # The page's statements, each against the whole round; rejected ones are never flagged.
    near = (
        duplicates_service.round_near_duplicates(actor(), round_id, only=[s.id for s in page.items])
        if page.items and state != "rejected"
        else {}
    )
    return (
        render_template(
            "facilitate/moderation.html",
            round=round_,
            queue=page.items,
            page=page,
            cursor=cursor,
            total=total,
            state=state,
            pending=pending,
            drafts=drafts or {},
            near=near,
        ),
        status,
    )


def _back_to_queue(round_id: int, state: str | None, cursor: dict | None = None):
    return redirect(
        url_for(".moderation", round_id=round_id, state=_queue_state(state), **(cursor or {})),
        303,
    )


def _statement_round_id(statement_id: int) -> int:
    return statements_service.get_statement(actor(), statement_id).round_id


@bp.post("/statements/<int:statement_id>/accept")
@facilitator_only
def accept(statement_id: int):
    """Accept a statement."""
    form = BackForm()
    round_id = _statement_round_id(statement_id)
    state = _queue_state(form.state.data)
    cursor = _queue_cursor(request.form)
    try:
        statements_service.accept_statement(actor(), statement_id)
    except Conflict as error:
        flash(error.message, "error")
        return _render_queue(round_id, state, error.status_code, cursor=cursor)
    flash("Statement accepted: voters can see it.", "success")
    return _back_to_queue(round_id, state, cursor)


@bp.post("/statements/<int:statement_id>/reject")
@facilitator_only
def reject(statement_id: int):
    """Reject a statement with a reason."""
    form = RejectForm()
    round_id = _statement_round_id(statement_id)
    state = _queue_state(form.state.data)
    cursor = _queue_cursor(request.form)
    try:
        if not form.validate():
            raise ValidationError(_first_error(form))
        statements_service.reject_statement(actor(), statement_id, form.reason.data)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return _render_queue(
            round_id,
            state,
            error.status_code,
            {("reason", statement_id): form.reason.data},
            cursor,
        )
    flash("Statement rejected: voters no longer see it.", "success")
    return _back_to_queue(round_id, state, cursor)


@bp.post("/statements/<int:statement_id>/correct")
@facilitator_only
def correct(statement_id: int):
    """Correct a statement's text, keeping the original."""
    form = CorrectForm()
    round_id = _statement_round_id(statement_id)
    state = _queue_state(form.state.data)
    cursor = _queue_cursor(request.form)
    try:
        if not form.validate():
            raise ValidationError(_first_error(form))
        statements_service.correct_statement(actor(), statement_id, form.text.data)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return _render_queue(
            round_id, state, error.status_code, {("text", statement_id): form.text.data}, cursor
        )
    flash("Statement corrected; the original text is kept.", "success")
    return _back_to_queue(round_id, state, cursor)


@bp.post("/statements/<int:statement_id>/merge")
@facilitator_only
def merge(statement_id: int):
    """Merge a statement into another of its round: it is rejected as "Merged into #<id>"."""
    form = MergeForm()
    round_id = _statement_round_id(statement_id)
    state = _queue_state(form.state.data)
    cursor = _queue_cursor(request.form)
    try:
        if not form.validate():
            raise ValidationError(_first_error(form))
        merged = statements_service.merge_statement(actor(), statement_id, form.into.data)
    except (ValidationError, Conflict, NotFound) as error:
        flash(error.message, "error")
        draft = request.form.get("into", "")[:20]
        return _render_queue(
            round_id, state, error.status_code, {("into", statement_id): draft}, cursor
        )
    flash(
        f"Statement #{merged.id} merged into #{form.into.data}: voters no longer see it.",
        "success",
    )
    return _back_to_queue(round_id, state, cursor)


# --- audit log -------------------------------------------------------------------------


@bp.get("/audit")
@facilitator_only
def audit_log():
    """Show the audit log, newest first, optionally for one round."""
    round_id = request.args.get("round", type=int)
    before = request.args.get("before", type=int)
    if round_id is not None and rounds_service.find_round(round_id) is None:
        round_id = None  # an unknown round: show everything rather than an empty page
    if before is not None and not rounds_service.is_valid_id(before):
        before = None
    events = audit_service.list_events(
        actor(), round_id=round_id, limit=AUDIT_PAGE_SIZE + 1, before_id=before
    )
    more = len(events) > AUDIT_PAGE_SIZE
    events = events[:AUDIT_PAGE_SIZE]
    return render_template(
        "facilitate/audit.html",
        events=events,
        more=more,
        round_id=round_id,
        before=before,
        rounds=rounds_service.list_rounds(actor()),
    )
