"""Blueprint: exports. Pol.is-format CSVs, the snapshot as JSON, and the board paper.

For facilitators, leadership and admins (the services check again; members get 403). CSV files
stream from the database (`stream_with_context`); every download is audit-logged by its
service, so these GET views write an audit row and declare write intent. Adding participants'
identities is a facilitator's explicit choice made through a POST form (CSRF), never a link.
All export endpoints share one rate limit per user.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    stream_with_context,
    url_for,
)
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import BooleanField
from wtforms.validators import DataRequired

from ..database import set_write_intent
from ..ratelimit import export_limits
from ..services import board_paper as board_paper_service
from ..services import exports as exports_service
from ..services import opinion_map
from ..services.report import build_report
from .decorators import actor, roles_required

bp = Blueprint("exports", __name__)

report_readers = roles_required("facilitator", "leadership")
facilitator_only = roles_required("facilitator")

CSV_DESCRIPTIONS = {
    "summary.csv": "Summary: the question, counts of voters, statements and groups.",
    "comments.csv": "Statements: text, author (a participant number), agrees, disagrees, "
    "moderation.",
    "votes.csv": "Every vote as cast, in time order (changed votes included).",
    "participants-votes.csv": "One row per participant: group and current vote on each statement.",
    "comment-groups.csv": "Each statement's votes overall and per opinion group (cells about "
    "fewer than 3 people left blank).",
}


# Every download shares one limit per user and one per address (RATELIMIT_EXPORT and
# RATELIMIT_EXPORT_PER_ADDRESS). It goes above the role decorators: it must count before the
# request's transaction begins (deliberate/ratelimit.py says why).
export_limit = export_limits()


@bp.before_request
def _exports_write_audit_rows():
    # Every export records an audit event, so even its GET request writes (one short
    # transaction); the services read the data itself on a separate read-only connection.
    set_write_intent(True)


class IdentitiesForm(FlaskForm):
    """A facilitator's explicit choice to export participants' names and emails."""

    confirm = BooleanField(
        "I need to know who the participants are, and I will keep this file confidential",
        validators=[DataRequired("Tick the box to confirm you need the identities.")],
    )


def _attachment(body, mimetype: str, filename: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/rounds/<int:round_id>/exports")
@report_readers
def exports_page(round_id: int):
    """Show the round's downloads."""
    report = build_report(actor(), round_id, with_map=False)
    return render_template(
        "report/exports.html",
        round=report.round,
        analysed=report.analysed,
        files=CSV_DESCRIPTIONS,
        form=IdentitiesForm(),
    )


@bp.get("/rounds/<int:round_id>/export/<name>.csv")
@export_limit
@report_readers
def export_csv(round_id: int, name: str):
    """Stream one Pol.is-format CSV file of the round."""
    filename = f"{name}.csv"
    chunks = exports_service.export_csv(actor(), round_id, filename)
    return _attachment(
        stream_with_context(chunks),
        "text/csv; charset=utf-8",
        exports_service.export_filename(round_id, filename),
    )


@bp.get("/rounds/<int:round_id>/export/all.zip")
@export_limit
@report_readers
def export_zip(round_id: int):
    """Stream a zip of every Pol.is-format CSV file of the round."""
    chunks = exports_service.export_zip(actor(), round_id)
    return _attachment(
        stream_with_context(chunks),
        "application/zip",
        exports_service.export_filename(round_id, "polis-export.zip"),
    )


@bp.post("/rounds/<int:round_id>/export/identities")
@export_limit
@facilitator_only
def export_identities(round_id: int):
    """Stream the zip with participants' identities, once a facilitator confirms (logged)."""
    exports_service.check_export(actor(), round_id, identities=True)
    form = IdentitiesForm()
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
        return redirect(url_for("exports.exports_page", round_id=round_id) + "#identities")
    chunks = exports_service.export_zip(actor(), round_id, identities=True)
    return _attachment(
        stream_with_context(chunks),
        "application/zip",
        exports_service.export_filename(round_id, "polis-export-with-identities.zip"),
    )


@bp.get("/rounds/<int:round_id>/export/snapshot.json")
@export_limit
@report_readers
def export_json(round_id: int):
    """Download the latest analysis snapshot with its parameters, pseudonymised."""
    data = exports_service.export_json(actor(), round_id)
    return _attachment(
        exports_service.json_bytes(data),
        "application/json",
        exports_service.export_filename(round_id, "snapshot.json"),
    )


@bp.get("/rounds/<int:round_id>/board-paper")
@export_limit
@report_readers
def board_paper(round_id: int):
    """Show the print-ready board paper."""
    paper = board_paper_service.board_paper_page(actor(), round_id)
    map_svg = None
    geometry = paper.report.map
    if geometry is not None and not geometry.empty:
        # render_svg escapes every piece of text it draws, so the markup is safe to inline.
        map_svg = Markup(  # noqa: S704
            opinion_map.render_svg(
                geometry,
                title=f"Opinion map: {paper.report.round.question}",
                description=" ".join(paper.report.map_text),
                id_prefix="paper-map",
            )
        )
    return render_template("report/board_paper.html", paper=paper, map_svg=map_svg)


@bp.get("/rounds/<int:round_id>/board-paper.md")
@export_limit
@report_readers
def board_paper_markdown(round_id: int):
    """Download the board paper as Markdown."""
    text = board_paper_service.board_paper_markdown(actor(), round_id)
    return _attachment(
        text.encode("utf-8"),
        "text/markdown; charset=utf-8",
        f"round-{round_id}-board-paper.md",
    )


@bp.get("/rounds/<int:round_id>/board-paper.pdf")
@export_limit
@report_readers
def board_paper_pdf(round_id: int):
    """Download the board paper as a PDF."""
    data = board_paper_service.board_paper_pdf(actor(), round_id)
    return _attachment(data, "application/pdf", f"round-{round_id}-board-paper.pdf")
