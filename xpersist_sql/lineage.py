"""Lineage records and graph text, free of the store and of any database.

An artifact computed from other stored artifacts records them in
``additional_metadata["derived_from"]`` (:data:`DERIVED_FROM`): a list of
:func:`parent_record` dicts, each naming the parent's store (the id in its marker), its key and
the version it was read as (``created_at``, fingerprint, checksum). ``CacheStore.put(...,
derived_from=[...])`` fills it; the index keeps one edge row per parent (revision 0005), which
``CacheStore.lineage`` and ``CacheStore.delete_downstream`` walk. Because the version is
recorded, a parent overwritten or deleted since is detectable: compare :func:`parents_of` with
the parents' current artifacts.

:func:`to_mermaid` and :func:`to_dot` draw a lineage graph as deterministic text, for docs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .models import Artifact
from .provenance import ArtifactIdentity

__all__ = [
    "DERIVED_FROM",
    "DIRECTIONS",
    "GRAPH_FORMATS",
    "parent_record",
    "parents_of",
    "to_dot",
    "to_graph",
    "to_mermaid",
]

#: The ``additional_metadata`` name holding the artifacts a value was computed from.
DERIVED_FROM = "derived_from"
#: The directions of ``CacheStore.lineage``: ``upstream`` (what a value was computed from) and
#: ``downstream`` (what was computed from it).
DIRECTIONS = ("upstream", "downstream")
#: The text formats of a lineage graph.
GRAPH_FORMATS = ("mermaid", "dot")
_IDENTITY_FIELDS = tuple(field.name for field in dataclasses.fields(ArtifactIdentity))


def parent_record(identity: ArtifactIdentity) -> dict[str, Any]:
    """Return the JSON record of one parent, as ``additional_metadata["derived_from"]`` holds it.

    Parameters
    ----------
    identity : ArtifactIdentity
        The parent: store id, key and the version it was read as.

    Returns
    -------
    dict
        ``{"store_id", "key", "created_at", "fingerprint", "checksum"}``.
    """
    return dataclasses.asdict(identity)


def parents_of(artifact: Artifact | Mapping[str, Any]) -> list[ArtifactIdentity]:
    """Return the parents an artifact records (its ``derived_from`` metadata), in order.

    Entries that are not parent records (a ``derived_from`` written by hand in another shape)
    are skipped.

    Parameters
    ----------
    artifact : Artifact or mapping
        An artifact, or its ``additional_metadata``.

    Returns
    -------
    list of ArtifactIdentity
    """
    metadata = artifact.additional_metadata if isinstance(artifact, Artifact) else artifact
    entries = metadata.get(DERIVED_FROM)
    if not isinstance(entries, list):
        return []
    found: list[ArtifactIdentity] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        store_id, key = entry.get("store_id"), entry.get("key")
        if not isinstance(store_id, str) or not isinstance(key, str) or not store_id or not key:
            continue
        optional = {
            name: entry.get(name) if isinstance(entry.get(name), str) else None
            for name in ("fingerprint", "checksum")
        }
        created_at = entry.get("created_at")
        found.append(
            ArtifactIdentity(
                store_id=store_id,
                key=key,
                created_at=created_at if isinstance(created_at, str) else "",
                **optional,
            )
        )
    return found


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _sorted_graph(
    nodes: Iterable[str], edges: Iterable[tuple[str, str]]
) -> tuple[list[str], list[tuple[str, str]]]:
    pairs = sorted(set(edges))
    names = sorted({*nodes, *(name for pair in pairs for name in pair)})
    return names, pairs


def to_mermaid(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> str:
    """Return a Mermaid flowchart of a lineage graph (parents above their children).

    Parameters
    ----------
    nodes : iterable of str
        The keys to draw (keys named by ``edges`` are drawn too).
    edges : iterable of (str, str)
        ``(parent key, child key)`` pairs: the child was computed from the parent.

    Returns
    -------
    str
        ``flowchart TD`` text, one line per node and edge, sorted: the same graph always gives
        the same text.

    Examples
    --------
    >>> print(to_mermaid([], [("raw.zarr", "regrid.zarr")]))
    flowchart TD
        n0["raw.zarr"]
        n1["regrid.zarr"]
        n0 --> n1
    """
    names, pairs = _sorted_graph(nodes, edges)
    ids = {name: f"n{i}" for i, name in enumerate(names)}
    lines = ["flowchart TD"]
    # Mermaid labels cannot hold a double quote: it is written as its HTML entity
    lines.extend(f'    {ids[name]}["{name.replace(chr(34), "#quot;")}"]' for name in names)
    lines.extend(f"    {ids[parent]} --> {ids[child]}" for parent, child in pairs)
    return "\n".join(lines)


def to_dot(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> str:
    """Return a Graphviz DOT digraph of a lineage graph (edges from parent to child).

    Parameters
    ----------
    nodes : iterable of str
        The keys to draw (keys named by ``edges`` are drawn too).
    edges : iterable of (str, str)
        ``(parent key, child key)`` pairs.

    Returns
    -------
    str
        ``digraph lineage {...}`` text, sorted: the same graph always gives the same text.

    Examples
    --------
    >>> print(to_dot([], [("raw.zarr", "regrid.zarr")]))
    digraph lineage {
        rankdir=TB;
        "raw.zarr";
        "regrid.zarr";
        "raw.zarr" -> "regrid.zarr";
    }
    """
    names, pairs = _sorted_graph(nodes, edges)
    lines = ["digraph lineage {", "    rankdir=TB;"]
    lines.extend(f"    {_quoted(name)};" for name in names)
    lines.extend(f"    {_quoted(parent)} -> {_quoted(child)};" for parent, child in pairs)
    lines.append("}")
    return "\n".join(lines)


def to_graph(nodes: Iterable[str], edges: Iterable[tuple[str, str]], format: str) -> str:
    """Return :func:`to_mermaid` or :func:`to_dot` text, as ``format`` says.

    Raises
    ------
    ValueError
        For a format other than ``"mermaid"`` and ``"dot"``.
    """
    if format == "mermaid":
        return to_mermaid(nodes, edges)
    if format == "dot":
        return to_dot(nodes, edges)
    raise ValueError(f"format must be one of {', '.join(map(repr, GRAPH_FORMATS))}, got {format!r}")
