"""``xpersist-sql explain``: why a key exists, and whether it would be a hit now."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.text import Text

from ._app import app
from ._common import (
    EXIT_PROBLEMS,
    JsonOpt,
    StoreOptions,
    option_groups,
    print_json,
    print_table,
    user_errors,
)

__all__ = ["explain"]


@app.command("explain")
@option_groups()
def explain(
    key: Annotated[str, typer.Argument(metavar="KEY", help="The artifact's key.")],
    where: StoreOptions,
    as_json: JsonOpt = False,
) -> None:
    """Explain why KEY exists and whether it would be a hit now.

    Shows the row, the payload's state, the target and context the key was rendered from, the
    inputs hash and its components, the version and code hash recorded, and each upstream
    artifact with its state now. Exit status 1 when it would not hit, is stale (an upstream
    artifact changed since) or an upstream artifact is gone.
    """
    with user_errors(), where.open(readonly=True) as opened:
        found = opened.explain(key)
    if as_json:
        print_json(found.to_dict())
    else:
        head, *rest = str(found).splitlines()
        style = "bold green" if found.ok else ("bold yellow" if found.would_hit else "bold red")
        print_table(Group(Text(head, style=style), *(Text(line) for line in rest)))
    if not found.ok:
        raise typer.Exit(EXIT_PROBLEMS)
