"""The SQL of queries: one indexed ``SELECT`` per query shape, scoped to one store.

:func:`build_select` turns an :class:`~xpersist_sql.query.ArtifactQuery` (validated by
:func:`~xpersist_sql.query.parse_query`) into a statement on the tables of
:mod:`xpersist_sql.db.tables`, written so that the database answers it from an index:

- every statement is restricted to one store (``store_id``), the leading column of the indexes;
- ``flow_name`` / ``task_name`` / ``serializer`` with the time range and the newest-first order
  walk the composite ``(store_id, <column>, created_at, id)`` indexes backwards and stop at
  ``limit``;
- ``flow_run_id`` / ``task_run_id`` use their own indexes, ``since``/``until`` alone the
  ``(store_id, created_at, id)`` index;
- tags start from the tags table: its ``(tag, created_at, artifact_id)`` index lists the
  artifacts with the first tag newest first (further tags are primary-key lookups);
- a ``key`` without wildcards is an equality on the unique ``(store_id, key)`` index; a glob with
  a literal prefix is a range of that index (``GLOB`` on SQLite, ``LIKE`` on the byte-ordered
  key column on PostgreSQL);
- ``metadata`` is JSONB containment (``@>``) on PostgreSQL and ``json_extract`` on SQLite.

Statements are built once per query shape (which filters are present) with bound parameters.
:func:`fetch_artifacts` runs it and builds the :class:`~xpersist_sql.Artifact` objects without
re-validating what the database returns.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB

from ..models import Artifact
from ..query import SUMMARY_FIELDS, TEXT_FILTERS, ArtifactQuery, MetadataValue, SummaryRow
from .tables import ARTIFACTS, TAGS, UTCDateTime

try:  # a dependency of prefect, so often present; 3x faster than json on small documents
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover
    from json import loads as _json_loads  # type: ignore[assignment]

__all__ = ["build_select", "fetch_artifacts", "summarize"]

_FIELDS = tuple(Artifact.model_fields)
_COLUMNS = tuple(ARTIFACTS.c[name] for name in _FIELDS)
_JSON_FIELDS = frozenset(name for name in _FIELDS if isinstance(ARTIFACTS.c[name].type, JSON))
_new = object.__new__
_setattr = object.__setattr__


def _key_pattern(pattern: str, dialect: str) -> tuple[str, str]:
    """Return ``(kind, pattern)``: ``"eq"``, ``"glob"`` (SQLite) or ``"like"`` and its operand."""
    if "*" not in pattern and "?" not in pattern:
        return "eq", pattern
    if dialect == "sqlite":
        # GLOB is case-sensitive (LIKE is not on SQLite) and uses the key index for a prefix.
        return "glob", pattern.replace("[", "[[]")
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "like", escaped.replace("*", "%").replace("?", "_")


def _value_kind(value: MetadataValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


def _sqlite_metadata(index: int, kind: str) -> ColumnElement[bool]:
    path = bindparam(f"meta_path_{index}", type_=String)
    value: Any = bindparam(f"meta_value_{index}")
    json_type = func.json_type(ARTIFACTS.c.additional_metadata, path)
    extracted = func.json_extract(ARTIFACTS.c.additional_metadata, path)
    if kind in ("null", "true", "false"):
        return json_type == kind
    if kind == "number":
        return and_(json_type.in_(("integer", "real")), extracted == value)
    return and_(json_type == "text", extracted == value)


def _select_columns(dialect: str) -> list[Any]:
    if dialect == "sqlite":
        # JSON arrives as text and is decoded by _json_loads (faster than the generic path)
        return [type_coerce(c, Text) if c.name in _JSON_FIELDS else c for c in _COLUMNS]
    return list(_COLUMNS)


@functools.lru_cache(maxsize=256)
def _statement(
    dialect: str,
    key_kind: str | None,
    texts: tuple[str, ...],
    n_tags: int,
    metadata_kinds: tuple[str, ...],
    since: bool,
    until: bool,
    include_expired: bool,
    order: str,
    limit: bool,
) -> Select[Any]:
    """Build the statement of one query shape; its values are bound parameters."""
    columns = ARTIFACTS.c
    conditions: list[ColumnElement[bool]] = [columns.store_id == bindparam("store_id")]
    if key_kind == "eq":
        conditions.append(columns.key == bindparam("key"))
    elif key_kind == "glob":
        conditions.append(columns.key.op("GLOB")(bindparam("key", type_=String)))
    elif key_kind == "like":
        conditions.append(columns.key.like(bindparam("key"), escape="\\"))
    conditions.extend(columns[name] == bindparam(name) for name in texts)
    if metadata_kinds:
        if dialect == "postgresql":
            contained = bindparam("metadata", type_=JSONB)
            conditions.append(type_coerce(columns.additional_metadata, JSONB).contains(contained))
        else:
            conditions.extend(_sqlite_metadata(i, kind) for i, kind in enumerate(metadata_kinds))
    if not include_expired:
        conditions.append(or_(columns.expires_at.is_(None), columns.expires_at > bindparam("now")))
    stmt = select(*_select_columns(dialect))
    created_at: Any = columns.created_at
    ident: Any = columns.id
    if n_tags:
        driver = TAGS.alias("first_tag")
        stmt = stmt.select_from(driver.join(ARTIFACTS, columns.id == driver.c.artifact_id))
        conditions.append(driver.c.tag == bindparam("tag_0"))
        for i in range(1, n_tags):
            other = TAGS.alias(f"tag_{i}")
            conditions.append(
                exists().where(
                    other.c.artifact_id == columns.id, other.c.tag == bindparam(f"tag_{i}")
                )
            )
        created_at, ident = driver.c.created_at, driver.c.artifact_id
    if since:
        conditions.append(created_at >= bindparam("since", type_=UTCDateTime()))
    if until:
        conditions.append(created_at < bindparam("until", type_=UTCDateTime()))
    stmt = stmt.where(*conditions)
    if key_kind == "eq":
        return stmt  # at most one row: nothing to order or limit
    if order == "newest":
        stmt = stmt.order_by(created_at.desc(), ident.desc())
    else:
        stmt = stmt.order_by(created_at.asc(), ident.asc())
    if limit:
        stmt = stmt.limit(bindparam("limit", type_=Integer))
    return stmt


def build_select(
    query: ArtifactQuery, dialect: str, store_id: int
) -> tuple[Select[Any], dict[str, Any]]:
    """Return the ``SELECT`` answering ``query`` on ``dialect`` and its parameters.

    Queries of the same shape (the same filters present) share one statement object, so that
    SQLAlchemy's compiled cache answers without rebuilding it.

    Parameters
    ----------
    query : ArtifactQuery
        Validated filters.
    dialect : str
        ``"sqlite"`` or ``"postgresql"`` (the SQL of ``key`` and ``metadata`` differ).
    store_id : int
        The store whose artifacts are searched (its row id in ``xpersist_stores``).

    Returns
    -------
    (Select, dict)
        Execute them with ``connection.execute(statement, parameters)``.

    Notes
    -----
    With tags, the query starts from the tags table: its ``(tag, created_at, artifact_id)``
    index yields the artifacts carrying the first tag already in ``created_at`` order (the time
    range is a range of that index), so "the newest N with tag T" reads N index entries. Further
    tags are ``EXISTS`` lookups on the tags primary key.
    """
    params: dict[str, Any] = {"store_id": store_id}
    key_kind = None
    if query.key is not None:
        key_kind, params["key"] = _key_pattern(query.key, dialect)
    texts = tuple(name for name in TEXT_FILTERS if getattr(query, name) is not None)
    params.update((name, getattr(query, name)) for name in texts)
    params.update((f"tag_{i}", tag) for i, tag in enumerate(query.tags))
    kinds = tuple(_value_kind(value) for _, value in query.metadata)
    if query.metadata:
        if dialect == "postgresql":
            params["metadata"] = dict(query.metadata)
        else:
            for i, (name, value) in enumerate(query.metadata):
                params[f"meta_path_{i}"] = f'$."{name}"'
                params[f"meta_value_{i}"] = value
    if query.since is not None:
        params["since"] = query.since
    if query.until is not None:
        params["until"] = query.until
    if not query.include_expired:
        params["now"] = query.now
    if query.limit is not None:
        params["limit"] = query.limit
    stmt = _statement(
        dialect,
        key_kind,
        texts,
        len(query.tags),
        kinds,
        query.since is not None,
        query.until is not None,
        query.include_expired,
        query.order,
        query.limit is not None,
    )
    return stmt, params


def fetch_artifacts(conn: Connection, query: ArtifactQuery, store_id: int) -> list[Artifact]:
    """Run ``query`` on ``conn`` and return the store's matching artifacts in order."""
    if query.limit == 0:
        return []
    stmt, params = build_select(query, conn.dialect.name, store_id)
    rows = conn.execute(stmt, params).all()
    fields = _FIELDS
    json_fields = _JSON_FIELDS
    loads = _json_loads
    construct = _construct
    artifacts = []
    for row in rows:
        values = dict(zip(fields, row, strict=True))
        for name in json_fields:
            value = values[name]
            if value.__class__ is str:
                value = values[name] = loads(value)
            if value is None:
                values[name] = {}
        artifacts.append(construct(values))
    return artifacts


