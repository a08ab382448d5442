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
- parameter values (``parameters``) start from the parameters table when there are no tags:
  its ``(name, value, created_at, artifact_id)`` index lists the artifacts with the first
  value newest first (further values, or values after tags, are primary-key lookups);
- ``metadata`` is JSONB containment (``@>``) on PostgreSQL and ``json_extract`` on SQLite.

Statements are built once per query shape (which filters are present) with bound parameters,
and compiled once per dialect (:func:`compile_query`: the SQL string the driver runs as is).
:func:`fetch_artifacts` runs it and :func:`artifacts_from_rows` builds the
:class:`~xpersist_sql.Artifact` objects without re-validating what the database returns.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pydantic
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Dialect,
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
from .tables import (
    ARTIFACTS,
    INDEXED_TEXT_LENGTHS,
    PARAMETER_NAME_LENGTH,
    PARAMETER_VALUE_LENGTH,
    PARAMETERS,
    TAG_LENGTH,
    TAGS,
    UTCDateTime,
    index_text,
)

try:  # a dependency of prefect, so often present; 3x faster than json on small documents
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover
    from json import loads as _json_loads  # type: ignore[assignment]

__all__ = [
    "ARTIFACT_FIELDS",
    "CompiledSelect",
    "artifact_columns",
    "artifacts_from_rows",
    "build_select",
    "compile_query",
    "fetch_artifacts",
    "sqlite_value",
    "summarize",
]

#: The fields of :class:`~xpersist_sql.Artifact`, in the order of :func:`artifact_columns`.
ARTIFACT_FIELDS = tuple(Artifact.model_fields)
_FIELDS = ARTIFACT_FIELDS
_COLUMNS = tuple(ARTIFACTS.c[name] for name in _FIELDS)
_JSON_FIELDS = frozenset(name for name in _FIELDS if isinstance(ARTIFACTS.c[name].type, JSON))
_FIELDS_SET = frozenset(_FIELDS)
if _FIELDS != (  # the order in which artifacts_from_rows unpacks rows
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
):  # pragma: no cover
    raise RuntimeError("Artifact's fields changed: update artifacts_from_rows")
_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat
_new = object.__new__
# the slots of a pydantic model, set as Artifact.model_construct sets them, without its overhead
_MODEL_SLOTS = vars(pydantic.BaseModel)
_set_dict = _MODEL_SLOTS["__dict__"].__set__
_set_fields_set = _MODEL_SLOTS["__pydantic_fields_set__"].__set__
_set_extra = _MODEL_SLOTS["__pydantic_extra__"].__set__
_set_private = _MODEL_SLOTS["__pydantic_private__"].__set__


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


def _plain_name(name: str) -> bool:
    """Whether a metadata name is written into JSON text as it is (nothing escaped)."""
    return json.dumps(name) == f'"{name}"'


def _sqlite_metadata(index: int, kind: str) -> ColumnElement[bool]:
    """Return the condition ``additional_metadata[name] == value`` of a filter on SQLite.

    A name stored as it is (``"experiment"``) is read with ``json_extract`` and a path. SQLite
    matches a path's label against the stored text of a name, escapes included (and cannot
    write a ``"`` in one), so a name the JSON text escapes (non-ASCII, a tab, a backslash, a
    quote) is matched on its decoded form in ``json_each`` instead (``kind`` ``each:...``).
    """
    if kind.startswith("each:"):
        kind = kind[len("each:") :]
        entries = func.json_each(ARTIFACTS.c.additional_metadata).table_valued(
            "key", "value", "type"
        )
        named = entries.c.key == bindparam(f"meta_name_{index}", type_=String)
        return exists(
            select(1)
            .select_from(entries)
            .where(named, _json_match(index, kind, entries.c.type, entries.c.value))
        )
    path = bindparam(f"meta_path_{index}", type_=String)
    json_type = func.json_type(ARTIFACTS.c.additional_metadata, path)
    extracted = func.json_extract(ARTIFACTS.c.additional_metadata, path)
    return _json_match(index, kind, json_type, extracted)


