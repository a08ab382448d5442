"""Queries over the index: filter parsing and validation, then one indexed SQL ``SELECT``.

:func:`parse_query` checks and normalises the filters of :meth:`CacheStore.query
<xpersist_sql.CacheStore.query>` into an :class:`ArtifactQuery`; :func:`build_select` turns it
into a SQLAlchemy statement on the tables of :mod:`xpersist_sql.db.tables`, written so that the
database answers it from an index:

- ``flow_name`` / ``task_name`` / ``serializer`` with the time range and the newest-first order
  walk the composite ``(<column>, created_at, id)`` indexes backwards and stop at ``limit``;
- ``flow_run_id`` / ``task_run_id`` use their own indexes, ``since``/``until`` alone the
  ``created_at`` index;
- tags start from the tags table: its ``(tag, created_at, artifact_id)`` index lists the
  artifacts with the first tag newest first (further tags are primary-key lookups);
- a ``key`` without wildcards is an equality on the unique key index; a glob with a literal
  prefix is a range of that index on SQLite (``GLOB``), and on PostgreSQL (``LIKE``) when the
  database's collation is ``C``;
- ``metadata`` is JSONB containment (``@>``) on PostgreSQL and ``json_extract`` on SQLite.

Statements are built once per query shape (which filters are present) with bound parameters.
:func:`fetch_artifacts` runs it and builds the :class:`~xpersist_sql.Artifact` objects without
re-validating what the database returns; :func:`artifacts_to_frame` makes a pandas DataFrame.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Engine,
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

from .db.tables import ARTIFACTS, TAGS, UTCDateTime
from .models import Artifact

if TYPE_CHECKING:
    import pandas as pd

try:  # a dependency of prefect, so normally present; 3x faster than json on small documents
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover
    from json import loads as _json_loads  # type: ignore[assignment]

__all__ = [
    "ORDERS",
    "SUMMARY_FIELDS",
    "ArtifactQuery",
    "MetadataValue",
    "SummaryRow",
    "TimeBound",
    "artifacts_to_frame",
    "build_select",
    "fetch_artifacts",
    "glob_to_regex",
    "parse_query",
    "parse_time",
    "summarize",
]

#: Accepted values of ``order``.
ORDERS = ("newest", "oldest")
#: What ``since`` / ``until`` accept.
TimeBound = datetime | date | timedelta | str
#: What a ``metadata`` filter value may be: a JSON scalar.
MetadataValue = str | int | float | bool | None

_FIELDS = tuple(Artifact.model_fields)
_COLUMNS = tuple(ARTIFACTS.c[name] for name in _FIELDS)
_JSON_FIELDS = frozenset(name for name in _FIELDS if isinstance(ARTIFACTS.c[name].type, JSON))
_new = object.__new__
_setattr = object.__setattr__
_TEXT_FILTERS = ("flow_name", "task_name", "flow_run_id", "task_run_id", "serializer")
_PROMOTED = ("flow_name", "task_name", "flow_run_id", "task_run_id")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TIME_HELP = (
    "a datetime (naive means UTC), a date, an ISO-8601 string ('2021-12-16', "
    "'2021-12-16T08:00:00+01:00'), a timedelta meaning that long ago, or a duration string "
    "meaning that long ago ('7d', '12h', '30m', '2w', 'P7D', 'PT12H')"
)


@dataclass(frozen=True)
class ArtifactQuery:
    """The validated filters of one query (build it with :func:`parse_query`).

    Attributes
    ----------
    key : str or None
        Glob on the key (``*`` any characters, ``?`` one character, ``/`` included).
    flow_name, task_name, flow_run_id, task_run_id, serializer : str or None
        Equality filters.
    tags : tuple of str
        The artifact has every one of these tags.
    metadata : tuple of (str, value) pairs
        ``additional_metadata[name] == value`` for each pair (JSON type-strict: ``1`` does not
        match ``true``, ``1`` matches ``1.0``).
    since, until : datetime or None
        Aware UTC bounds of ``created_at``: ``since`` inclusive, ``until`` exclusive.
    limit : int or None
        At most this many artifacts.
    order : str
        ``"newest"`` (``created_at`` descending) or ``"oldest"``.
    include_expired : bool
        Also return artifacts whose ttl has passed.
    now : datetime
        The moment the query was parsed: reference of durations and of expiry.
    """

    key: str | None = None
    flow_name: str | None = None
    task_name: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    serializer: str | None = None
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, MetadataValue], ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    order: str = "newest"
    include_expired: bool = False
    now: datetime = _EPOCH


# -- parsing -------------------------------------------------------------------------------------
def _parse_duration(text: str) -> timedelta | None:
    match = _DURATION.match(text)
    if match:
        return timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
    match = _ISO_DURATION.match(text)
    if match:
        parts = {name: float(value) for name, value in match.groupdict().items() if value}
        return timedelta(**parts)
    return None


def parse_time(value: Any, *, name: str = "since", now: datetime | None = None) -> datetime:
    """Return ``value`` as an aware UTC datetime.

    Parameters
    ----------
    value : datetime, date, timedelta or str
        A datetime (naive means UTC), a date (its midnight UTC), a timedelta (that long before
        ``now``), an ISO-8601 date or datetime string, or a duration string such as ``"7d"``,
        ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"`` or ISO-8601 ``"P7D"`` (that long before
        ``now``).
    name : str
        The argument's name, for error messages.
    now : datetime, optional
        Reference of durations (default: the current time).

    Raises
    ------
    TypeError
        For a value of another type.
    ValueError
        For an unparseable string or a negative duration.

    Examples
    --------
    >>> parse_time("2021-12-16")
    datetime.datetime(2021, 12, 16, 0, 0, tzinfo=datetime.timezone.utc)
    >>> parse_time("1d", now=datetime(2021, 12, 16, 12, tzinfo=timezone.utc))
    datetime.datetime(2021, 12, 15, 12, 0, tzinfo=datetime.timezone.utc)
    """
    now = now or datetime.now(timezone.utc)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=timezone.utc)
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(
                f"{name}={value!r} is a negative timedelta; a timedelta means that long ago, "
                "so pass a positive one (or a datetime for a moment in the future)"
            )
        return now - value
    if isinstance(value, str):
        text = value.strip()
        delta = _parse_duration(text)
        if delta is not None:
            return now - delta
        iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
        try:
            return parse_time(datetime.fromisoformat(iso), name=name, now=now)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a date or time; pass {_TIME_HELP}") from None
    raise TypeError(f"{name} must be {_TIME_HELP}; got {type(value).__name__} {value!r}")


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID) and name in ("flow_run_id", "task_run_id"):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise TypeError(f"tags must be a list of str, got {type(value).__name__} {value!r}")
    tags: list[str] = []
    for tag in value:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be a list of str; {tag!r} is a {type(tag).__name__}")
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _metadata(value: Any) -> tuple[tuple[str, MetadataValue], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(
            f"metadata must be a dict of field name to value, got {type(value).__name__} {value!r}"
        )
    pairs: list[tuple[str, MetadataValue]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"metadata field names must be non-empty str, got {name!r}")
        if '"' in name:
            raise ValueError(f"metadata field name {name!r} contains '\"', which is not supported")
        if item is not None and not isinstance(item, (str, int, float, bool)):
            raise TypeError(
                f"metadata[{name!r}] must be a str, int, float, bool or None (equality on a JSON "
                f"scalar), got {type(item).__name__} {item!r}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"metadata[{name!r}] = {item!r} is not a JSON number")
        pairs.append((name, item))
    return tuple(pairs)


def parse_query(
    *,
    key: str | None = None,
    flow_name: str | None = None,
    task_name: str | None = None,
    flow_run_id: str | uuid.UUID | None = None,
    task_run_id: str | uuid.UUID | None = None,
    serializer: str | None = None,
    tags: str | Iterable[str] | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    limit: int | None = None,
    order: str = "newest",
    include_expired: bool = False,
    now: datetime | None = None,
) -> ArtifactQuery:
    """Validate the filters of a query.

    The parameters are those of :meth:`CacheStore.query <xpersist_sql.CacheStore.query>`;
    ``now`` fixes the reference moment of durations and expiry (default: the current time).

    Raises
    ------
    TypeError
        A filter of the wrong type.
    ValueError
        A filter value that cannot be used: an unparseable date, a negative limit, an unknown
        order, ``since`` after ``until``...

    Examples
    --------
    >>> parse_query(flow_name="my-flow", limit=10).limit
    10
    """
    now = parse_time(now, name="now") if now is not None else datetime.now(timezone.utc)
    if key is not None:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str glob pattern, got {type(key).__name__} {key!r}")
        if not key:
            raise ValueError("key must not be empty; pass None to match every key, or '*'")
    texts = {
        name: _text(name, value)
        for name, value in zip(
            _TEXT_FILTERS,
            (flow_name, task_name, flow_run_id, task_run_id, serializer),
            strict=True,
        )
    }
    start = None if since is None else parse_time(since, name="since", now=now)
    end = None if until is None else parse_time(until, name="until", now=now)
    if start is not None and end is not None and start > end:
        raise ValueError(
            f"since ({start.isoformat()}) is after until ({end.isoformat()}): no artifact can "
            "match; since is the inclusive start and until the exclusive end"
        )
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__} {limit!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0 (or None for no limit), got {limit}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    if not isinstance(include_expired, bool):
        raise TypeError(f"include_expired must be a bool, got {include_expired!r}")
    return ArtifactQuery(
        key=key,
        flow_name=texts["flow_name"],
        task_name=texts["task_name"],
        flow_run_id=texts["flow_run_id"],
        task_run_id=texts["task_run_id"],
        serializer=texts["serializer"],
        tags=_tags(tags),
        metadata=_metadata(metadata),
        since=start,
        until=end,
        limit=limit,
        order=order,
        include_expired=include_expired,
        now=now,
    )


# -- SQL -----------------------------------------------------------------------------------------
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Return the regular expression equivalent of a key glob (``*`` and ``?``; ``/`` included).

    Examples
    --------
    >>> bool(glob_to_regex("runs/*.zarr").fullmatch("runs/2024/a.zarr"))
    True
    """
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


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
    conditions: list[ColumnElement[bool]] = []
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
    if order == "newest":
        stmt = stmt.order_by(created_at.desc(), ident.desc())
    else:
        stmt = stmt.order_by(created_at.asc(), ident.asc())
    if limit:
        stmt = stmt.limit(bindparam("limit", type_=Integer))
    return stmt


