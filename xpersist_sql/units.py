"""Durations and sizes: the one place where xpersist_sql reads and writes them.

Every duration (``ttl``, ``gc --older-than``...) goes through :func:`parse_duration` or
:func:`parse_ttl`, every size (``max_size``, ``evict --max-size``...) through :func:`parse_size`,
and every size shown to a person through :func:`format_size`.

Examples
--------
>>> parse_duration("12h")
datetime.timedelta(seconds=43200)
>>> parse_size("50GB")
50000000000
>>> format_size(1_500_000)
'1.5 MB'
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = ["format_size", "parse_duration", "parse_size", "parse_ttl"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB")

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)$", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_MAX_DAYS = timedelta.max.days
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ISO_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_DURATION_FORMS = (
    "write seconds ('30'), a number with a unit s, m, h, d or w ('30s', '30m', '12h', '7d', "
    "'2w') or an ISO-8601 duration ('P7D', 'PT12H', 'P1W')"
)


# -- sizes -----------------------------------------------------------------------------------------
def parse_size(value: int | str, *, allow_zero: bool = False) -> int:
    """Return a size in bytes from an int or a string such as ``"50GB"``, ``"500 MiB"``.

    Units: ``B``, ``KB``/``MB``/``GB``/``TB``/``PB`` (powers of 1000, also written ``K``, ``M``,
    ...) and ``KiB``/``MiB``/``GiB``/``TiB``/``PiB`` (powers of 1024), case-insensitive, with an
    optional space after the number. A fraction of a byte is dropped.

    Parameters
    ----------
    value : int or str
        A number of bytes, or a string with a number and an optional unit.
    allow_zero : bool
        Accept a size of 0 (e.g. evicting down to nothing).

    Returns
    -------
    int
        The size in bytes (positive; or 0 with ``allow_zero``).

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a str (a bool or a float is refused).
    ValueError
        If the string is not a size, or the size is not positive.

    Examples
    --------
    >>> parse_size("50GB")
    50000000000
    >>> parse_size("1.5 KiB")
    1536
    >>> parse_size(4096)
    4096
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"a size must be an int (bytes) or a str like '50GB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(
                f"cannot read {value!r} as a size; write a number of bytes or a number with a "
                "unit: '500MB', '50GB', '2TiB'"
            )
        number, prefix, binary, _ = match.groups()
        base = 1024 if binary else 1000
        size = int(float(number) * base ** _POWERS[prefix.lower()])
    if size < 0 or (size == 0 and not allow_zero):
        raise ValueError(
            f"a size must be {'0 or more' if allow_zero else 'positive'}, got {value!r}"
        )
    return size


def format_size(size: int | float) -> str:
    """Return a human-readable size with a decimal unit: ``B``, ``kB``, ``MB``, ``GB``, ``TB``.

    Bytes are shown whole, larger units with one decimal. A value that would round to ``1000.0``
    of a unit is shown in the next one (``"1.0 MB"``, not ``"1000.0 kB"``).

    Parameters
    ----------
    size : int or float
        A number of bytes.

    Returns
    -------
    str
        For example ``"512 B"``, ``"1.5 kB"``, ``"2.0 MB"``.

    Examples
    --------
    >>> format_size(512)
    '512 B'
    >>> format_size(1500)
    '1.5 kB'
    >>> format_size(2_000_000)
    '2.0 MB'
    >>> format_size(999_999)
    '1.0 MB'
    """
    value = float(size)
    for unit in _SIZE_UNITS:
        if unit == "B":
            if abs(value) < 1000:
                return f"{int(value)} B"
        elif abs(round(value, 1)) < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


# -- durations -------------------------------------------------------------------------------------
def _from_seconds(seconds: float, value: object) -> timedelta:
    """Return ``timedelta(seconds=seconds)``, refusing NaN, infinity and overflow clearly."""
    too_large = f"the duration {value!r} is too large: a duration is at most {_MAX_DAYS} days"
    if math.isnan(seconds) or (math.isinf(seconds) and not isinstance(value, str)):
        raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
    if math.isinf(seconds):  # digits beyond a float's range
        raise ValueError(too_large)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(too_large) from None


def _signed_duration(value: timedelta | int | float | str) -> timedelta:
    """Return ``value`` as a timedelta that may be negative (see :func:`parse_duration`)."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float, str)):
        raise TypeError(
            f"a duration must be a timedelta, seconds or a str like '12h', not {value!r}"
        )
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        return _from_seconds(value, value)
    text = value.strip()
    sign = 1
    if text[:1] in ("+", "-"):
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    match = _DURATION.match(text)
    if match is not None:
        seconds = float(match[1]) * _SECONDS[match[2].lower()]
    else:
        iso = _ISO_DURATION.match(text)
        if iso is None:
            raise ValueError(f"cannot read {value!r} as a duration; {_DURATION_FORMS}")
        parts = iso.groupdict().items()
        seconds = sum(float(number) * _ISO_SECONDS[name] for name, number in parts if number)
    return _from_seconds(sign * seconds, value)


def parse_duration(value: timedelta | int | float | str) -> timedelta:
    """Return a non-negative duration from a timedelta, a number of seconds or a string.

    Strings are read case-insensitively, surrounding spaces ignored:

    - a bare number of seconds: ``"30"``, ``"1.5"``;
    - a number and a unit, with an optional space: ``"30s"``, ``"30m"``, ``"12h"``, ``"7d"``,
      ``"2w"``, ``"1.5 h"`` (``m`` is minutes);
    - an ISO-8601 duration: ``"P7D"``, ``"PT12H"``, ``"P1W"``, ``"P1DT2H30M"``.

    Parameters
    ----------
    value : timedelta, int, float or str
        The duration.

    Returns
    -------
    timedelta
        Zero or more.

    Raises
    ------
    TypeError
        If ``value`` is of another type (a bool is refused).
    ValueError
        If the string is not a duration (the message lists the forms above), the duration is
        negative, not finite (NaN, infinity) or larger than a timedelta can hold.

    Examples
    --------
    >>> parse_duration("12h")
    datetime.timedelta(seconds=43200)
    >>> parse_duration("30")
    datetime.timedelta(seconds=30)
    >>> parse_duration("P1W") == parse_duration("7d")
    True
    >>> parse_duration(1.5)
    datetime.timedelta(seconds=1, microseconds=500000)
    """
    delta = _signed_duration(value)
    if delta < timedelta(0):
        raise ValueError(f"a duration must not be negative, got {value!r}")
    return delta


def parse_ttl(value: timedelta | int | float | str | None) -> timedelta | None:
    """Return a time-to-live: ``None`` (never expires) or a positive duration.

    Parameters
    ----------
    value : timedelta, int, float, str or None
        ``None``, or any duration :func:`parse_duration` reads.

    Returns
    -------
    timedelta or None
        ``None`` for ``None``, else a duration greater than zero.

    Raises
    ------
    TypeError
        If ``value`` is of another type.
    ValueError
        If it is not a duration, or is zero or negative.

    Examples
    --------
    >>> parse_ttl("7d")
    datetime.timedelta(days=7)
    >>> parse_ttl(None) is None
    True
    """
    if value is None:
        return None
    delta = _signed_duration(value)
    if delta <= timedelta(0):
        raise ValueError(f"ttl must be positive, got {value!r}")
    return delta
