"""CLI commands: demo."""

from __future__ import annotations

import click

from ..services import demo as demo_service
from ..services.errors import Conflict

commands: list[click.Command] = []


def _print_logins(logins: list[demo_service.DemoLogin]) -> None:
    click.echo("")
    click.secho("Demo logins (fixed, public passwords: for trying deliberate out only)", bold=True)
    width = max(len(login.email) for login in logins)
    click.echo(f"  {'role':<12} {'email':<{width}}  password")
    for login in logins:
        click.echo(f"  {login.role:<12} {login.email:<{width}}  {login.password}")
    click.echo("")
    click.echo(
        "Never use the demo on a real installation: anyone who reads this can log in. "
        "Start from an empty database and `deliberate create-user` instead."
    )


@click.command("demo")
@click.option(
    "--if-empty",
    is_flag=True,
    help="Do nothing (and exit 0) when the database already has users.",
)
@click.option(
    "--seed",
    type=int,
    default=demo_service.DEFAULT_SEED,
    show_default=True,
    help="Seed of the generator: the same seed gives the same coalition.",
)
def demo_command(if_empty: bool, seed: int) -> None:
    """Load the demo coalition (a fictional refugee-welcome coalition) into an empty database."""
    if not demo_service.is_empty():
        if if_empty:
            click.echo("Database already has data; demo not loaded.")
            if demo_service.demo_is_loaded():
                _print_logins(demo_service.named_logins())
            return
        raise click.ClickException(
            "The database already has users; the demo loads only into an empty database "
            "(use --if-empty to skip quietly)."
        )
    try:
        with click.progressbar(length=1, label="Generating the demo coalition") as bar:
            summary = demo_service.load_demo(seed=seed)
            bar.update(1)
    except Conflict as error:
        raise click.ClickException(error.message) from error
    click.echo(
        f"Loaded the demo coalition: {summary.organisations} organisations, "
        f"{summary.members} members, one open round with {summary.statements} statements "
        f"({summary.pending_statements} more waiting for moderation) and {summary.votes} votes, "
        "and one closed earlier round."
    )
    _print_logins(summary.logins)


commands.append(demo_command)
