"""SQLAlchemy tables of the index (the schema at the head Alembic revision).

The migrations in ``migrations/versions`` build exactly this schema; a test compares them with
Alembic's autogenerate.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "ARTIFACTS",
    "EDGES",
    "INDEXED_TEXT_LENGTHS",
    "METADATA",
    "PARAMETERS",
    "PARAMETER_NAME_LENGTH",
    "PARAMETER_VALUE_LENGTH",
    "STORES",
    "STORE_UID_LENGTH",
    "TAGS",
    "TAG_LENGTH",
    "JSONType",
    "KeyType",
    "UTCDateTime",
    "index_text",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

METADATA = MetaData(naming_convention=NAMING_CONVENTION)

#: JSON everywhere, JSONB on PostgreSQL (indexable, comparable).
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: Primary keys: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")

#: Keys compare byte-wise everywhere (collation "C" on PostgreSQL, SQLite's BINARY), so that the
#: range ``'a/' <= key < 'a0'`` (the keys inside ``a``) is one scan of the unique index.
KeyType = String(1024).with_variant(String(1024, collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        if stored.tzinfo is None:
            return stored.replace(tzinfo=timezone.utc)
        return stored.astimezone(timezone.utc)


STORES = Table(
    "xpersist_stores",
    METADATA,
    Column("id", IdType, primary_key=True, autoincrement=True),
    # the id in the store's marker (.xpersist_sql/store.json): the store's identity
    Column("uid", String(32), nullable=False, unique=True),
    # where the store was last opened for writing (information; identity is the uid)
    Column("root", String(2048), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


def _partial_index(*columns: str) -> Index:
    """Return an index on ``columns`` of the rows whose second column is not NULL."""
    present = text(f"{columns[1]} IS NOT NULL")
    return Index(None, *columns, sqlite_where=present, postgresql_where=present)


ARTIFACTS = Table(
    "xpersist_artifacts",
    METADATA,
    Column("id", IdType, primary_key=True, autoincrement=True),
    # every row belongs to one store (revision 0004); keys are unique per store
    Column("store_id", IdType, ForeignKey(STORES.c.id), nullable=False),
    Column("key", KeyType, nullable=False),
    Column("serializer", String(128), nullable=False),
    Column("load_kwargs", JSONType, nullable=False),
    Column("dump_kwargs", JSONType, nullable=False),
    Column("additional_metadata", JSONType, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("size_bytes", BigInteger, nullable=True),
    Column("checksum", String(128), nullable=True),
    Column("fingerprint", String(256), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("versions", JSONType, nullable=False),
    # promoted from additional_metadata (revision 0002) so that queries use indexes
    Column("flow_name", String(512), nullable=True),
    Column("task_name", String(512), nullable=True),
    Column("flow_run_id", String(64), nullable=True),
    Column("task_run_id", String(64), nullable=True),
    # when the artifact was last read (revision 0003), recorded in batches: LRU eviction
    # (ordered by coalesce(last_accessed_at, created_at): no index, revision 0006)
    Column("last_accessed_at", UTCDateTime(), nullable=True),
    UniqueConstraint("store_id", "key"),
    # (store_id, column, created_at, id): one store's newest-first queries (ties broken by id)
    # read them in order
    Index(None, "store_id", "created_at", "id"),
    Index(None, "store_id", "serializer", "created_at", "id"),
    # optional columns: only the rows that have a value (revision 0006), so that a put writes
    # no page of an index that would not hold it; every query on them compares the column
    _partial_index("store_id", "expires_at"),
    _partial_index("store_id", "flow_name", "created_at", "id"),
    _partial_index("store_id", "task_name", "created_at", "id"),
    _partial_index("store_id", "flow_run_id", "created_at", "id"),
    _partial_index("store_id", "task_run_id", "created_at", "id"),
)

TAGS = Table(
    "xpersist_artifact_tags",
    METADATA,
    Column(
        "artifact_id",
        IdType,
        ForeignKey(ARTIFACTS.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tag", String(256), primary_key=True),
    # a copy of the artifact's created_at: "newest N with tag T" walks this index and stops
    Column("created_at", UTCDateTime(), nullable=False),
    Index(None, "tag", "created_at", "artifact_id"),
)

PARAMETERS = Table(
    "xpersist_artifact_parameters",
    METADATA,
    # revision 0005: the parameter values of additional_metadata["parameter_values"], indexed
    Column(
        "artifact_id",
        IdType,
        ForeignKey(ARTIFACTS.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),
    # the canonical JSON of the value (xpersist_sql.parameters.parameter_index_text)
    Column("value", String(256), nullable=False),
    # a copy of the artifact's created_at: "newest N with member=2" walks this index and stops
    Column("created_at", UTCDateTime(), nullable=False),
    # (named: the conventional name is longer than PostgreSQL's 63 characters)
    Index(
        "ix_xpersist_artifact_parameters_name_value_created_at",
        "name",
        "value",
        "created_at",
        "artifact_id",
    ),
)

EDGES = Table(
    "xpersist_artifact_edges",
    METADATA,
    # revision 0005: lineage. The child is a row (its edges go with it); the parent is recorded
    # by store id (the uid in its marker), key and the version it was read as, so that a parent
    # overwritten or deleted since is detectable and a parent in another store can be recorded.
    Column(
        "artifact_id",
        IdType,
        ForeignKey(ARTIFACTS.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("parent_store", String(64), primary_key=True),
    Column("parent_key", KeyType, primary_key=True),
    Column("parent_created_at", UTCDateTime(), nullable=True),
    Column("parent_fingerprint", String(256), nullable=True),
    Column("parent_checksum", String(128), nullable=True),
    # downstream: (parent store, parent key) -> children; upstream is the primary key
    Index(None, "parent_store", "parent_key", "artifact_id"),
)

#: Lengths of the indexed text columns filled from ``additional_metadata``, and of a tag.
INDEXED_TEXT_LENGTHS: dict[str, int] = {
    name: int(ARTIFACTS.c[name].type.length)  # type: ignore[attr-defined]
    for name in ("flow_name", "task_name", "flow_run_id", "task_run_id")
}
TAG_LENGTH: int = int(TAGS.c.tag.type.length)  # type: ignore[attr-defined]
PARAMETER_NAME_LENGTH: int = int(PARAMETERS.c.name.type.length)  # type: ignore[attr-defined]
PARAMETER_VALUE_LENGTH: int = int(PARAMETERS.c.value.type.length)  # type: ignore[attr-defined]
STORE_UID_LENGTH: int = int(EDGES.c.parent_store.type.length)  # type: ignore[attr-defined]
_DIGEST_CHARS = 40


def index_text(value: str, length: int) -> str:
    """Return how ``value`` is stored in (and looked up from) an indexed column of ``length``.

    A value that fits is stored as it is. A longer one (a flow name over 512 characters, a tag
    over 256) is stored as its first characters, ``~`` and the sha1 of the whole value, which
    fits the column and tells it apart from every other value: an exact filter on the long name
    finds it, and no other, where a cut would have missed it (or matched another name with the
    same beginning). The full value stays in ``additional_metadata``.
    """
    if len(value) <= length:
        return value
    digest = hashlib.sha1(value.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return f"{value[: length - _DIGEST_CHARS - 1]}~{digest.hexdigest()}"
