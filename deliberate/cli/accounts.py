"""CLI commands: accounts (organisations, users, roles, invitations, reset links).

The operator at the command line acts as the system: services get `actor=None`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from ..models import ROLE_VALUES
from ..services import accounts, invitations
from ..services.errors import DomainError, ValidationError

commands: list[click.Command] = []


def _domain_errors(func: Callable) -> Callable:
    """Turn domain errors into clear command-line errors (bad input: exit 2, else exit 1)."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ValidationError as error:
            raise click.UsageError(error.message) from None
        except DomainError as error:
            raise click.ClickException(error.message) from None

    return wrapper


def _command(func: Callable) -> Callable:
    commands.append(func)
    return func


def _base_url(value: str | None) -> str:
    return value or current_app.config.get("BASE_URL") or "http://127.0.0.1:5000"


@_command
@click.command("create-organisation")
@click.argument("name")
@with_appcontext
@_domain_errors
def create_organisation(name: str) -> None:
    """Create a member organisation."""
    organisation = accounts.create_organisation(None, name)
    click.echo(f"Created organisation {organisation.id}: {organisation.name}")


@_command
@click.command("create-user")
@click.option("--email", required=True, help="Email address (the login).")
@click.option("--name", required=True, help="The person's name.")
@click.option("--role", type=click.Choice(ROLE_VALUES), default="member", show_default=True)
@click.option("--organisation", default=None, help="Organisation name or id.")
@click.option(
    "--password", default=None, help="The password (prompted, with confirmation, when not given)."
)
@with_appcontext
@_domain_errors
def create_user(
    email: str, name: str, role: str, organisation: str | None, password: str | None
) -> None:
    """Create an account with a password."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = accounts.create_user(
        None, email=email, name=name, role=role, organisation=organisation, password=password
    )
    org = f" of {user.organisation.name}" if user.organisation else ""
    click.echo(f"Created {user.role} {user.email}{org} (id {user.id})")


@_command
@click.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLE_VALUES))
@with_appcontext
@_domain_errors
def set_role(email: str, role: str) -> None:
    """Give the account with this email address a role."""
    user = accounts.set_role(None, accounts.find_user_by_email(email).id, role)
    click.echo(f"{user.email} is now {user.role}")


@_command
@click.command("invite")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--round",
    "round_id",
    type=int,
    default=None,
    help="Send invited people to this round after they set a password.",
)
@click.option(
    "--base-url", default=None, help="Site address for the links (default: DELIBERATE_BASE_URL)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the links CSV here instead of to standard output.",
)
@with_appcontext
@_domain_errors
def invite(csv_path: Path, round_id: int | None, base_url: str | None, out: Path | None) -> None:
    """Invite the people of a CSV (name,email,organisation); print one link per row as CSV."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise click.UsageError(f"{csv_path} is not UTF-8 text.") from None
    rows = invitations.parse_invitation_csv(text)
    issued = invitations.invite_members(None, rows, round_id=round_id, base_url=_base_url(base_url))
    output = invitations.links_csv(issued)
    if out is not None:
        # The links are secrets: keep the file private to the operator.
        out.touch(mode=0o600, exist_ok=True)
        out.write_text(output, encoding="utf-8")
    else:
        click.echo(output, nl=False)
    n_links = sum(1 for item in issued if item.link)
    for item in issued:
        if not item.link:
            click.echo(f"No link for {item.email}: {item.status}.", err=True)
    where = f" to {out}" if out is not None else ""
    click.echo(f"{n_links} invitation link(s) written{where}.", err=True)


@_command
@click.command("reset-link")
@click.argument("email")
@click.option(
    "--base-url", default=None, help="Site address for the link (default: DELIBERATE_BASE_URL)."
)
@with_appcontext
@_domain_errors
def reset_link(email: str, base_url: str | None) -> None:
    """Print a single-use password-reset link for the account with this email address."""
    user = accounts.find_user_by_email(email)
    link = invitations.issue_password_reset(None, user.id, _base_url(base_url))
    click.echo(link)
    hours = current_app.config.get("RESET_TTL_HOURS")
    click.echo(f"The link works once and expires in {hours} hours.", err=True)
