"""CLI commands: personal data (download for a person, erasure, restores, retention).

The operator at the command line acts as the system: services get `actor=None`, and
erasures are recorded in the audit log as done by the operator. See docs/data-protection.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from flask.cli import with_appcontext

from ..services import accounts, personal_data
from .accounts import _domain_errors

commands: list[click.Command] = []


def _command(func):
    commands.append(func)
    return func


@_command
@click.command("export-personal-data")
@click.argument("email")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    required=True,
    help="Write the JSON file here (created readable by you only); '-' for standard output.",
)
@with_appcontext
@_domain_errors
def export_personal_data(email: str, out: Path) -> None:
    """Write everything stored about the person with this email address as JSON."""
    user = accounts.find_user_by_email(email)
    body = personal_data.personal_data_json(personal_data.personal_data(None, user.id))
    if str(out) == "-":
        click.echo(body.decode("utf-8"))
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
    click.echo(f"Wrote the personal data of account {user.id} to {out}.", err=True)


@_command
@click.command("erase-account")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@_domain_errors
def erase_account(email: str, yes: bool) -> None:
    """Erase (anonymise) the account with this email address; its votes keep counting."""
    user = accounts.find_user_by_email(email)
    if not yes:
        click.confirm(
            f"Erase account {user.id} ({user.email})? Its name and email are removed for good",
            abort=True,
        )
    erased = personal_data.erase_account(None, user.id)
    click.echo(f"Account {erased.id} is erased.")


@_command
@click.command("reapply-erasures")
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The erasure ledger (default: DELIBERATE_ERASURE_LEDGER or instance/erasures.jsonl).",
)
@with_appcontext
@_domain_errors
def reapply_erasures(ledger: Path | None) -> None:
    """After restoring a backup: erase again every erased account that holds personal data."""
    redone = personal_data.reapply_erasures(ledger=ledger)
    if redone:
        click.echo(f"Erased again: {len(redone)} account(s): {', '.join(map(str, redone))}.")
    else:
        click.echo("Every erased account is still anonymous; nothing to do.")


@_command
@click.command("apply-retention")
@with_appcontext
@_domain_errors
def apply_retention() -> None:
    """Purge the personal data of rounds whose retention period has passed."""
    purged = personal_data.apply_retention()
    if purged:
        click.echo(f"Purged the personal data of round(s) {', '.join(map(str, purged))}.")
    else:
        click.echo("No round is due for a purge.")