def _json_match(
    index: int, kind: str, json_type: ColumnElement[Any], extracted: ColumnElement[Any]
) -> ColumnElement[bool]:
    value: Any = bindparam(f"meta_value_{index}")
    if kind in ("null", "true", "false"):
        return json_type == kind
    if kind == "number":
        return and_(json_type.in_(("integer", "real")), extracted == value)
    return and_(json_type == "text", extracted == value)


def artifact_columns(dialect: str) -> list[Any]:
    """Return the columns of an :class:`~xpersist_sql.Artifact`, in ``ARTIFACT_FIELDS`` order.

    On SQLite the JSON columns are read as text, decoded by :func:`artifacts_from_rows` (faster
    than SQLAlchemy's generic JSON processing).
    """
    if dialect == "sqlite":
        return [type_coerce(c, Text) if c.name in _JSON_FIELDS else c for c in _COLUMNS]
    return list(_COLUMNS)


_select_columns = artifact_columns


@functools.lru_cache(maxsize=256)
def _statement(
    dialect: str,
    key_kind: str | None,
    texts: tuple[str, ...],
    n_tags: int,
    n_parameters: int,
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
    first_lookup = 0
    if n_parameters and not n_tags:
        # no tags: the first parameter value drives, in created_at order (as the first tag does)
        first = PARAMETERS.alias("first_parameter")
        stmt = stmt.select_from(first.join(ARTIFACTS, columns.id == first.c.artifact_id))
        conditions.append(first.c.name == bindparam("parameter_name_0"))
        conditions.append(first.c.value == bindparam("parameter_value_0"))
        created_at, ident = first.c.created_at, first.c.artifact_id
        first_lookup = 1
    for i in range(first_lookup, n_parameters):
        other = PARAMETERS.alias(f"parameter_{i}")
        conditions.append(
            exists().where(
                other.c.artifact_id == columns.id,
                other.c.name == bindparam(f"parameter_name_{i}"),
                other.c.value == bindparam(f"parameter_value_{i}"),
            )
        )
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
    shape, params = _shape(query, dialect, store_id)
    return _statement(*shape), params


def _shape(query: ArtifactQuery, dialect: str, store_id: int) -> tuple[Any, dict[str, Any]]:
    """Return the arguments of :func:`_statement` for ``query`` and the statement's parameters."""
    params: dict[str, Any] = {"store_id": store_id}
    key_kind = None
    if query.key is not None:
        key_kind, params["key"] = _key_pattern(query.key, dialect)
    texts = tuple(name for name in TEXT_FILTERS if getattr(query, name) is not None)
    # looked up as they are stored: a value too long for its column by its digest form
    params.update(
        (name, index_text(getattr(query, name), INDEXED_TEXT_LENGTHS.get(name, 1 << 30)))
        for name in texts
    )
    params.update((f"tag_{i}", index_text(tag, TAG_LENGTH)) for i, tag in enumerate(query.tags))
    for i, (parameter, text) in enumerate(query.parameters):
        params[f"parameter_name_{i}"] = index_text(parameter, PARAMETER_NAME_LENGTH)
        params[f"parameter_value_{i}"] = index_text(text, PARAMETER_VALUE_LENGTH)
    kinds = tuple(_value_kind(value) for _, value in query.metadata)
    if query.metadata:
        if dialect == "postgresql":
            params["metadata"] = dict(query.metadata)
        else:
            plain = tuple(_plain_name(name) for name, _ in query.metadata)
            kinds = tuple(
                kind if ok else f"each:{kind}" for kind, ok in zip(kinds, plain, strict=True)
            )
            for i, (name, value) in enumerate(query.metadata):
                if plain[i]:
                    params[f"meta_path_{i}"] = f'$."{name}"'
                else:
                    params[f"meta_name_{i}"] = name
                params[f"meta_value_{i}"] = value
    if query.since is not None:
        params["since"] = query.since
    if query.until is not None:
        params["until"] = query.until
    if not query.include_expired:
        params["now"] = query.now
    if query.limit is not None:
        params["limit"] = query.limit
    shape = (
        dialect,
        key_kind,
        texts,
        len(query.tags),
        len(query.parameters),
        kinds,
        query.since is not None,
        query.until is not None,
        query.include_expired,
        query.order,
        query.limit is not None,
    )
    return shape, params


def sqlite_value(value: Any) -> Any:
    """Return a parameter as SQLAlchemy binds it on SQLite: datetimes as naive UTC text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat(" ", "microseconds")
        if value.tzinfo is not _UTC:
            value = value.astimezone(_UTC)
        return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"
    return value


def _json_text(value: Any) -> str:
    """Return a JSON column's value as SQLAlchemy writes it on SQLite (``json.dumps``)."""
    return "{}" if value.__class__ is dict and not value else json.dumps(value)


def _sqlite_converter(bind_type: Any) -> Callable[[Any], Any] | None:
    """How a value bound to a parameter of ``bind_type`` is converted for SQLite's driver.

    JSON as ``json.dumps`` text, strings and integers as they are, anything else (datetimes,
    parameters of no known type) by :func:`sqlite_value`.
    """
    if isinstance(bind_type, JSON):
        return _json_text
    if isinstance(bind_type, String | Integer):
        return None
    return sqlite_value


@dataclasses.dataclass(frozen=True)
class CompiledSelect:
    """A statement compiled once for one dialect, to run on the driver's cursor.

    A ``SELECT``, or one of the writes of :class:`~xpersist_sql.db.index.ArtifactIndex`.

    Attributes
    ----------
    statement : Select, Insert, Update or Delete
        The SQLAlchemy statement (to run it through SQLAlchemy instead).
    sql : str
        Its SQL in the driver's parameter style.
    names : tuple of str or None
        The order of the positional parameters (SQLite's ``?``); None for named ones.
    dialect : str
        ``"sqlite"`` or ``"postgresql"``.
    defaults : dict
        The values of the parameters SQLAlchemy added itself (``OFFSET 0``, literals).
    plan : tuple or None
        On SQLite, per positional parameter: its name and how :meth:`bind` converts its value
        (``None``: bound as it is, for a string or integer column).
    """

    statement: Any
    sql: str
    names: tuple[str, ...] | None
    dialect: str
    defaults: dict[str, Any]
    plan: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = None

    @classmethod
    def of(
        cls, statement: Any, dialect: Dialect, column_keys: Sequence[str] | None = None
    ) -> CompiledSelect:
        """Compile ``statement`` for ``dialect``.

        ``column_keys``: for an ``INSERT`` or ``UPDATE`` without ``.values()``, the columns
        it sets (bound parameters named by the columns, as SQLAlchemy compiles them for an
        execution with those keys).
        """
        compiled = statement.compile(
            dialect=dialect, column_keys=None if column_keys is None else list(column_keys)
        )
        names = tuple(compiled.positiontup or ()) if compiled.positional else None
        defaults = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if not bind.required and (names is None or name in names)
        }
        plan = None
        if names is not None and dialect.name == "sqlite":
            binds = compiled.binds
            plan = tuple(
                (name, _sqlite_converter(binds[name].type if name in binds else None))
                for name in names
            )
        return cls(statement, compiled.string, names, dialect.name, defaults, plan)

    def bind(self, params: Mapping[str, Any]) -> Any:
        """Return the driver's parameters for ``params`` (converted as SQLAlchemy would).

        On SQLite: JSON values as ``json.dumps`` text (SQLAlchemy's default serializer),
        datetimes as naive UTC text (:func:`sqlite_value`), the rest as they are.
        """
        if self.defaults:
            params = {**self.defaults, **params}
        if self.plan is not None:
            return tuple(
                [
                    params[name] if convert is None else convert(params[name])
                    for name, convert in self.plan
                ]
            )
        if self.names is not None:
            return tuple([params[name] for name in self.names])
        if self.dialect == "postgresql" and "metadata" in params:
            from psycopg.types.json import Jsonb

            params = {**params, "metadata": Jsonb(params["metadata"])}
        return params


