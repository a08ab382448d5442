"""Query filters: parsing and validation of the filters of ``CacheStore.query``.

:func:`parse_query` checks and normalises them into an :class:`ArtifactQuery`;
:mod:`xpersist_sql.db.queries` turns that into one SQL statement answered from an index.
:func:`artifacts_to_frame` makes a pandas DataFrame of query results.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .models import Artifact
from .parameters import parameter_index_text, parameter_value
from .units import parse_duration

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ORDERS",
    "SUMMARY_FIELDS",
    "TEXT_FILTERS",
    "ArtifactQuery",
    "MetadataValue",
    "SummaryRow",
    "TimeBound",
    "artifacts_to_frame",
    "glob_to_regex",
    "parse_query",
    "parse_time",
]

#: Accepted values of ``order``.
ORDERS = ("newest", "oldest")
#: What ``since`` / ``until`` accept.
TimeBound = datetime | date | timedelta | str
#: What a ``metadata`` filter value may be: a JSON scalar.
MetadataValue = str | int | float | bool | None

_FIELDS = tuple(Artifact.model_fields)
#: The text filters that are plain equalities on a column.
TEXT_FILTERS = ("flow_name", "task_name", "flow_run_id", "task_run_id", "serializer")
_PROMOTED = ("flow_name", "task_name", "flow_run_id", "task_run_id")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TIME_HELP = (
    "a datetime (naive means UTC), a date, an ISO-8601 string ('2021-12-16', "
    "'2021-12-16T08:00:00+01:00'), a timedelta meaning that long ago, or a duration string "
    "meaning that long ago ('7d', '12h', '30m', '2w', 'P7D', 'PT12H', or seconds: '30')"
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
    parameters : tuple of (str, str) pairs
        ``(name, canonical JSON of the value)``: the recorded parameter value ``name`` equals
        the value (see :mod:`xpersist_sql.parameters`).
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
    parameters: tuple[tuple[str, str], ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    order: str = "newest"
    include_expired: bool = False
    now: datetime = _EPOCH


# -- parsing -------------------------------------------------------------------------------------
def _ago(now: datetime, delta: timedelta, name: str, value: Any) -> datetime:
    try:
        return now - delta
    except OverflowError:
        raise ValueError(
            f"{name}={value!r} reaches before the year 1; pass a shorter duration or a date"
        ) from None


def parse_time(value: Any, *, name: str = "since", now: datetime | None = None) -> datetime:
    """Return ``value`` as an aware UTC datetime.

    Parameters
    ----------
    value : datetime, date, timedelta or str
        A datetime (naive means UTC), a date (its midnight UTC), a timedelta (that long before
        ``now``), an ISO-8601 date or datetime string, or a duration string such as ``"7d"``,
        ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"``, ISO-8601 ``"P7D"`` or seconds ``"30"``
        (that long before ``now``; see :func:`xpersist_sql.units.parse_duration`).
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
        return _ago(now, value, name, value)
    if isinstance(value, str):
        text = value.strip()
        iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
        try:
            return parse_time(datetime.fromisoformat(iso), name=name, now=now)
        except ValueError:
            pass
        try:
            delta = parse_duration(text)  # the units every duration of the package goes through
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a date or time; pass {_TIME_HELP}") from None
        return _ago(now, delta, name, value)
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
        if item is not None and not isinstance(item, (str, int, float, bool)):
            raise TypeError(
                f"metadata[{name!r}] must be a str, int, float, bool or None (equality on a JSON "
                f"scalar), got {type(item).__name__} {item!r}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"metadata[{name!r}] = {item!r} is not a JSON number")
        pairs.append((name, item))
    return tuple(pairs)


def _parameters(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(
            "parameters must be a dict of parameter name to value, got "
            f"{type(value).__name__} {value!r}"
        )
    pairs: list[tuple[str, str]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter names must be non-empty str, got {name!r}")
        # recorded as parameter_record records it (a large value by its hash): compared so
        pairs.append((name, parameter_index_text(parameter_value(item, name))))
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
    parameters: Mapping[str, Any] | None = None,
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
            TEXT_FILTERS,
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
        parameters=_parameters(parameters),
        since=start,
        until=end,
        limit=limit,
        order=order,
        include_expired=include_expired,
        now=now,
    )


# -- helpers -------------------------------------------------------------------------------------
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Return the regular expression equivalent of a key glob (``*`` and ``?``; ``/`` included).

    Examples
    --------
    >>> bool(glob_to_regex("runs/*.zarr").fullmatch("runs/2024/a.zarr"))
    True
    """
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


#: What :func:`summarize` can group by.
SUMMARY_FIELDS = ("flow_name", "task_name", "serializer")


@dataclass(frozen=True)
class SummaryRow:
    """Totals of the artifacts sharing one value of a field (see :func:`summarize`)."""

    value: str | None
    count: int
    size_bytes: int


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
