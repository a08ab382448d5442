"""Metadata that round-trips: what ``put`` records must read back the same from every index.

``additional_metadata``, ``load_kwargs`` and ``dump_kwargs`` are stored as JSON in the index
(SQLite and PostgreSQL alike) and ``load_kwargs`` are given back to the serializer on every
load, so a value that JSON would change, or that one database stores and the other refuses,
is refused at ``put`` with a :class:`ValueError` naming the field. A few types are converted
explicitly, always the same way:

- ``datetime`` (``pandas.Timestamp`` too), ``date`` and ``time``: their ISO 8601 text, UTC
  written ``Z`` (``"2024-05-01T12:30:00Z"``);
- ``numpy.datetime64``: its ISO 8601 text;
- numpy scalars (``np.int64(3)``, ``np.float32(0.5)``, ``np.bool_(True)``): the Python number
  or bool (``.item()``);
- ``numpy.dtype`` and numpy scalar types: the dtype's name (``"float32"``);
- ``uuid.UUID`` (Prefect's run ids): its canonical text;
- tuples: lists.

Refused: integers beyond signed 64 bits, NaN and infinities, strings that are not valid
Unicode (a lone surrogate), dict keys that are not strings, and any other object (a class, a
codec instance, a ``Path``...): record its JSON form instead (zarr 3 codecs, for example,
accept ``{"name": "blosc", "configuration": {...}}``).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic_core import to_jsonable_python

__all__ = ["INT64_MAX", "INT64_MIN", "check_json_value", "json_metadata"]

#: Integers in metadata, query filters and limits: what a signed 64-bit column holds.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def json_metadata(value: Mapping[str, Any] | None, field: str, where: str = "") -> dict[str, Any]:
    """Return ``value`` as JSON that reads back unchanged, converting the types listed above.

    Parameters
    ----------
    value : mapping or None
        The metadata (None: empty).
    field : str
        Its name in messages (``"additional_metadata"``, ``"load_kwargs"``...).
    where : str
        A prefix for messages, naming the call (key and store).

    Returns
    -------
    dict
        A new dict of JSON values.

    Raises
    ------
    TypeError
        If ``value`` is not a mapping.
    ValueError
        Naming the field (``additional_metadata['runs'][0]``) of the first value that JSON
        would not give back as it is.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}{field} must be a dict, got {type(value).__name__}")
    converted = _convert(value, field, where)
    assert isinstance(converted, dict)
    return converted


def check_json_value(value: Any, field: str, where: str = "") -> Any:
    """Return ``value`` converted as :func:`json_metadata` converts each of its items."""
    return _convert(value, field, where)


def _refuse(where: str, field: str, value: Any, why: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValueError(f"{where}{field} = {shown} {why}")


def _convert(value: Any, field: str, where: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _refuse(
                where,
                field,
                value,
                f"is out of range: integers in metadata must lie between {INT64_MIN} and "
                f"{INT64_MAX} (signed 64 bits), which every index database stores and compares "
                "exactly; store a larger number as a str",
            )
        return int(value)  # an int subclass (IntEnum...) is recorded as the number
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(
                where,
                field,
                float(value),
                "is not a JSON number: metadata floats must be finite; store it as a str or None",
            )
        return float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse(
                where,
                field,
                value,
                "is not valid Unicode (it holds a lone surrogate), which no index database "
                "stores; decode the text it came from with errors='replace'",
            ) from None
        return str.__str__(value)  # the text of a str subclass (an Enum's value), not its str()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        text: str = to_jsonable_python(value)  # ISO 8601, UTC as "Z": as recorded so far
        return text
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise _refuse(
                    where,
                    f"{field}[{name!r}]",
                    name,
                    f"is a {type(name).__name__} key: JSON object keys are strings, so it "
                    "would read back as another key; use a str key",
                )
            result[_convert(name, f"{field} key", where)] = _convert(
                item, f"{field}[{name!r}]", where
            )
        return result
    if isinstance(value, (list, tuple)):
        return [_convert(item, f"{field}[{i}]", where) for i, item in enumerate(value)]
    numpy_value = _from_numpy(value)
    if numpy_value is not _NOT_NUMPY:
        return _convert(numpy_value, field, where)
    raise _refuse(
        where,
        field,
        value,
        f"is a {type(value).__module__}.{type(value).__qualname__}, not a JSON value (str, "
        "number, bool, None, list, dict; datetimes and numpy scalars are converted): it could "
        "not be given back as it is. Record its JSON form instead (a str, or a dict such as "
        "a zarr codec's {'name': ..., 'configuration': ...})",
    )


_NOT_NUMPY = object()


def _from_numpy(value: Any) -> Any:
    """Return the plain-Python form of a numpy scalar, dtype or scalar type, else a sentinel."""
    if type(value).__module__.split(".")[0] != "numpy" and not (
        isinstance(value, type) and value.__module__ == "numpy"
    ):
        return _NOT_NUMPY  # never imports numpy for a value that is not one of its own
    import numpy as np

    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    return _NOT_NUMPY
