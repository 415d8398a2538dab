"""CLI command: export a round (Pol.is CSVs, the snapshot JSON, the board paper).

`deliberate export ROUND --format csv|json|markdown|pdf --out PATH` acts as the system (no
account; the audit log records no actor) unless `--by EMAIL` names a facilitator, leadership
or admin account. CSV: PATH is a folder that receives the five files, or a file ending in .zip.
Exit statuses: 0 done; 1 refused; 2 bad input (unknown round, bad path).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from ..extensions import db
from ..models import User
from ..services import board_paper as board_paper_service
from ..services import exports as exports_service
from ..services.errors import DomainError, NotAllowed

FORMATS = ("csv", "json", "markdown", "pdf")


def _acting_user(email: str | None) -> User | None:
    if not email:
        return None
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"No account with the email {email}.")
    if not user.is_active or not user.can_read_reports:
        raise click.ClickException(f"{email} is not an active facilitator, leadership or admin.")
    return user


def _fail(error: DomainError) -> click.exceptions.Exit:
    db.session.rollback()
    click.echo(f"Error: {error.message}", err=True)
    return click.exceptions.Exit(1 if isinstance(error, NotAllowed) else 2)


@click.command("export")
@with_appcontext
@click.argument("round_id", metavar="ROUND", type=int)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="csv: Pol.is's five CSV files; json: the latest snapshot; markdown/pdf: the board paper.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write: a folder (csv) or a file (.zip for csv; .json, .md, .pdf).",
)
@click.option(
    "--identities",
    is_flag=True,
    help="csv only: add participants.csv (names and emails); recorded in the audit log.",
)
@click.option("--by", "by_email", metavar="EMAIL", default=None, help="Act as this account.")
def export(
    round_id: int, output_format: str, out: Path, identities: bool, by_email: str | None
) -> None:
    """Export round ROUND: Pol.is CSVs, the snapshot as JSON, or the board paper."""
    user = _acting_user(by_email)
    if identities and output_format != "csv":
        raise click.UsageError("--identities only applies to --format csv.")
    try:
        if output_format == "csv":
            _export_csv(user, round_id, out, identities)
        elif output_format == "json":
            with click.progressbar(length=1, label="Snapshot", file=sys.stderr) as bar:
                data = exports_service.export_json(user, round_id)
                _write(out, exports_service.json_bytes(data))
                bar.update(1)
        elif output_format == "markdown":
            _write(out, board_paper_service.board_paper_markdown(user, round_id).encode("utf-8"))
        else:
            with click.progressbar(length=1, label="Board paper", file=sys.stderr) as bar:
                _write(out, board_paper_service.board_paper_pdf(user, round_id))
                bar.update(1)
    except DomainError as error:
        raise _fail(error) from None
    click.echo(f"Wrote {out}")


def _write(path: Path, data: bytes) -> None:
    if path.exists() and path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name.", param_hint="--out")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_bytes(data)


def _export_csv(user: User | None, round_id: int, out: Path, identities: bool) -> None:
    total = exports_service.count_export_rows(round_id)
    with click.progressbar(length=max(total, 1), label="Exporting votes", file=sys.stderr) as bar:
        if out.suffix.lower() == ".zip":
            chunks = exports_service.export_zip(
                user, round_id, identities=identities, progress=bar.update
            )
            if out.parent and not out.parent.exists():
                out.parent.mkdir(parents=True)
            with open(out, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
        else:
            if out.exists() and not out.is_dir():
                raise click.BadParameter(
                    f"{out} is a file; give a folder or a .zip name.", param_hint="--out"
                )
            exports_service.write_csv_folder(
                user, round_id, out, identities=identities, progress=bar.update
            )


commands = [export]