@functools.lru_cache(maxsize=512)
def _compiled_query(dialect: Dialect, shape: Any) -> CompiledSelect:
    return CompiledSelect.of(_statement(*shape), dialect)


def compile_query(
    query: ArtifactQuery, dialect: Dialect, store_id: int
) -> tuple[CompiledSelect, dict[str, Any]]:
    """Return the compiled ``SELECT`` answering ``query`` and its parameters.

    Like :func:`build_select`, compiled once per query shape and dialect. Its rows are the
    artifact columns (:func:`artifact_columns`): turn them into artifacts with
    :func:`artifacts_from_rows`.
    """
    shape, params = _shape(query, dialect.name, store_id)
    return _compiled_query(dialect, shape), params


def fetch_artifacts(conn: Connection, query: ArtifactQuery, store_id: int) -> list[Artifact]:
    """Run ``query`` on ``conn`` and return the store's matching artifacts in order."""
    if query.limit == 0:
        return []
    stmt, params = build_select(query, conn.dialect.name, store_id)
    return artifacts_from_rows(conn.execute(stmt, params).all())


def _as_utc(value: Any) -> datetime:
    """Return a column's datetime (SQLite's naive UTC text, or a datetime) as aware UTC."""
    when: datetime = _fromisoformat(value) if value.__class__ is str else value
    if when.tzinfo is None:
        return when.replace(tzinfo=_UTC)
    if when.tzinfo is _UTC:
        return when
    return when.astimezone(_UTC)


