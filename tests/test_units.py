"""xpersist_sql.units: parsing and formatting every duration and size."""

from __future__ import annotations

import doctest
from datetime import timedelta

import pytest

from xpersist_sql import units
from xpersist_sql.units import format_size, parse_duration, parse_size, parse_ttl

FORMS = "write seconds ('30'), a number with a unit s, m, h, d or w"


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(units, raise_on_error=False, verbose=False)
    assert result.attempted >= 10
    assert result.failed == 0


def test_public_names() -> None:
    assert sorted(units.__all__) == ["format_size", "parse_duration", "parse_size", "parse_ttl"]


# -- parse_size ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (1234, 1234),
        ("1234", 1234),
        (" 1234 ", 1234),
        ("10b", 10),
        ("10 B", 10),
        ("1k", 1000),
        ("1KB", 1000),
        ("1kb", 1000),
        ("500 mb", 500 * 10**6),
        ("50GB", 50 * 10**9),
        ("3G", 3 * 10**9),
        ("2TB", 2 * 10**12),
        ("1PB", 10**15),
        ("1.5KiB", 1536),
        ("1.5 kib", 1536),
        ("2TiB", 2 * 1024**4),
        ("1Mi", 1024**2),
        (".5kB", 500),
        ("2.kB", 2000),
        ("1.9", 1),  # a fraction of a byte is dropped
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("fifty gigs", ValueError, "cannot read 'fifty gigs' as a size"),
        ("", ValueError, "cannot read '' as a size"),
        ("5 XB", ValueError, "'500MB', '50GB', '2TiB'"),
        ("-5GB", ValueError, "cannot read '-5GB' as a size"),
        ("1e9", ValueError, "cannot read"),
        (0, ValueError, "a size must be positive, got 0"),
        (-1, ValueError, "a size must be positive, got -1"),
        ("0MB", ValueError, "a size must be positive, got '0MB'"),
        ("0.4", ValueError, "must be positive"),  # rounds down to 0 bytes
        (1.5, TypeError, "a size must be an int (bytes) or a str like '50GB', got 1.5"),
        (True, TypeError, "an int (bytes) or a str"),
        (None, TypeError, "an int (bytes) or a str"),
    ],
)
def test_parse_size_errors(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert message in str(info.value)


# -- format_size ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (512, "512 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1500, "1.5 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),  # never "1000.0 kB"
        (999_999, "1.0 MB"),
        (2_000_000, "2.0 MB"),
        (1_500_000, "1.5 MB"),
        (3 * 10**9, "3.0 GB"),
        (2 * 10**12, "2.0 TB"),
        (5 * 10**15, "5000.0 TB"),  # TB is the largest unit
        (1536.7, "1.5 kB"),
        (12.9, "12 B"),
        (-1500, "-1.5 kB"),
    ],
)
def test_format_size(size: int | float, expected: str) -> None:
    assert format_size(size) == expected


def test_format_size_reads_back_close_to_the_size() -> None:
    for size in (1, 999, 1000, 123_456, 7 * 10**9, 10**12 + 1):
        text = format_size(size)
        assert abs(parse_size(text.replace(" ", "")) - size) <= max(1, size * 0.05), text


# -- parse_duration ------------------------------------------------------------------------------
#: Every duration with the forms of it that parse_duration reads.
DURATION_FORMS: list[tuple[timedelta, tuple[timedelta | int | float | str, ...]]] = [
    (timedelta(0), (timedelta(0), 0, "0", "-0")),
    (timedelta(seconds=1.5), (1.5,)),
    (timedelta(seconds=2.5), ("2.5",)),
    (timedelta(seconds=30), ("30", "30s")),
    (timedelta(seconds=45), ("PT45S",)),
    (timedelta(seconds=90), (90,)),
    (timedelta(minutes=1), (timedelta(minutes=1),)),
    (timedelta(minutes=5), ("+5m",)),
    (timedelta(minutes=30), ("30m", "30M", "PT30M", "PT0.5H")),
    (timedelta(minutes=90), ("1.5h",)),
    (timedelta(hours=12), ("12h", "12 h", "  12H  ", ".5d", "PT12H")),
    (timedelta(days=1, hours=2, minutes=30), ("P1DT2H30M",)),
    (timedelta(days=7), ("7d", "P7D", "p7d", "P1W")),
    (timedelta(weeks=2), ("2w",)),
    (timedelta(days=999_999_999), ("P999999999D",)),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(value, expected) for expected, values in DURATION_FORMS for value in values],
)
def test_parse_duration(value: timedelta | int | float | str, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", f"cannot read 'soon' as a duration; {FORMS}"),
        ("", "cannot read '' as a duration"),
        ("12 hours", "cannot read '12 hours' as a duration"),
        ("3 0", "cannot read '3 0'"),
        ("1e3", "cannot read '1e3'"),
        ("P", "cannot read 'P'"),
        ("PT", "cannot read 'PT'"),
        ("P1H", "cannot read 'P1H'"),  # hours belong after the T
        ("7d12h", "cannot read '7d12h'"),
        (-1, "a duration must not be negative, got -1"),
        (-0.5, "must not be negative"),
        ("-5m", "a duration must not be negative, got '-5m'"),
        ("-P7D", "a duration must not be negative, got '-P7D'"),
        (timedelta(seconds=-1), "must not be negative"),
        (float("nan"), "a duration must be a finite number of seconds, got nan"),
        (float("inf"), "a duration must be a finite number of seconds, got inf"),
        (float("-inf"), "finite"),
        (10**20, "the duration 100000000000000000000 is too large: a duration is at most"),
        (1e300, "is too large"),
        ("1000000000d", "the duration '1000000000d' is too large"),
        ("9" * 400, "is too large"),  # beyond a float: infinity
        ("P99999999999W", "is too large"),
    ],
)
def test_parse_duration_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert not isinstance(info.value, OverflowError)


def test_unreadable_durations_name_every_accepted_form() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("a while")
    for form in ("'30'", "'30s'", "'30m'", "'12h'", "'7d'", "'2w'", "'P7D'", "'PT12H'", "'P1W'"):
        assert form in str(info.value)


@pytest.mark.parametrize("value", [True, False, None, [1], b"12h", object()])
def test_parse_duration_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match="a duration must be a timedelta, seconds or a str"):
        parse_duration(value)  # type: ignore[arg-type]


# -- parse_ttl -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("7d", timedelta(days=7)),
        ("PT1H", timedelta(hours=1)),
        (60, timedelta(minutes=1)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_ttl(value: timedelta | int | float | str | None, expected: timedelta | None) -> None:
    assert parse_ttl(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "ttl must be positive, got 0"),
        (0.0, "ttl must be positive, got 0.0"),
        ("0", "ttl must be positive, got '0'"),
        ("P0D", "ttl must be positive, got 'P0D'"),
        (timedelta(0), "ttl must be positive"),
        (-5, "ttl must be positive, got -5"),
        ("-5m", "ttl must be positive, got '-5m'"),
        (timedelta(days=-1), "ttl must be positive"),
        ("forever", "cannot read 'forever' as a duration"),
        (float("nan"), "finite"),
        ("1000000000d", "too large"),
    ],
)
def test_parse_ttl_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ttl(value)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_parse_ttl_type_error() -> None:
    with pytest.raises(TypeError, match="a duration must be"):
        parse_ttl(True)  # type: ignore[arg-type]