def build_select(query: ArtifactQuery, dialect: str) -> tuple[Select[Any], dict[str, Any]]:
    """Return the ``SELECT`` answering ``query`` on ``dialect`` and its parameters.

    Queries of the same shape (the same filters present) share one statement object, so that
    SQLAlchemy's compiled cache answers without rebuilding it.

    Parameters
    ----------
    query : ArtifactQuery
        Validated filters.
    dialect : str
        ``"sqlite"`` or ``"postgresql"`` (the SQL of ``key`` and ``metadata`` differ).

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
    params: dict[str, Any] = {}
    key_kind = None
    if query.key is not None:
        key_kind, params["key"] = _key_pattern(query.key, dialect)
    texts = tuple(name for name in _TEXT_FILTERS if getattr(query, name) is not None)
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


def fetch_artifacts(conn: Connection, query: ArtifactQuery) -> list[Artifact]:
    """Run ``query`` on ``conn`` and return the matching artifacts in the query's order."""
    if query.limit == 0:
        return []
    stmt, params = build_select(query, conn.dialect.name)
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


#: What :func:`summarize` can group by.
SUMMARY_FIELDS = ("flow_name", "task_name", "serializer")


@dataclass(frozen=True)
class SummaryRow:
    """Totals of the artifacts sharing one value of a field (see :func:`summarize`)."""

    value: str | None
    count: int
    size_bytes: int


