"""The stores table: which store ids an index knows, and where each was last opened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .tables import STORES

__all__ = ["StoreRow", "find_store", "register_store", "set_store_root", "stores_at_root"]


@dataclass(frozen=True)
class StoreRow:
    """A row of ``xpersist_stores``: the row id (owner of artifact rows), marker id and root."""

    id: int
    uid: str
    root: str


def find_store(conn: Connection, uid: str) -> StoreRow | None:
    """Return the store whose marker id is ``uid``, or None if the index does not know it."""
    row = conn.execute(
        select(STORES.c.id, STORES.c.uid, STORES.c.root).where(STORES.c.uid == uid)
    ).first()
    return None if row is None else StoreRow(int(row.id), row.uid, row.root)


def stores_at_root(conn: Connection, root: str) -> list[StoreRow]:
    """Return the stores last opened at ``root``."""
    rows = conn.execute(
        select(STORES.c.id, STORES.c.uid, STORES.c.root).where(STORES.c.root == root)
    ).all()
    return [StoreRow(int(row.id), row.uid, row.root) for row in rows]


def register_store(conn: Connection, uid: str, root: str) -> StoreRow:
    """Record the store ``uid`` at ``root`` unless the index knows it; return its row."""
    values = {"uid": uid, "root": root, "created_at": datetime.now(timezone.utc)}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(postgresql.insert(STORES).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        conn.execute(sqlite.insert(STORES).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - other backends are not supported
        conn.execute(insert(STORES).values(values))
    found = find_store(conn, uid)
    assert found is not None
    return found


def set_store_root(conn: Connection, store_id: int, root: str) -> None:
    """Record that the store ``store_id`` now lives at ``root`` (moved or copied)."""
    conn.execute(update(STORES).where(STORES.c.id == store_id).values(root=root))
