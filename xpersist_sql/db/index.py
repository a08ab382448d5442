"""Reads and writes of artifact rows: one short transaction per operation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..models import Artifact
from .engine import WRITE_OPTION
from .tables import ARTIFACTS, TAGS

__all__ = ["ArtifactIndex", "promoted_columns", "tags_of"]

PROMOTED_LENGTHS = {"flow_name": 512, "task_name": 512, "flow_run_id": 64, "task_run_id": 64}
TAG_FIELDS = ("task_tags", "tags")
_ROW_FIELDS = (
    "key",
    "serializer",
    "load_kwargs",
    "dump_kwargs",
    "additional_metadata",
    "created_at",
    "size_bytes",
    "checksum",
    "fingerprint",
    "expires_at",
    "versions",
)


def promoted_columns(metadata: Mapping[str, Any]) -> dict[str, str | None]:
    """Values of the indexed columns, taken from the same names in ``additional_metadata``."""
    values: dict[str, str | None] = {}
    for name, length in PROMOTED_LENGTHS.items():
        value = metadata.get(name)
        values[name] = None if value is None else str(value)[:length]
    return values


def tags_of(metadata: Mapping[str, Any]) -> set[str]:
    """Tags of an artifact: the strings in its ``task_tags`` and ``tags`` metadata lists."""
    tags: set[str] = set()
    for field in TAG_FIELDS:
        value = metadata.get(field)
        if isinstance(value, (list, tuple, set, frozenset)):
            tags.update(str(tag)[:256] for tag in value)
    return tags


def _now() -> datetime:
    return datetime.now(timezone.utc)


def not_expired(now: datetime | None = None) -> Any:
    """Return the SQL condition "no expiry, or an expiry in the future"."""
    return or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > (now or _now()))


def row_to_artifact(row: Any) -> Artifact:
    """Build an :class:`Artifact` from a row of the artifacts table."""
    mapping = row._mapping
    values = {field: mapping[field] for field in _ROW_FIELDS}
    for field in ("load_kwargs", "dump_kwargs", "additional_metadata", "versions"):
        if values[field] is None:
            values[field] = {}
    # the columns already have the model's types (aware UTC datetimes, decoded JSON)
    return Artifact.model_construct(**values)


class ArtifactIndex:
    """The artifact rows of one index database.

    Parameters
    ----------
    engine : Engine
        An engine made by :func:`~xpersist_sql.db.engine.create_index_engine` whose schema is at
        head.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """Open a write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on exit."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """Open a connection for reads."""
        with self.engine.connect() as conn:
            yield conn

    # -- reads -----------------------------------------------------------------------------------
    def fetch(
        self, conn: Connection, key: str, *, for_update: bool = False
    ) -> tuple[int, Artifact] | None:
        """Return ``(id, artifact)`` for ``key`` (expired or not), or None."""
        stmt: Select[Any] = select(ARTIFACTS).where(ARTIFACTS.c.key == key)
        if for_update and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        return None if row is None else (row.id, row_to_artifact(row))

    def get(self, key: str) -> Artifact | None:
        """Return the artifact stored under ``key`` (expired or not), or None."""
        with self.read() as conn:
            found = self.fetch(conn, key)
        return None if found is None else found[1]

    def keys(self, *, include_expired: bool = False) -> list[str]:
        """Return the stored keys, sorted."""
        stmt = select(ARTIFACTS.c.key).order_by(ARTIFACTS.c.key)
        if not include_expired:
            stmt = stmt.where(not_expired())
        with self.read() as conn:
            return list(conn.scalars(stmt))

    def count(self, *, include_expired: bool = False) -> int:
        """Return the number of stored artifacts."""
        stmt = select(func.count()).select_from(ARTIFACTS)
        if not include_expired:
            stmt = stmt.where(not_expired())
        with self.read() as conn:
            return int(conn.scalar(stmt) or 0)

    def contains(self, key: str) -> bool:
        """Return whether an unexpired artifact is stored under ``key``."""
        stmt = select(ARTIFACTS.c.id).where(ARTIFACTS.c.key == key, not_expired())
        with self.read() as conn:
            return conn.execute(stmt).first() is not None

    # -- writes (inside a ``write()`` transaction) -----------------------------------------------
    @staticmethod
    def _values(artifact: Artifact) -> dict[str, Any]:
        values = {field: getattr(artifact, field) for field in _ROW_FIELDS}
        values.update(promoted_columns(artifact.additional_metadata))
        return values

    def insert_if_absent(self, conn: Connection, artifact: Artifact) -> int | None:
        """Insert the row unless the key exists; return the new id, None on a conflict.

        The unique key constraint decides: of two concurrent writers exactly one inserts.
        """
        dialect = conn.dialect.name
        values = self._values(artifact)
        stmt: Any
        if dialect == "postgresql":
            stmt = (
                postgresql.insert(ARTIFACTS)
                .values(values)
                .on_conflict_do_nothing(index_elements=[ARTIFACTS.c.key])
            )
        elif dialect == "sqlite":
            stmt = (
                sqlite.insert(ARTIFACTS)
                .values(values)
                .on_conflict_do_nothing(index_elements=[ARTIFACTS.c.key])
            )
        else:  # pragma: no cover - other backends are not supported yet
            stmt = insert(ARTIFACTS).values(values)
        new_id = conn.execute(stmt.returning(ARTIFACTS.c.id)).scalar()
        if new_id is not None:
            self._set_tags(conn, int(new_id), artifact)
        return None if new_id is None else int(new_id)

    def replace(self, conn: Connection, artifact_id: int, artifact: Artifact) -> None:
        """Overwrite the row ``artifact_id`` with ``artifact``."""
        conn.execute(
            update(ARTIFACTS).where(ARTIFACTS.c.id == artifact_id).values(self._values(artifact))
        )
        conn.execute(delete(TAGS).where(TAGS.c.artifact_id == artifact_id))
        self._set_tags(conn, artifact_id, artifact)

    def update_stat(
        self, conn: Connection, artifact_id: int, *, size_bytes: int, fingerprint: str
    ) -> None:
        """Record a payload's size and fingerprint."""
        conn.execute(
            update(ARTIFACTS)
            .where(ARTIFACTS.c.id == artifact_id)
            .values(size_bytes=size_bytes, fingerprint=fingerprint)
        )

    def _set_tags(self, conn: Connection, artifact_id: int, artifact: Artifact) -> None:
        tags = tags_of(artifact.additional_metadata)
        if tags:
            conn.execute(
                insert(TAGS),
                [
                    {"artifact_id": artifact_id, "tag": tag, "created_at": artifact.created_at}
                    for tag in sorted(tags)
                ],
            )

    def remove(self, conn: Connection, key: str) -> Artifact | None:
        """Delete the row of ``key`` (its tags go with it); return what was deleted."""
        found = self.fetch(conn, key, for_update=True)
        if found is None:
            return None
        conn.execute(delete(TAGS).where(TAGS.c.artifact_id == found[0]))
        conn.execute(delete(ARTIFACTS).where(ARTIFACTS.c.id == found[0]))
        return found[1]