def summarize(connectable: Connection | Engine, query: ArtifactQuery, by: str) -> list[SummaryRow]:
    """Count the artifacts matching ``query`` and add up their sizes, per value of ``by``.

    Answered by one ``GROUP BY`` in the database (``limit`` and ``order`` are ignored).

    Parameters
    ----------
    connectable : Connection or Engine
        Where the index is.
    query : ArtifactQuery
        The filters.
    by : {"flow_name", "task_name", "serializer"}
        The field to group by.

    Returns
    -------
    list of SummaryRow
        Largest groups (by count) first.
    """
    if by not in SUMMARY_FIELDS:
        raise ValueError(f"by must be one of {', '.join(map(repr, SUMMARY_FIELDS))}, got {by!r}")
    if isinstance(connectable, Engine):
        with connectable.connect() as conn:
            return summarize(conn, query, by)
    unbounded = dataclasses.replace(query, limit=None)
    stmt, params = build_select(unbounded, connectable.dialect.name)
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
        for value, n, size in connectable.execute(grouped, params)
    ]


def artifacts_to_frame(artifacts: Sequence[Artifact]) -> pd.DataFrame:
    """Return one DataFrame row per artifact, in order.

    The columns are the :class:`~xpersist_sql.Artifact` fields, with ``created_at`` and
    ``expires_at`` as UTC timestamps, plus ``flow_name``, ``task_name``, ``flow_run_id`` and
    ``task_run_id`` taken from ``additional_metadata`` (None when absent).
    """
    import pandas as pd

    columns = [*_FIELDS, *_PROMOTED]
    records = []
    for artifact in artifacts:
        record = dict(artifact)
        meta = artifact.additional_metadata
        for name in _PROMOTED:
            record[name] = meta.get(name)
        records.append(record)
    frame: pd.DataFrame = pd.DataFrame.from_records(records, columns=columns)
    for name in ("created_at", "expires_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    frame["size_bytes"] = frame["size_bytes"].astype("Int64")
    return frame
