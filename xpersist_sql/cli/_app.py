"""The typer applications of ``xpersist-sql``: the root ``app`` and its ``db`` sub-command.

Every command is a :class:`PlainHelpCommand`: its ``--help`` names each value by what it is
(``KEY``, ``--store ROOT``, ``--since WHEN``), never by a Python type such as ``<list[str]>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from .. import __version__

__all__ = ["EPILOG", "PlainHelpCommand", "app", "db_app"]

#: The exit statuses, shown under ``xpersist-sql --help`` (and in docs/queries.md).
EPILOG = (
    "Exit status: 0 clean; 1 problems found (verify, db current on an index this version "
    "cannot use, import-legacy --strict with skipped sidecars, rm declined at its prompt, "
    "explain of a key that would not hit or is stale); "
    "2 usage or runtime error (one line on stderr)."
)


class PlainHelpCommand(TyperCommand):
    """A command whose help and usage show an argument by its name alone, not by its type.

    Typer prints ``key <str>`` and ``{key}``; this prints ``KEY`` (the argument's ``metavar``,
    else its name in capitals), ``[KEY]`` when optional and ``[KEY]...`` when repeatable.
    """

    # (typer vendors its own click: its contexts and parameters are typed loosely here)
    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                repeat = "..." if param.nargs != 1 else ""
                arguments.append((_argument_name(param) + repeat, record[1]))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = _argument_name(param)
            piece = name if param.required else f"[{name}]"
            pieces.append(piece + ("..." if param.nargs != 1 else ""))
        return pieces


def _argument_name(param: Any) -> str:
    return str(param.metavar or (param.name or "").upper())


class _Typer(typer.Typer):
    """A typer app whose commands are :class:`PlainHelpCommand` unless told otherwise."""

    def command(  # type: ignore[override]
        self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(*args, cls=cls or PlainHelpCommand, **kwargs)


app = _Typer(
    name="xpersist-sql",
    help="Find, inspect and manage the cached results of an xpersist_sql store.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = _Typer(
    help="Manage the index schema with the migrations shipped in the package.",
    epilog=EPILOG,
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
