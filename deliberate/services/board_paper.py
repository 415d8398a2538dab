"""The board paper: the round's report as a document leadership can put before a board.

One content model (`BoardPaper`: sections of paragraphs, lists, tables and the opinion map) is
built from the report view model (`services.report.build_report`, which reads the latest
snapshot and applies the small-cell rule), then written three ways: the print-ready HTML page
(templates/report/board_paper.html), Markdown, and a PDF drawn with fpdf2 (pure Python) with
the opinion map embedded as a PNG. Sections: executive summary, consensus with strength and
stability, divisions and what each group holds, uncertainty, participation coverage, method and
caveats, and an appendix of every statement with its figures.

Who may read it: facilitators, leadership and admins (and the system, `actor=None`, from the
command line). Every export is recorded in the audit log as `export.board_paper` with its format.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..extensions import db
from ..models import Role, User
from . import audit
from .authz import require_report_reader
from .report import Report, Shares, StatementFigures, build_report

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/local/share/fonts/dejavu"),
)
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf"}
MAX_LIST = 10  # items in the executive summary's lists


# ------------------------------------------------------------------------------- content model


@dataclass
class Paragraph:
    text: str
    kind: str = "p"  # "p", "note" (small print) or "strong"


@dataclass
class Bullets:
    items: list[str]
    kind: str = "list"


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]
    widths: list[float]  # relative column widths (for the PDF)
    kind: str = "table"


@dataclass
class MapBlock:
    text: list[str]  # the map's text alternative
    kind: str = "map"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


@dataclass
class BoardPaper:
    title: str
    subtitle: str
    round_id: int
    report: Report
    sections: list[Section] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def filename_stem(self) -> str:
        return f"round-{self.round_id}-board-paper"


# ------------------------------------------------------------------------------- wording


def _pct(n: int | None) -> str:
    return "fewer than 3 votes" if n is None else f"{n}%"


def _shares_text(shares: Shares) -> str:
    if shares.suppressed:
        return "fewer than 3 votes: not shown"
    return (
        f"{shares.agree_pct}% agree, {shares.disagree_pct}% disagree, {shares.pass_pct}% pass "
        f"({shares.seen} votes)"
    )


def _short_shares(shares: Shares) -> str:
    if shares.suppressed:
        return "–"
    return f"{shares.agree_pct}/{shares.disagree_pct}/{shares.pass_pct}"


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(iv: tuple[float, float] | None, percent: bool = False) -> str:
    if iv is None:
        return ""
    if percent:
        return f"{round(iv[0] * 100)}–{round(iv[1] * 100)}%"
    return f"{iv[0]:.2f}–{iv[1]:.2f}"


def _quote(text: str) -> str:
    return "“" + " ".join(str(text).split()) + "”"


def _when(value: datetime | None) -> str:
    return value.strftime("%d %b %Y, %H:%M UTC") if value else "not yet"


# ------------------------------------------------------------------------------- building


def _system_reader() -> User:
    """A transient admin standing for the command line (never added to the database)."""
    return User(
        id=None,
        email="system@localhost",
        name="System",
        role=Role.ADMIN.value,
        active=True,
        auth_version=1,
    )


def _authorise(actor: User | None) -> User:
    if actor is None:
        return _system_reader()
    return require_report_reader(actor)


def _consensus_section(report: Report) -> Section:
    section = Section("consensus", "Where the coalition agrees")
    if not report.consensus:
        section.blocks.append(Paragraph("No statement has broad agreement across every group yet."))
        return section
    section.blocks.append(
        Paragraph(
            "Statements a majority agreed (or disagreed) with in every opinion group. Strength "
            "comes from the stability check: “robust” means the share agreeing stayed on the "
            "same side of one half in the resampled analyses."
        )
    )
    items = []
    for item in report.consensus:
        f = item.statement
        detail = [item.wording[0].upper() + item.wording[1:] + "."]
        if item.in_ten:
            verb = "agree" if item.direction == "agree" else "disagree"
            if item.in_ten == "10 in 10":
                detail.append(f"Nearly everyone who voted on it {verb}s.")
            else:
                detail.append(f"About {item.in_ten} people {verb}.")
        figures = []
        if f.gac is not None:
            gac = f"group-informed consensus {_num(f.gac)}"
            if item.gac_interval:
                gac += f" (interval {_interval(item.gac_interval)})"
            figures.append(gac)
        if f.bridging is not None:
            bridging = f"bridging {_num(f.bridging)}"
            if item.bridging_interval:
                bridging += f" (interval {_interval(item.bridging_interval)})"
            figures.append(bridging)
        if item.agree_interval:
            figures.append(f"share agreeing {_interval(item.agree_interval, percent=True)}")
        if item.consensus_frequency is not None:
            figures.append(f"consensus in {round(item.consensus_frequency * 100)}% of resamples")
        if figures:
            detail.append("Figures: " + "; ".join(figures) + ".")
        items.append(f"{_quote(f.text)} {' '.join(detail)}")
    section.blocks.append(Bullets(items))
    return section


def _divisive_section(report: Report) -> Section:
    section = Section("divisive", "Where the coalition divides")
    if not report.divisive:
        section.blocks.append(Paragraph("No statement clearly divides the groups."))
        return section
    section.blocks.append(
        Paragraph("Statements on which the opinion groups split, most divisive first.")
    )
    for f in report.divisive[:MAX_LIST]:
        lines = []
        for group, shares in f.by_group:
            if group.small:
                lines.append(f"{group.label}: fewer than 3 members, not shown")
            else:
                lines.append(f"{group.label}: {_shares_text(shares)}")
        lines.append(f"Everyone: {_shares_text(f.overall)}")
        section.blocks.append(Paragraph(_quote(f.text), kind="strong"))
        section.blocks.append(Bullets(lines))
    if len(report.divisive) > MAX_LIST:
        section.blocks.append(
            Paragraph(
                f"{len(report.divisive) - MAX_LIST} more divisive statements are in the appendix.",
                kind="note",
            )
        )
    return section


def _groups_section(report: Report) -> Section:
    section = Section("groups", "The opinion groups and what each holds")
    if not report.group_summaries:
        section.blocks.append(Paragraph("No separate opinion groups were found."))
        return section
    section.blocks.append(MapBlock(list(report.map_text)))
    for summary in report.group_summaries:
        group = summary.group
        size = "fewer than 3 members" if group.small else f"{group.size} members"
        head = f"{group.label} ({size}"
        if summary.stability is not None:
            head += f"; re-formed in {round(summary.stability * 100)}% of resamples"
        section.blocks.append(Paragraph(head + ")", kind="strong"))
        if group.small:
            section.blocks.append(
                Paragraph("Fewer than 3 members: this group's figures are not shown.", "note")
            )
            continue
        items = []
        for rep in summary.representative:
            verb = "agree" if rep.direction == "agree" else "disagree"
            text = f"{_quote(rep.statement.text)}: {_pct(rep.group_pct)} of the group {verb}"
            if rep.others_pct is not None:
                text += f", against {rep.others_pct}% of everyone else"
            items.append(text + ".")
        section.blocks.append(
            Bullets(items) if items else Paragraph("No statement sets this group apart.", "note")
        )
    return section


def _uncertain_section(report: Report) -> Section:
    section = Section("uncertain", "Where people are unsure")
    if not report.uncertain:
        section.blocks.append(
            Paragraph("No statement was passed on by more than 30% of those who saw it.")
        )
        return section
    section.blocks.append(
        Paragraph("Statements more than 30% of people passed on (as Pol.is flags them).")
    )
    section.blocks.append(
        Bullets(
            [
                f"{_quote(f.text)}: {round((f.overall.pass_rate or 0) * 100)}% passed"
                for f in report.uncertain[:MAX_LIST]
            ]
        )
    )
    return section


def _coverage_section(report: Report) -> Section:
    section = Section("coverage", "Who took part")
    h = report.headline
    if h is not None:
        text = f"{h.participants} people took part"
        if h.audience:
            text += f" of the {h.audience} members invited"
        if h.organisations_in_audience:
            text += (
                f", from {h.organisations_taking_part} of {h.organisations_in_audience} "
                "organisations"
            )
        section.blocks.append(Paragraph(text + "."))
    if report.coverage:
        section.blocks.append(
            Table(
                "Participation by organisation",
                ["Organisation", "Members", "Took part"],
                [[c.name, str(c.members), c.took_part_text] for c in report.coverage],
                [3, 1, 1],
            )
        )
    if report.one_voice_method:
        section.blocks.append(Paragraph("One organisation, one voice", kind="strong"))
        section.blocks.append(Paragraph(report.one_voice_method))
        if report.one_voice_consensus:
            section.blocks.append(
                Bullets(
                    [
                        f"{_quote(f.text)}: agreed when each organisation counts once"
                        for f in report.one_voice_consensus
                    ]
                )
            )
        else:
            section.blocks.append(
                Paragraph("No statement is agreed by most organisations counted once.", "note")
            )
    return section


def _method_section(report: Report) -> Section:
    section = Section("method", "Method and caveats")
    section.blocks.append(
        Paragraph(
            "Each member voted agree, disagree or pass on short statements. The analysis places "
            "people on a map by how they voted (principal component analysis of the vote "
            "matrix), finds opinion groups of people who vote alike (k-means, the number of "
            "groups chosen by silhouette), and for each statement measures how much every "
            "group agrees (group-informed consensus), how much it brings people across groups "
            "together (bridging) and how much the groups split on it (divisiveness). It "
            "follows the method of Pol.is."
        )
    )
    stability = report.stability or {}
    if stability:
        level = stability.get("level")
        replicates = stability.get("replicates")
        text = "Stability: the analysis was repeated"
        if replicates:
            text += f" {replicates} times"
        text += " on resampled participants"
        if isinstance(level, int | float):
            text += f"; intervals cover {round(level * 100)}% of the resamples"
        if report.mean_participant_stability is not None:
            text += (
                f"; on average people stayed in the same group "
                f"{round(report.mean_participant_stability * 100)}% of the time"
            )
        section.blocks.append(Paragraph(text + "."))
    section.blocks.append(
        Paragraph(
            "Privacy: no figure about fewer than 3 people or 3 organisations is shown; such "
            "cells read “fewer than 3”. Nobody's individual votes appear in this paper."
        )
    )
    if report.hidden_count:
        section.blocks.append(
            Paragraph(
                f"{report.hidden_count} statement(s) were hidden from this report by a "
                "facilitator; their votes still count in the analysis.",
                kind="note",
            )
        )
    if report.warnings:
        section.blocks.append(Paragraph("Caveats", kind="strong"))
        section.blocks.append(Bullets([f"{w.title}: {w.text}" for w in report.warnings]))
    else:
        section.blocks.append(Paragraph("No warnings: the data is ample and groups are stable."))
    return section


def _appendix(report: Report) -> Section:
    section = Section("appendix", "Appendix: every statement")
    letters = ", ".join(f"{g.letter} = {g.label}" for g in report.groups)
    section.blocks.append(
        Paragraph(
            "Shares are agree/disagree/pass in percent; “–” means fewer than 3 votes. "
            "GIC is group-informed consensus (0 to 1). "
            + (f"Groups: {letters}." if letters else ""),
            kind="note",
        )
    )
    rows = []
    statements: list[StatementFigures] = sorted(report.statements, key=lambda f: f.id)
    for f in statements:
        groups = " · ".join(f"{g.letter} {_short_shares(s)}" for g, s in f.by_group) or "–"
        rows.append(
            [
                str(f.id),
                " ".join(f.text.split()),
                str(f.votes),
                _short_shares(f.overall),
                groups,
                _num(f.gac),
                _num(f.bridging),
            ]
        )
    section.blocks.append(
        Table(
            "Every statement with its figures",
            ["#", "Statement", "Votes", "All A/D/P", "By group A/D/P", "GIC", "Bridging"],
            rows,
            [0.5, 4.6, 0.8, 1.3, 2.4, 0.8, 1.4],
        )
    )
    return section


def _executive_summary(report: Report) -> Section:
    section = Section("summary", "Executive summary")
    h = report.headline
    if h is not None:
        parts = [f"{h.participants} people"]
        if h.audience:
            parts[0] += f" (of {h.audience} invited)"
        if h.organisations_in_audience:
            parts.append(
                f"from {h.organisations_taking_part} of {h.organisations_in_audience} organisations"
            )
        section.blocks.append(
            Paragraph(
                " ".join(parts)
                + f" cast {h.votes} votes on {h.statements} statements. The analysis found "
                f"{h.groups} opinion group{'s' if h.groups != 1 else ''} "
                f"(last run {_when(h.analysed_at)})."
            )
        )
    agreed = [c for c in report.consensus if c.direction == "agree"]
    rejected = [c for c in report.consensus if c.direction == "disagree"]
    if agreed:
        section.blocks.append(Paragraph("What unites the coalition", kind="strong"))
        section.blocks.append(
            Bullets([f"{_quote(c.statement.text)}: {c.wording}" for c in agreed[:MAX_LIST]])
        )
    if rejected:
        section.blocks.append(Paragraph("What the coalition rejects together", kind="strong"))
        section.blocks.append(
            Bullets([f"{_quote(c.statement.text)}: {c.wording}" for c in rejected[:MAX_LIST]])
        )
    if not report.consensus:
        section.blocks.append(Paragraph("No statement has broad agreement across every group yet."))
    if report.divisive:
        section.blocks.append(Paragraph("What divides it", kind="strong"))
        section.blocks.append(
            Bullets([_quote(f.text) for f in report.divisive[: min(MAX_LIST, 5)]])
        )
    if report.warnings:
        section.blocks.append(
            Paragraph(
                "Read with care: " + "; ".join(w.title.lower() for w in report.warnings) + " "
                "(see Method and caveats).",
                kind="note",
            )
        )
    return section


def build_board_paper(actor: User | None, round_id: int) -> BoardPaper:
    """Build the board paper's content from the round's report (no audit: use the exports)."""
    user = _authorise(actor)
    report = build_report(user, round_id, with_map=True)
    round_ = report.round
    paper = BoardPaper(
        title=f"Board paper: {round_.question}",
        subtitle=(
            f"Round {round_.id} · {round_.state} · analysis of "
            f"{_when(report.headline.analysed_at if report.headline else None)}"
        ),
        round_id=round_.id,
        report=report,
    )
    if not report.analysed:
        paper.sections.append(
            Section(
                "summary",
                "Executive summary",
                [
                    Paragraph(
                        f"{report.message or 'The analysis has not run yet'}: there are no "
                        "results to report."
                    )
                ],
            )
        )
        return paper
    paper.sections = [
        _executive_summary(report),
        _consensus_section(report),
        _divisive_section(report),
        _groups_section(report),
        _uncertain_section(report),
        _coverage_section(report),
        _method_section(report),
        _appendix(report),
    ]
    return paper


def _record(actor: User | None, round_id: int, fmt: str) -> None:
    try:
        audit.record(
            actor,
            "export.board_paper",
            round_id=round_id,
            target_type="round",
            target_id=round_id,
            format=fmt,
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise


def board_paper_page(actor: User | None, round_id: int) -> BoardPaper:
    """Return the board paper for the print-ready HTML page (audit-logged)."""
    paper = build_board_paper(actor, round_id)
    _record(actor, round_id, "html")
    return paper


# ------------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~])")


def md_escape(text: str) -> str:
    """Escape Markdown syntax in member text and keep it on one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_cell(text: str) -> str:
    return md_escape(text) or " "


