"""Blueprint: over_time. Starting the next round from an earlier one, and comparing two rounds.

Starting the next round is for facilitators; the comparison is for facilitators and leadership.
The services check authorisation again. Pages read the latest snapshots only.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.validators import InputRequired, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from ..services import lineage
from ..services.errors import ValidationError
from . import paging
from .decorators import actor, roles_required

bp = Blueprint("over_time", __name__, url_prefix="/facilitate")
COMPARE_PAGE_SIZE = paging.TABLE_PAGE_SIZE  # rows of each list of the comparison page


class _MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class NextRoundForm(FlaskForm):
    """The next round's question and context, and the statements to carry into it."""

    question = StringField(
        "Question of the next round", validators=[InputRequired("Write the next round's question.")]
    )
    context = TextAreaField("Context (Markdown)", validators=[Optional()])
    statement_ids = _MultiCheckboxField("Statements to carry forward", coerce=int, choices=[])


class CompareForm(FlaskForm):
    """Two rounds to compare (a GET form: it changes nothing, so it carries no CSRF token)."""

    class Meta:
        csrf = False

    a = SelectField("Earlier round (A)", choices=[], validate_choice=False)
    b = SelectField("Later round (B)", choices=[], validate_choice=False)


def _first_error(form: FlaskForm) -> str:
    for name, errors in form.errors.items():
        if errors:
            label = getattr(getattr(form, name, None), "label", None)
            prefix = f"{label.text}: " if label is not None and name != "csrf_token" else ""
            return f"{prefix}{errors[0]}"
    return "The form could not be read."


# --- starting the next round ---------------------------------------------------------------


def _render_next(
    plan: lineage.CarryForwardPlan, form: NextRoundForm, selected: set[int], status=200
):
    return (
        render_template(
            "over_time/next_round.html", plan=plan, round=plan.round, form=form, selected=selected
        ),
        status,
    )


@bp.route("/rounds/<int:round_id>/next", methods=["GET", "POST"])
@roles_required("facilitator")
def next_round(round_id: int):
    """Show and handle the form starting the next round with chosen statements carried forward."""
    plan = lineage.carry_forward_options(actor(), round_id)
    form = NextRoundForm() if request.method == "POST" else NextRoundForm(formdata=None)
    form.statement_ids.choices = [(o.statement.id, o.statement.text) for o in plan.options]
    if request.method != "POST":
        form.question.data = plan.round.question
        form.context.data = plan.round.context
        selected = {o.statement.id for o in plan.options if o.preselected}
        return _render_next(plan, form, selected)

    if not form.validate():
        flash(_first_error(form), "error")
        return _render_next(plan, form, _posted_ids(), 400)
    try:
        new_round = lineage.carry_forward(
            actor(),
            round_id,
            form.statement_ids.data or [],
            question=form.question.data or "",
            context=form.context.data or "",
        )
    except ValidationError as error:
        flash(error.message, "error")
        return _render_next(plan, form, set(form.statement_ids.data or ()), 400)
    n = len(form.statement_ids.data or ())
    flash(
        f"The next round is created as a draft with {n} statement{'' if n == 1 else 's'} "
        "carried forward. Check its settings, add seed statements, then open it.",
        "success",
    )
    return redirect(url_for("facilitate.round_detail", round_id=new_round.id), 303)


def _posted_ids() -> set[int]:
    return {int(v) for v in request.form.getlist("statement_ids") if v.isascii() and v.isdigit()}


# --- comparing two rounds --------------------------------------------------------------------


def _round_arg(name: str) -> int | None:
    """Read a round id from the query string: None when absent, 400 when not a number."""
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise ValidationError("Choose the two rounds from the lists.")
    return int(raw)


@bp.get("/compare")
@roles_required("facilitator", "leadership")
def compare():
    """Compare two rounds statement by statement: which moved towards or away from consensus."""
    rounds = lineage.comparable_rounds(actor())
    a_id, b_id = _round_arg("a"), _round_arg("b")
    sort = request.args.get("sort", "change")
    if sort not in lineage.SORTS:
        sort = "change"
    comparison = None
    if a_id is not None and b_id is not None:
        comparison = lineage.compare_rounds(actor(), a_id, b_id)
        comparison.matched = lineage.sort_matches(comparison.matched, sort)
    elif a_id is None and b_id is None and rounds:
        # Preselect the newest round and the round it continues (or the one before it).
        b_id = rounds[0].id
        a_id = rounds[0].previous_round_id or (rounds[1].id if len(rounds) > 1 else None)
    form = CompareForm(formdata=None)
    choices = [(str(r.id), f"{r.question} ({r.state}, #{r.id})") for r in rounds]
    form.a.choices = choices
    form.b.choices = choices
    form.a.data = str(a_id) if a_id is not None else None
    form.b.data = str(b_id) if b_id is not None else None
    # Each of the three lists a page at a time (rounds may hold thousands of statements).
    pages = (
        {
            name: paging.table_page(len(items), request.args.get(name, type=int), COMPARE_PAGE_SIZE)
            for name, items in (
                ("page", comparison.matched),
                ("page_a", comparison.only_a),
                ("page_b", comparison.only_b),
            )
        }
        if comparison is not None
        else {}
    )
    return render_template(
        "over_time/compare.html",
        form=form,
        rounds=rounds,
        comparison=comparison,
        pages=pages,
        sort=sort,
        threshold=lineage.CHANGE_THRESHOLD,
        directions=lineage,
    )
