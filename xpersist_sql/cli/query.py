"""``xpersist-sql ls`` (alias ``query``), ``show`` and ``stats``: reading a store."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ._app import app
from ._common import (
    ExpiredOpt,
    JsonOpt,
    QueryFilters,
    StoreOptions,
    artifact_table,
    option_groups,
    parse_count,
    print_json,
    print_table,
    size,
    stderr,
    stdout,
    user_errors,
)

__all__ = ["list_artifacts", "show", "stats"]

#: The fields ``stats`` groups by, in the order it prints them.
GROUPS = ("flow_name", "task_name", "serializer")


@option_groups()
def list_artifacts(
    where: StoreOptions,
    filters: QueryFilters,
    limit: Annotated[
        str | None,
        typer.Option(
            "--limit", "-n", metavar="N", help="Show at most this many.", show_default=False
        ),
    ] = None,
    oldest: Annotated[bool, typer.Option("--oldest", help="Oldest first.")] = False,
    include_expired: ExpiredOpt = False,  # (a filter: listed here, after --limit and --oldest)
    as_json: JsonOpt = False,
) -> None:
    """List the artifacts matching the filters, newest first (all of them without filters)."""
    with user_errors():
        query = filters.query()
        count = None if limit is None else parse_count("--limit", limit)
        with where.open(readonly=True) as opened:
            order = "oldest" if oldest else "newest"
            artifacts = opened.query(**query, limit=count, order=order)
    if as_json:
        print_json([artifact.model_dump(mode="json") for artifact in artifacts])
        return
    if artifacts:
        print_table(artifact_table(artifacts))
    noun = "artifact" if len(artifacts) == 1 else "artifacts"
    stderr().print(f"{len(artifacts)} {noun}")


app.command("ls")(list_artifacts)
app.command("query", help="Same as ls: list the artifacts matching the filters.")(list_artifacts)


@app.command("show")
@option_groups()
def show(
    key: Annotated[str, typer.Argument(metavar="KEY", help="The artifact's key.")],
    where: StoreOptions,
    as_json: JsonOpt = False,
) -> None:
    """Show everything recorded about one artifact."""
    with user_errors(), where.open(readonly=True) as opened:
        artifact = opened.get_artifact(key)
        location = opened.payload_url(key)
    record = {**artifact.model_dump(mode="json"), "payload": location}
    if as_json:
        print_json(record)
        return
    result = Table(box=None, show_header=False, pad_edge=False)
    result.add_column(style="bold", no_wrap=True)
    result.add_column(overflow="fold")
    for name, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if name == "size_bytes" and isinstance(value, int):
            text = f"{value} ({size(value)})"
        result.add_row(name, text)
    print_table(result)


@app.command("stats")
@option_groups(omit=("flow_run_id", "task_run_id", "meta"))
def stats(where: StoreOptions, filters: QueryFilters, as_json: JsonOpt = False) -> None:
    """Count the artifacts and add up their sizes per flow, task and serializer."""
    with user_errors():
        query = filters.query()
        with where.open(readonly=True) as opened:
            groups = {by: opened.summarize(by, **query) for by in GROUPS}
    rows = groups["serializer"]  # every artifact has exactly one serializer
    total = {"count": sum(r.count for r in rows), "size_bytes": sum(r.size_bytes for r in rows)}
    if as_json:
        document: dict[str, Any] = {"total": total}
        for by, summary in groups.items():
            document[by] = [
                {"value": r.value, "count": r.count, "size_bytes": r.size_bytes} for r in summary
            ]
        print_json(document)
        return
    out = stdout()
    noun = "artifact" if total["count"] == 1 else "artifacts"
    out.print(f"{total['count']} {noun}, {size(total['size_bytes'])}")
    for by, summary in groups.items():
        result = Table(title=f"by {by}", title_justify="left", box=None, header_style="bold")
        result.add_column(by.upper(), overflow="fold")
        result.add_column("ARTIFACTS", justify="right")
        result.add_column("SIZE", justify="right")
        for row in summary:
            value = "(none)" if row.value is None else row.value
            result.add_row(value, str(row.count), size(row.size_bytes))
        out.print()
        print_table(result)
