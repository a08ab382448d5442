"""Parameter values: how a task's arguments are recorded with its artifact, and matched.

``additional_metadata["parameters"]`` lists a task's parameter *names* (the 2021 contract);
their *values* are recorded under ``additional_metadata["parameter_values"]``
(:data:`PARAMETER_VALUES`), a dict of name to JSON value built by :func:`parameter_record`:

- a value that JSON gives back as it is (numbers, strings, booleans, None, lists and dicts of
  them; numpy scalars, datetimes and tuples converted as :mod:`xpersist_sql.metadata` converts
  metadata) is recorded as it is, if its canonical JSON text is at most ``max_bytes`` long;
- a longer one, or one that is not JSON (an array, a dataset), is recorded by its hash:
  ``{"__hash__": "<hex>"}`` (:func:`xpersist_sql.provenance.hash_value`: deterministic, and a
  value loaded from the store hashes as that artifact's identity);
- a value that cannot even be hashed deterministically is recorded as
  ``{"__unhashable__": "<type name>"}``.

The index keeps one row per (artifact, parameter) holding :func:`parameter_index_text` of the
value, so ``store.query(parameters={"member": 2})`` is one index lookup. Equality is on JSON
values, with numbers compared as numbers: ``2`` matches a recorded ``2`` or ``2.0``, but not
``"2"`` (a string) nor ``True`` (a boolean); lists compare item by item, dicts whatever their key
order. A query value goes through :func:`parameter_record` too, so querying with a large value
(or an array) matches the hash it was recorded as.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import InputsHashError, MissingDependencyError
from .metadata import check_json_value
from .provenance import hash_value

__all__ = [
    "DEFAULT_MAX_BYTES",
    "HASH_FIELD",
    "PARAMETER_VALUES",
    "UNHASHABLE_FIELD",
    "canonical_json",
    "parameter_index_text",
    "parameter_record",
    "parameter_value",
]

#: The ``additional_metadata`` name holding the recorded parameter values.
PARAMETER_VALUES = "parameter_values"
#: Values whose canonical JSON is longer than this (in UTF-8 bytes) are recorded by their hash.
DEFAULT_MAX_BYTES = 1024
#: The field of the dict standing for a value recorded by its hash.
HASH_FIELD = "__hash__"
#: The field of the dict standing for a value that could not be hashed (its type name).
UNHASHABLE_FIELD = "__unhashable__"
#: Integral floats up to this magnitude are written as integers (exact in a double).
_EXACT_INTEGERS = 2**53


def _normalized(value: Any) -> Any:
    """Return ``value`` with integral floats as ints (so ``2.0`` and ``2`` read the same)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INTEGERS:
        return int(value)
    if isinstance(value, dict):
        return {name: _normalized(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of a JSON value: sorted keys, no spaces, ``2.0`` as ``2``.

    Parameters
    ----------
    value : object
        A JSON value (as :func:`xpersist_sql.metadata.check_json_value` returns it).

    Returns
    -------
    str

    Examples
    --------
    >>> canonical_json({"b": [1.0, "x"], "a": None})
    '{"a":null,"b":[1,"x"]}'
    """
    return json.dumps(_normalized(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _hashed(value: Any, name: str) -> dict[str, str]:
    try:
        return {HASH_FIELD: hash_value(value, name)}
    except (InputsHashError, MissingDependencyError, RecursionError):
        return {UNHASHABLE_FIELD: _type_name(value)}


def parameter_value(value: Any, name: str = "value", max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Return how one parameter value is recorded (see :func:`parameter_record`).

    Parameters
    ----------
    value : object
        The value.
    name : str
        The parameter's name (for the hasher's messages).
    max_bytes : int
        The largest canonical JSON text (UTF-8 bytes) recorded as it is.

    Returns
    -------
    object
        The JSON value, or ``{"__hash__": "<hex>"}``, or ``{"__unhashable__": "<type>"}``.
    """
    try:
        converted = check_json_value(value, name)
    except (TypeError, ValueError):
        return _hashed(value, name)
    if len(canonical_json(converted).encode("utf-8")) > max_bytes:
        return _hashed(converted, name)
    return converted


def parameter_record(
    values: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, Any]:
    """Return the ``parameter_values`` to record for a task's bound arguments.

    Parameters
    ----------
    values : mapping of str to object
        Parameter name to value.
    max_bytes : int
        A value whose canonical JSON text is longer than this many UTF-8 bytes (default 1024)
        is recorded by its hash, as is a value that is not JSON.

    Returns
    -------
    dict
        Name to JSON value, ``{"__hash__": "<hex>"}`` or ``{"__unhashable__": "<type>"}``.

    Raises
    ------
    ValueError
        If ``max_bytes`` is negative.

    Examples
    --------
    >>> parameter_record({"member": 2, "region": "europe"})
    {'member': 2, 'region': 'europe'}
    >>> sorted(parameter_record({"big": list(range(1000))})["big"])
    ['__hash__']
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    return {
        str(name): parameter_value(value, str(name), max_bytes) for name, value in values.items()
    }


def parameter_index_text(value: Any) -> str:
    """Return the text a recorded parameter value is indexed (and looked up) by.

    The canonical JSON of the value (:func:`canonical_json`); the index shortens a long one with
    :func:`~xpersist_sql.db.tables.index_text`.
    """
    return canonical_json(value)