def render_markdown(paper: BoardPaper) -> str:
    """Write the board paper as Markdown."""
    out = [f"# {md_escape(paper.title)}", "", f"_{md_escape(paper.subtitle)}_", ""]
    for section in paper.sections:
        out += [f"## {md_escape(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                text = md_escape(block.text)
                if block.kind == "strong":
                    text = f"**{text}**"
                elif block.kind == "note":
                    text = f"_{text}_"
                out += [text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {md_escape(item)}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out += [
                    "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                    "|" + "|".join(" --- " for _ in block.header) + "|",
                ]
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, MapBlock):
                out += ["**Opinion map** (the image is in the PDF and on the report page)", ""]
                out += [f"- {md_escape(line)}" for line in block.text] + [""]
    out.append(
        f"_Generated by deliberate on {_when(paper.generated_at)}. No figure about fewer than 3 "
        "people is shown._"
    )
    return "\n".join(out) + "\n"


def board_paper_markdown(actor: User | None, round_id: int) -> str:
    """Return the board paper as Markdown (audit-logged)."""
    paper = build_board_paper(actor, round_id)
    _record(actor, round_id, "markdown")
    return render_markdown(paper)


# ------------------------------------------------------------------------------- PDF


def find_unicode_font() -> Path | None:
    """Return the folder holding the DejaVu TTF fonts, or None (core fonts are used then)."""
    extra = os.environ.get("DELIBERATE_FONT_DIR")
    for folder in ((Path(extra),) if extra else ()) + FONT_DIRS:
        if all((folder / name).is_file() for name in FONT_FILES.values()):
            return folder
    return None


_LATIN1 = str.maketrans(
    {
        "“": '"',
        "”": '"',
        "‘": "'",
        "’": "'",
        "–": "-",
        "—": "-",
        "…": "...",
        "·": "-",
        "•": "-",
        "−": "-",
        "\u00a0": " ",
    }
)


def latin1(text: str) -> str:
    """Text the PDF core fonts can draw: typographic marks to ASCII, the rest replaced."""
    return str(text).translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


def render_pdf(
    paper: BoardPaper, *, font_dir: Path | None = None, map_png: bytes | None = None
) -> bytes:
    """Draw the board paper as a PDF (A4) with fpdf2."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos
    from fpdf.fonts import FontFace

    folder = font_dir if font_dir is not None else find_unicode_font()
    unicode_ok = folder is not None
    fix = (lambda s: str(s)) if unicode_ok else latin1
    footer_title = fix(paper.title if len(paper.title) < 70 else paper.title[:67] + "...")

    class Paper(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(family, "", 8)
            self.set_text_color(90, 90, 90)
            self.cell(
                0,
                6,
                f"{footer_title} · page {self.page_no()} of {{nb}}"
                if unicode_ok
                else f"{footer_title} - page {self.page_no()} of {{nb}}",
                align="C",
            )
            self.set_text_color(0, 0, 0)

    pdf = Paper(format="A4")
    if unicode_ok:
        family = "DejaVu"
        for style, name in FONT_FILES.items():
            pdf.add_font(family, style, str(folder / name))
    else:
        family = "Helvetica"
    pdf.set_title(fix(paper.title))
    pdf.set_author("deliberate")
    pdf.set_creator("deliberate (fpdf2)")
    pdf.set_lang("en")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(18, 18, 18)
    pdf.alias_nb_pages()
    pdf.add_page()

    def text(size: float, content: str, style: str = "", height: float | None = None) -> None:
        pdf.set_font(family, style, size)
        pdf.multi_cell(
            0, height or size * 0.5, fix(content), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )

    text(18, paper.title, "B", 8)
    pdf.set_text_color(80, 80, 80)
    text(10, paper.subtitle)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(4)
    for section in paper.sections:
        if section.id == "appendix" or pdf.get_y() > pdf.h - 60:
            pdf.add_page()
        text(14, section.title, "B", 8)
        pdf.ln(1)
        for block in section.blocks:
            if isinstance(block, Paragraph):
                if block.kind == "strong":
                    pdf.ln(1)
                    text(11, block.text, "B", 5.5)
                elif block.kind == "note":
                    pdf.set_text_color(70, 70, 70)
                    text(9, block.text, "I", 4.6)
                    pdf.set_text_color(0, 0, 0)
                else:
                    text(10.5, block.text, "", 5.4)
                pdf.ln(1.5)
            elif isinstance(block, Bullets):
                pdf.set_font(family, "", 10)
                bullet = "•" if unicode_ok else "-"
                for item in block.items:
                    pdf.set_x(pdf.l_margin + 3)
                    pdf.cell(5, 5.2, bullet)
                    pdf.multi_cell(
                        pdf.epw - 8,
                        5.2,
                        fix(item),
                        align="L",
                        new_x=XPos.LMARGIN,
                        new_y=YPos.NEXT,
                    )
                    pdf.ln(0.8)
                pdf.ln(1.5)
            elif isinstance(block, Table):
                pdf.set_font(family, "", 8 if len(block.header) > 4 else 9.5)
                total = sum(block.widths)
                widths = [pdf.epw * w / total for w in block.widths]
                with pdf.table(
                    col_widths=widths,
                    first_row_as_headings=True,
                    line_height=4.4 if len(block.header) > 4 else 5.2,
                    headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
                    text_align="LEFT",
                    repeat_headings=1,
                ) as table:
                    head = table.row()
                    for cell in block.header:
                        head.cell(fix(cell))
                    for row in block.rows:
                        r = table.row()
                        for cell in row:
                            r.cell(fix(cell))
                pdf.ln(3)
            elif isinstance(block, MapBlock):
                if map_png:
                    width = pdf.epw * 0.85
                    height = width * 560 / 800
                    if pdf.get_y() + height > pdf.h - 25:
                        pdf.add_page()
                    pdf.image(
                        io.BytesIO(map_png),
                        x=pdf.l_margin + (pdf.epw - width) / 2,
                        w=width,
                        alt_text=fix(" ".join(block.text)),
                    )
                    pdf.ln(2)
                pdf.set_text_color(70, 70, 70)
                for line in block.text:
                    text(9, line, "I", 4.6)
                pdf.set_text_color(0, 0, 0)
                pdf.ln(2)
    pdf.ln(4)
    pdf.set_text_color(90, 90, 90)
    text(8, f"Generated by deliberate on {_when(paper.generated_at)}.", "I", 4)
    return bytes(pdf.output())


def _map_png(paper: BoardPaper) -> bytes | None:
    geometry = paper.report.map
    if geometry is None or geometry.empty:
        return None
    from .opinion_map import render_png

    try:
        return render_png(geometry, width=1400)
    except Exception:  # an image problem must not cost the whole paper
        import logging

        logging.getLogger(__name__).exception("could not draw the opinion map for the PDF")
        return None


def board_paper_pdf(actor: User | None, round_id: int) -> bytes:
    """Return the board paper as a PDF (audit-logged)."""
    paper = build_board_paper(actor, round_id)
    data = render_pdf(paper, map_png=_map_png(paper))
    _record(actor, round_id, "pdf")
    return data
