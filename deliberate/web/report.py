"""Blueprint: report. The round report, the opinion map (SVG, PNG) and the facilitators' edits.

Everything is read from the latest analysis snapshot (services/report.py); nothing here runs
the analysis. Members see the report only when the round's results setting allows it.
"""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import StringField
from wtforms.validators import Length

from ..services import opinion_map
from ..services import report as report_service
from ..services.errors import DomainError
from . import paging
from .decorators import actor, login_required, roles_required

bp = Blueprint("report", __name__)

facilitator_only = roles_required("facilitator")

SORT_LABELS = {
    "consensus": "Consensus (group-informed)",
    "bridging": "Bridging",
    "divisiveness": "Divisiveness",
    "votes": "Votes",
}


class GroupNameForm(FlaskForm):
    """A facilitator's name for an opinion group (empty: back to "Group A")."""

    name = StringField(
        "Group name",
        validators=[
            Length(
                max=report_service.GROUP_NAME_MAX,
                message=f"A group name can be at most {report_service.GROUP_NAME_MAX} characters.",
            )
        ],
    )


class ConfirmForm(FlaskForm):
    """A button-only form (CSRF token only)."""


@bp.app_context_processor
def _report_helpers() -> dict:
    def results_link_allowed(round_) -> bool:
        return report_service.can_see_results(actor(), round_)

    return {"results_link_allowed": results_link_allowed}


def _map_title(round_) -> str:
    return f"Opinion map: {round_.question}"


def _map_description(lines: list[str]) -> str:
    return " ".join(lines)


# Rows of the report's "Every statement" table per page (a round may hold thousands).
REPORT_STATEMENTS_PAGE_SIZE = paging.TABLE_PAGE_SIZE


@bp.get("/rounds/<int:round_id>/report")
@login_required
def report_page(round_id: int):
    """Show the round's report (members: their own view, as the results setting allows).

    The "Every statement" table shows one page of rows (`page`, in the chosen sort); the rest
    of the report covers every statement."""
    sort = request.args.get("sort", "consensus")
    report = report_service.build_report(actor(), round_id, sort=sort)
    table = paging.table_page(
        len(report.statements), request.args.get("page", type=int), REPORT_STATEMENTS_PAGE_SIZE
    )
    map_svg = None
    if report.map is not None and not report.map.empty:
        # render_svg escapes every piece of text it draws, so the markup is safe to inline.
        map_svg = Markup(  # noqa: S704
            opinion_map.render_svg(
                report.map,
                title=_map_title(report.round),
                description=_map_description(report.map_text),
            )
        )
    return render_template(
        "report/report.html",
        report=report,
        round=report.round,
        map_svg=map_svg,
        table=table,
        table_rows=table.rows(report.statements),
        sort_labels=SORT_LABELS,
        group_form=GroupNameForm(formdata=None),
        confirm_form=ConfirmForm(formdata=None),
    )


@bp.get("/rounds/<int:round_id>/report/map.svg")
@login_required
def map_svg(round_id: int):
    """Return the opinion map as an SVG image."""
    round_, geometry = report_service.map_for(actor(), round_id)
    svg = opinion_map.render_svg(
        geometry,
        title=_map_title(round_),
        description=_map_description(opinion_map.text_alternative(geometry)),
    )
    body = '<?xml version="1.0" encoding="UTF-8"?>\n' + svg
    response = Response(body, mimetype="image/svg+xml")
    response.headers["Content-Disposition"] = f'inline; filename="round-{round_id}-map.svg"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/rounds/<int:round_id>/report/map.png")
@login_required
def map_png(round_id: int):
    """Return the opinion map as a PNG image."""
    _round, geometry = report_service.map_for(actor(), round_id)
    response = Response(opinion_map.render_png(geometry), mimetype="image/png")
    response.headers["Content-Disposition"] = f'inline; filename="round-{round_id}-map.png"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _back(round_id: int, anchor: str | None = None):
    sort = request.args.get("sort")
    url = url_for(
        ".report_page",
        round_id=round_id,
        **({"sort": sort} if sort in report_service.SORTS else {}),
        **paging.kept_page(request.args.get("page", type=int)),
    )
    return redirect(url + (f"#{anchor}" if anchor else ""), 303)


@bp.post("/rounds/<int:round_id>/report/groups/<int:group_id>/name")
@facilitator_only
def name_group(round_id: int, group_id: int):
    """Name an opinion group, then go back to the report."""
    form = GroupNameForm()
    if not form.validate():
        flash(" ".join(e for errors in form.errors.values() for e in errors), "error")
        return _back(round_id, "groups")
    try:
        named = report_service.set_group_name(actor(), round_id, group_id, form.name.data or "")
    except DomainError as error:
        if error.status_code == 404:
            raise
        flash(error.message, "error")
        return _back(round_id, "groups")
    if named is None:
        flash("The group's name was cleared; it is shown with its letter again.", "success")
    else:
        flash(f"The group is now called \u201c{named.name}\u201d.", "success")
    return _back(round_id, "groups")


def _set_hidden(round_id: int, statement_id: int, hidden: bool):
    form = ConfirmForm()
    if not form.validate():
        flash("The form could not be read. Reload the page and try again.", "error")
        return _back(round_id, "statements")
    report_service.set_statement_hidden(actor(), statement_id, hidden, round_id=round_id)
    if hidden:
        flash("The statement is hidden from the report (its votes still count).", "success")
    else:
        flash("The statement is shown in the report again.", "success")
    return _back(round_id, "hidden" if not hidden else "statements")


@bp.post("/rounds/<int:round_id>/report/statements/<int:statement_id>/hide")
@facilitator_only
def hide_statement(round_id: int, statement_id: int):
    """Hide a statement from the report."""
    return _set_hidden(round_id, statement_id, True)


@bp.post("/rounds/<int:round_id>/report/statements/<int:statement_id>/show")
@facilitator_only
def show_statement(round_id: int, statement_id: int):
    """Show a hidden statement in the report again."""
    return _set_hidden(round_id, statement_id, False)
