"""``xpersist-sql lineage``: what an artifact was computed from, or what was derived from it."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.tree import Tree

from .. import Artifact, CacheStore
from ..lineage import GRAPH_FORMATS, to_graph
from ._app import app
from ._common import (
    JsonOpt,
    StoreOptions,
    option_groups,
    parse_count,
    print_json,
    print_table,
    stderr,
    user_errors,
    when,
)

__all__ = ["lineage"]


def _walk(
    store: CacheStore, key: str, direction: str, depth: int | None
) -> tuple[list[Artifact], list[tuple[str, str]], dict[str, list[str]]]:
    """Return the artifacts reached (breadth first), the edges, and each key's next keys."""
    found = store.lineage(key, direction, depth)  # breadth first, then by key
    reached = {artifact.key for artifact in found} | {key}
    following: dict[str, list[str]] = {}
    edges: list[tuple[str, str]] = []
    for name in [key, *(artifact.key for artifact in found)]:
        nearest = [a.key for a in store.lineage(name, direction, 1) if a.key in reached]
        following[name] = nearest
        for other in nearest:
            edges.append((other, name) if direction == "upstream" else (name, other))
    return found, sorted(set(edges)), following


def _label(artifact: Artifact | None, key: str) -> str:
    if artifact is None:
        return key
    return f"{key}  [dim]{artifact.serializer}, {when(artifact.created_at)}[/dim]"


def _tree(
    key: str,
    root: Artifact,
    by_key: dict[str, Artifact],
    following: dict[str, list[str]],
    depth: int | None,
) -> Tree:
    """Draw the lineage as a tree; a key met again is drawn once, then marked as seen."""
    tree = Tree(_label(root, key))
    drawn = {key}

    def grow(branch: Tree, name: str, level: int) -> None:
        if depth is not None and level >= depth:
            return
        for other in following.get(name, []):
            if other in drawn:
                branch.add(f"{other}  [dim](shown above)[/dim]")
                continue
            drawn.add(other)
            grow(branch.add(_label(by_key.get(other), other)), other, level + 1)

    grow(tree, key, 0)
    return tree


@app.command("lineage")
@option_groups()
def lineage(
    key: Annotated[str, typer.Argument(metavar="KEY", help="The artifact's key.")],
    where: StoreOptions,
    downstream: Annotated[
        bool,
        typer.Option(
            "--downstream",
            help="Show what was derived from KEY (default: what KEY was computed from).",
        ),
    ] = False,
    depth: Annotated[
        str | None,
        typer.Option(
            "--depth",
            metavar="N",
            help="Follow N levels (1: direct parents or children) [default: all].",
            show_default=False,
        ),
    ] = None,
    graph: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="Print the graph as text instead of a tree: mermaid or dot.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the lineage of KEY: the stored artifacts it was computed from, as a tree."""
    direction = "downstream" if downstream else "upstream"
    with user_errors():
        levels = None if depth is None else parse_count("--depth", depth)
        if levels == 0:
            raise ValueError("--depth 0 shows nothing; give 1 or more (or leave it out: all)")
        if graph is not None and graph not in GRAPH_FORMATS:
            raise ValueError(f"--format {graph!r} is not one of {', '.join(GRAPH_FORMATS)}")
        with where.open(readonly=True) as opened:
            root = opened.get_artifact(key)
            found, edges, following = _walk(opened, key, direction, levels)
    if as_json:
        document: dict[str, Any] = {
            "key": key,
            "direction": direction,
            "depth": levels,
            "artifacts": [artifact.model_dump(mode="json") for artifact in found],
            "edges": [{"parent": parent, "child": child} for parent, child in edges],
        }
        print_json(document)
        return
    if graph is not None:
        typer.echo(to_graph([key], edges, graph))
        return
    by_key = {artifact.key: artifact for artifact in found}
    print_table(_tree(key, root, by_key, following, levels))
    noun = "artifact" if len(found) == 1 else "artifacts"
    side = "upstream" if direction == "upstream" else "downstream"
    stderr().print(f"{len(found)} {noun} {side}")