def artifacts_from_rows(rows: Iterable[Sequence[Any]]) -> list[Artifact]:
    """Build artifacts from rows of the artifact columns, without validating them again.

    The rows may come from the driver (SQLite: JSON and datetimes as text; PostgreSQL: decoded
    JSON, aware datetimes) or from SQLAlchemy (datetimes processed). Converting rows is most of
    the time of a query returning many of them, hence one unrolled loop.

    Parameters
    ----------
    rows : iterable of sequences
        Values in :data:`ARTIFACT_FIELDS` order (:func:`artifact_columns`).

    Returns
    -------
    list of Artifact
    """
    loads = _json_loads
    as_utc = _as_utc
    from_text = _fromisoformat
    utc = _UTC
    new = _new
    set_dict, set_fields_set = _set_dict, _set_fields_set
    set_extra, set_private = _set_extra, _set_private
    fields_set = _FIELDS_SET
    # rows written by one environment share their versions: decoded once, copied per artifact
    versions_seen: dict[str, dict[str, Any]] = {}
    artifacts: list[Artifact] = []
    append = artifacts.append
    for (
        key,
        serializer,
        load_kwargs,
        dump_kwargs,
        metadata,
        created_at,
        size_bytes,
        checksum,
        fingerprint,
        expires_at,
        versions,
    ) in rows:
        if load_kwargs.__class__ is str:
            load_kwargs = loads(load_kwargs)
        if dump_kwargs.__class__ is str:
            dump_kwargs = loads(dump_kwargs)
        if metadata.__class__ is str:
            metadata = loads(metadata)
        if versions.__class__ is str:
            decoded = versions_seen.get(versions)
            if decoded is None:
                decoded = versions_seen[versions] = loads(versions)
            versions = None if decoded is None else dict(decoded)
        # SQLite's text is naive UTC: parsing it with its offset is 10x faster than .replace()
        if created_at.__class__ is str:
            try:
                created_at = from_text(created_at + "+00:00")
            except ValueError:
                created_at = as_utc(created_at)
        elif created_at.tzinfo is not utc:
            created_at = as_utc(created_at)
        if expires_at is None:
            pass
        elif expires_at.__class__ is str:
            try:
                expires_at = from_text(expires_at + "+00:00")
            except ValueError:
                expires_at = as_utc(expires_at)
        elif expires_at.tzinfo is not utc:
            expires_at = as_utc(expires_at)
        artifact = new(Artifact)
        # what Artifact.model_construct does, at a quarter of its cost
        set_dict(
            artifact,
            {
                "key": key,
                "serializer": serializer,
                "load_kwargs": {} if load_kwargs is None else load_kwargs,
                "dump_kwargs": {} if dump_kwargs is None else dump_kwargs,
                "additional_metadata": {} if metadata is None else metadata,
                "created_at": created_at,
                "size_bytes": size_bytes,
                "checksum": checksum,
                "fingerprint": fingerprint,
                "expires_at": expires_at,
                "versions": {} if versions is None else versions,
            },
        )
        set_fields_set(artifact, set(fields_set))
        set_extra(artifact, None)
        set_private(artifact, None)
        append(artifact)
    return artifacts


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
