"""The typer applications of ``xpersist-sql``: the root ``app`` and its ``db`` sub-command."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__

__all__ = ["app", "db_app"]

app = typer.Typer(
    name="xpersist-sql",
    help="Find, inspect and manage the cached results of an xpersist_sql store.\n\n"
    "Exit status: 0 clean, 1 problems found (verify, import-legacy --strict), "
    "2 usage or runtime error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="Manage the index schema with the migrations shipped in the package.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app, name="db")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"xpersist-sql {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    # the options of the command line itself (commands have their own)
    return None
