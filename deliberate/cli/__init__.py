"""The `deliberate` command line: Flask's (run, db, shell) plus the operator commands.

Each module here exposes `commands`, a list of click commands added to the app's CLI.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup


def register_cli(app: Flask) -> None:
    from . import accounts, analysis, demo, exports, rounds

    for module in (accounts, demo, rounds, analysis, exports):
        for command in module.commands:
            app.cli.add_command(command)
    from . import privacy

    for command in privacy.commands:
        app.cli.add_command(command)


def _create_app():
    from .. import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, help="deliberate: run and operate the app.")
def main() -> None:
    """Entry point of the `deliberate` console script."""


def _register_app_free_commands() -> None:
    # `analyze` needs no app or database: on the group itself, it works without any
    # configuration (FlaskGroup finds its own commands before loading the app).
    from .analysis import analyze_command

    main.add_command(analyze_command)


_register_app_free_commands()
