"""The SQL of lineage: walking the edges table of one store, breadth first.

An edge row (``xpersist_artifact_edges``) belongs to its child artifact row and names the parent
by store id (the uid in its marker), key and version. A walk stays inside one store: upstream it
follows the parents recorded with this store's id and resolves them among this store's rows;
downstream it follows the edges naming this store and one of the frontier's keys, from children
that are this store's rows. Two stores sharing a database never see each other's edges, and a
parent recorded in another store (or deleted since) is not returned.

A walk is a bounded breadth-first search: one indexed query per level (edges primary key
upstream, the ``(parent_store, parent_key, artifact_id)`` index downstream, the artifacts'
``(store_id, key)`` unique index to resolve keys), each artifact visited once, so cycles end.
A recursive CTE would do the same in one statement, but needs a cycle guard that SQLite and
PostgreSQL write differently; lineages are shallow, so a query per level costs little.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, select

from ..models import Artifact
from .queries import artifact_columns, artifacts_from_rows
from .tables import ARTIFACTS, EDGES, STORE_UID_LENGTH, STORES, index_text

__all__ = ["LineageWalk", "all_edges", "artifacts_by_id", "store_uid", "walk"]

#: Bound parameters per ``IN`` list (SQLite allows 32766, PostgreSQL 65535).
_CHUNK = 500


@dataclasses.dataclass
class LineageWalk:
    """What a walk found.

    Attributes
    ----------
    nodes : list of (int, int, str)
        ``(level, artifact id, key)`` of each artifact reached, the start excluded: breadth
        first (level 1 = direct parents or children), then by key.
    edges : set of (str, str)
        ``(parent key, child key)`` of every edge followed, the start's included.
    """

    nodes: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    edges: set[tuple[str, str]] = dataclasses.field(default_factory=set)


def store_uid(conn: Connection, store_id: int) -> str:
    """Return the uid (marker id) of the store ``store_id``, as edges record it."""
    uid = conn.execute(select(STORES.c.uid).where(STORES.c.id == store_id)).scalar_one()
    return index_text(str(uid), STORE_UID_LENGTH)


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _parents(
    conn: Connection, store_id: int, uid: str, frontier: dict[int, str]
) -> list[tuple[str, int, str]]:
    """``(child key, parent id, parent key)`` of the frontier's parents in this store."""
    parent = ARTIFACTS.alias("parent")
    found: list[tuple[str, int, str]] = []
    for ids in _chunks(sorted(frontier)):
        stmt = (
            select(EDGES.c.artifact_id, parent.c.id, parent.c.key)
            .select_from(
                EDGES.join(
                    parent,
                    (parent.c.store_id == store_id) & (parent.c.key == EDGES.c.parent_key),
                )
            )
            .where(EDGES.c.artifact_id.in_(ids), EDGES.c.parent_store == uid)
        )
        found.extend(
            (frontier[int(child)], int(pid), str(key)) for child, pid, key in conn.execute(stmt)
        )
    return found


def _children(
    conn: Connection, store_id: int, uid: str, frontier: dict[int, str]
) -> list[tuple[str, int, str]]:
    """``(parent key, child id, child key)`` of the frontier's children in this store."""
    child = ARTIFACTS.alias("child")
    found: list[tuple[str, int, str]] = []
    for keys in _chunks(sorted(frontier.values())):
        stmt = (
            select(EDGES.c.parent_key, child.c.id, child.c.key)
            .select_from(EDGES.join(child, child.c.id == EDGES.c.artifact_id))
            .where(
                EDGES.c.parent_store == uid,
                EDGES.c.parent_key.in_(keys),
                child.c.store_id == store_id,
            )
        )
        found.extend((str(pkey), int(cid), str(ckey)) for pkey, cid, ckey in conn.execute(stmt))
    return found


def walk(
    conn: Connection,
    store_id: int,
    start: tuple[int, str],
    direction: str,
    depth: int | None = None,
) -> LineageWalk:
    """Walk the lineage of one artifact row, breadth first.

    Parameters
    ----------
    conn : Connection
        A connection to the index.
    store_id : int
        The store's row id: only its rows and the edges naming it are followed.
    start : (int, str)
        The artifact's row id and key.
    direction : {"upstream", "downstream"}
        Follow parents (what it was computed from) or children (what was computed from it).
    depth : int, optional
        Stop after this many levels (None: the transitive closure).

    Returns
    -------
    LineageWalk
    """
    uid = store_uid(conn, store_id)
    step = _parents if direction == "upstream" else _children
    seen = {start[0]}
    frontier = {start[0]: start[1]}
    result = LineageWalk()
    level = 0
    while frontier and (depth is None or level < depth):
        level += 1
        reached: dict[int, str] = {}
        for source, target_id, target_key in step(conn, store_id, uid, frontier):
            if direction == "upstream":
                result.edges.add((target_key, source))
            else:
                result.edges.add((source, target_key))
            if target_id not in seen:
                reached[target_id] = target_key
        seen.update(reached)
        result.nodes.extend(
            (level, ident, key) for ident, key in sorted(reached.items(), key=lambda x: x[1])
        )
        frontier = reached
    return result


def artifacts_by_id(conn: Connection, store_id: int, ids: Iterable[int]) -> dict[int, Artifact]:
    """Return the artifacts of the rows ``ids`` of this store (expired ones included)."""
    wanted = sorted(set(ids))
    found: dict[int, Artifact] = {}
    columns = artifact_columns(conn.dialect.name)
    for chunk in _chunks(wanted):
        stmt = select(ARTIFACTS.c.id, *columns).where(
            ARTIFACTS.c.store_id == store_id, ARTIFACTS.c.id.in_(chunk)
        )
        rows = conn.execute(stmt).all()
        for row, artifact in zip(rows, artifacts_from_rows([row[1:] for row in rows]), strict=True):
            found[int(row[0])] = artifact
    return found


def all_edges(conn: Connection, store_id: int) -> set[tuple[str, str]]:
    """Return ``(parent key, child key)`` of every edge between two of this store's rows."""
    uid = store_uid(conn, store_id)
    child = ARTIFACTS.alias("child")
    parent = ARTIFACTS.alias("parent")
    stmt = (
        select(parent.c.key, child.c.key)
        .select_from(
            EDGES.join(child, child.c.id == EDGES.c.artifact_id).join(
                parent, (parent.c.store_id == store_id) & (parent.c.key == EDGES.c.parent_key)
            )
        )
        .where(child.c.store_id == store_id, EDGES.c.parent_store == uid)
    )
    return {(str(pkey), str(ckey)) for pkey, ckey in conn.execute(stmt)}