def _construct(values: dict[str, Any]) -> Artifact:
    """Build an Artifact from trusted column values without validation.

    The columns have the model's types (aware UTC datetimes, decoded JSON objects), so this does
    what ``Artifact.model_construct`` does, at a quarter of its cost: converting rows is most of
    a query's time. ``tests/test_query.py`` checks the result equals a validated Artifact.
    """
    artifact = _new(Artifact)
    _setattr(artifact, "__dict__", values)
    _setattr(artifact, "__pydantic_fields_set__", set(values))
    _setattr(artifact, "__pydantic_extra__", None)
    _setattr(artifact, "__pydantic_private__", None)
    return artifact


def summarize(conn: Connection, query: ArtifactQuery, by: str, store_id: int) -> list[SummaryRow]:
    """Count the artifacts matching ``query`` and add up their sizes, per value of ``by``.

    Answered by one ``GROUP BY`` in the database (``limit`` and ``order`` are ignored).

    Parameters
    ----------
    conn : Connection
        A connection to the index.
    query : ArtifactQuery
        The filters.
    by : {"flow_name", "task_name", "serializer"}
        The field to group by.
    store_id : int
        The store whose artifacts are summarized.

    Returns
    -------
    list of SummaryRow
        Largest groups (by count) first.
    """
    if by not in SUMMARY_FIELDS:
        raise ValueError(f"by must be one of {', '.join(map(repr, SUMMARY_FIELDS))}, got {by!r}")
    unbounded = dataclasses.replace(query, limit=None)
    stmt, params = build_select(unbounded, conn.dialect.name, store_id)
    column = ARTIFACTS.c[by]
    count = func.count()
    total = func.coalesce(func.sum(ARTIFACTS.c.size_bytes), 0)
    grouped = (
        stmt.with_only_columns(column, count, total)
        .group_by(column)
        .order_by(None)
        .order_by(count.desc(), column)
    )
    return [
        SummaryRow(value=value, count=int(n), size_bytes=int(size))
        for value, n, size in conn.execute(grouped, params)
    ]
