"""What the commands of ``xpersist-sql`` share: options, opening the store, errors, output.

Nothing here registers a command; the command modules import from here and from
:mod:`._app` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import json
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from alembic.util.exc import CommandError
from fsspec.utils import get_protocol
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from .. import Artifact, CacheStore, XpersistSQLError
from ..query import parse_time
from ..units import format_size, parse_duration

__all__ = [
    "DATABASE_URL_ENV",
    "EXIT_ERROR",
    "EXIT_PROBLEMS",
    "MAX_COUNT",
    "STORE_ENV",
    "WHEN_FORMS",
    "DbOpt",
    "ExpiredOpt",
    "JsonOpt",
    "QueryFilters",
    "StoreOpt",
    "StoreOptions",
    "artifact_table",
    "confirm",
    "local_path",
    "open_store",
    "option_groups",
    "parse_count",
    "parse_when",
    "print_error",
    "print_json",
    "print_table",
    "progress_bar",
    "size",
    "stderr",
    "stdout",
    "table",
    "user_errors",
    "when",
]

STORE_ENV = "XPERSIST_SQL_STORE"
DATABASE_URL_ENV = "XPERSIST_SQL_DATABASE_URL"

#: Exit status of a command that ran and found problems (verify, import-legacy --strict).
EXIT_PROBLEMS = 1
#: Exit status of a usage or runtime error (also click's own for bad options).
EXIT_ERROR = 2

# -- shared options --------------------------------------------------------------------------
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        metavar="ROOT",
        help="Store root: a directory or an fsspec URL [default: the user cache directory, "
        "~/.cache/xpersist_sql on Linux].",
        show_default=False,
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=DATABASE_URL_ENV,
        metavar="URL",
        help="SQLAlchemy URL of the index [default: the store's embedded SQLite file].",
        show_default=False,
    ),
]
ExpiredOpt = Annotated[
    bool, typer.Option("--include-expired", help="Also show artifacts whose ttl has passed.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# -- option groups ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """``--store`` and ``--db``: the store a command works on and its index."""

    store: StoreOpt = None
    db: DbOpt = None

    def open(self, *, readonly: bool) -> contextlib.AbstractContextManager[CacheStore]:
        """Open the selected store (never creating one) with :func:`open_store`."""
        return open_store(self.store, self.db, readonly=readonly)


@dataclasses.dataclass(frozen=True)
class QueryFilters:
    """The filter options of ``ls``, ``stats`` and ``rm``, as typed on the command line."""

    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="GLOB", help="Glob on the key (* and ?).", show_default=False
        ),
    ] = None
    flow: Annotated[
        str | None, typer.Option("--flow", "--flow-name", metavar="NAME", help="Flow name.")
    ] = None
    task: Annotated[
        str | None, typer.Option("--task", "--task-name", metavar="NAME", help="Task name.")
    ] = None
    flow_run_id: Annotated[
        str | None, typer.Option("--flow-run-id", metavar="ID", help="Prefect flow run id.")
    ] = None
    task_run_id: Annotated[
        str | None, typer.Option("--task-run-id", metavar="ID", help="Prefect task run id.")
    ] = None
    serializer: Annotated[
        str | None, typer.Option("--serializer", metavar="NAME", help="Serializer name.")
    ] = None
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            metavar="TAG",
            help="A tag the artifact has (repeat: all of them).",
            show_default=False,
        ),
    ] = None
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            metavar="NAME=VALUE",
            help="NAME=VALUE equality on additional_metadata (VALUE read as JSON if it is a JSON "
            "number, true, false or null, else as text; repeat for several).",
            show_default=False,
        ),
    ] = None
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="NAME=VALUE equality on a recorded parameter value (VALUE read as JSON if it "
            "is JSON, such as 2, true, null, [1,2] or quoted text, else as text; numbers "
            "compare as numbers; repeat for several).",
            show_default=False,
        ),
    ] = None
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Created at or after: ISO date/time (UTC unless an offset is given) or a "
            "duration ago (7d, 12h, 30m, 2w, P7D).",
        ),
    ] = None
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="WHEN", help="Created before (same forms as --since)."),
    ] = None
    include_expired: ExpiredOpt = False

    def query(self) -> dict[str, Any]:
        """Return the keyword filters of ``CacheStore.query`` (and ``summarize``).

        ``--since``/``--until`` are read here (against one "now"), ``--meta`` values as JSON
        numbers, booleans or null when they are one, ``--param`` values as JSON when they are
        JSON (else as text), so that a bad value is reported in the command line's words.

        Raises
        ------
        ValueError
            If a ``--meta`` option is not ``NAME=VALUE`` or its number is out of range, or
            ``--since``/``--until`` is not a date, a time or a duration (or ``--since`` is
            after ``--until``).
        """
        now = datetime.now(timezone.utc)
        since = None if self.since is None else parse_when("--since", self.since, now=now)
        until = None if self.until is None else parse_when("--until", self.until, now=now)
        if since is not None and until is not None and since > until:
            raise ValueError(
                f"--since {self.since!r} ({since:%Y-%m-%d %H:%M:%S} UTC) is after --until "
                f"{self.until!r} ({until:%Y-%m-%d %H:%M:%S} UTC): no artifact can match"
            )
        return {
            "key": self.key,
            "flow_name": self.flow,
            "task_name": self.task,
            "flow_run_id": self.flow_run_id,
            "task_run_id": self.task_run_id,
            "serializer": self.serializer,
            "tags": self.tag or None,
            "metadata": _meta(self.meta),
            "parameters": _params(self.param),
            "since": since,
            "until": until,
            "include_expired": self.include_expired,
        }

    def any(self) -> bool:
        """Return whether any filter is set (``--include-expired`` included)."""
        values = (getattr(self, field.name) for field in dataclasses.fields(self))
        return any(value not in (None, False, []) for value in values)


#: What ``--since`` and ``--until`` accept, said in their error messages.
WHEN_FORMS = (
    "give an ISO date or time (2021-12-16, 2021-12-16T08:00, 2021-12-16T08:00+01:00; UTC "
    "unless an offset is given) or a duration ago (30m, 12h, 7d, 2w, P7D, PT12H, or seconds: 30)"
)
# a number with a unit, or an ISO-8601 duration: text meant as a duration
_DURATION_SHAPE = re.compile(
    r"\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*[a-z]*\s*|\s*[+-]?p[0-9.tywdhms]*\s*", re.I
)
_DATE_SHAPE = re.compile(r"\s*\d{4}-\d")


def parse_when(option: str, text: str, *, now: datetime) -> datetime:
    """Return the moment ``text`` means for ``option`` (``--since``/``--until``), in UTC.

    Raises
    ------
    ValueError
        Naming the option and the accepted forms, if ``text`` is not a date, a time or a
        duration, is a negative duration, or reaches before the year 1.
    """
    try:
        return parse_time(text, name=option, now=now)
    except ValueError:
        pass
    if _DATE_SHAPE.match(text):
        try:
            datetime.fromisoformat(text.strip())
        except ValueError as exc:
            raise ValueError(f"{option} {text!r} is not a valid date or time ({exc})") from None
    try:
        parse_duration(text)
    except ValueError as exc:
        if not _DURATION_SHAPE.fullmatch(text):
            raise ValueError(
                f"{option} {text!r} is not a date, a time or a duration; {WHEN_FORMS}"
            ) from None
        if text.strip().startswith("-"):
            raise ValueError(
                f"{option} {text!r} is a negative duration: a duration means that long ago, so "
                "give a positive one (or a date for a moment in the future)"
            ) from None
        raise ValueError(f"{option} {text!r}: {exc}") from None
    raise ValueError(
        f"{option} {text!r} reaches back before the year 1; give a shorter duration or a date"
    )


#: The largest ``--limit`` (a 64-bit SQL integer).
MAX_COUNT = 2**63 - 1


def parse_count(option: str, text: str) -> int:
    """Return ``text`` as a whole number from 0 to :data:`MAX_COUNT` (``--limit``).

    Raises
    ------
    ValueError
        Naming the option and the range.
    """
    expected = f"give a whole number from 0 to {MAX_COUNT}"
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a whole number; {expected}") from None
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{option} {text} is out of range; {expected}")
    return value


#: Integers a metadata value can hold (JSON numbers kept as 64-bit integers).
_INT64 = (-(2**63), 2**63 - 1)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON numbers: read as text


def _meta(pairs: list[str] | None) -> dict[str, str | int | float | bool | None] | None:
    if not pairs:
        return None
    result: dict[str, str | int | float | bool | None] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--meta {pair!r} is not NAME=VALUE")
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"--meta {pair!r}: {text} is beyond the range of a number, so no metadata value "
                f"equals it (to match the text, quote it: --meta '{name}=\"{text}\"')"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = _INT64
            if not low <= value <= high:
                raise ValueError(
                    f"--meta {pair!r}: {text} is beyond 64-bit integers ({low} to {high}), "
                    f"so no metadata value equals it (to match the text, quote it: "
                    f"--meta '{name}=\"{text}\"')"
                )
        result[name] = value if value is None or isinstance(value, (int, float, bool)) else text
    return result


def _params(pairs: list[str] | None) -> dict[str, Any] | None:
    """Read ``--param NAME=VALUE`` options: VALUE as JSON, else as text."""
    if not pairs:
        return None
    result: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair!r} is not NAME=VALUE")
        try:
            result[name] = json.loads(text, parse_constant=_refuse_constant)
        except ValueError:
            result[name] = text
    return result


_GROUPS: tuple[type, ...] = (StoreOptions, QueryFilters)


def option_groups(
    *, omit: Collection[str] = ()
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn each option-group parameter of a command into the group's options.

    A parameter annotated with :class:`StoreOptions` or :class:`QueryFilters` stands, in the
    command's signature as typer sees it, for the group's fields as options, in their order and
    at its place; the command receives one instance built from them. The fields in ``omit`` are
    not offered and keep their defaults. A field the command declares as a parameter of its own
    keeps the place the command gives it in ``--help``, and reaches both the command and the
    group (``ls`` lists ``--include-expired`` after ``--limit`` and ``--oldest``).
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True).parameters
        groups: dict[str, type] = {}
        params: list[inspect.Parameter] = []
        for param in own.values():
            if param.annotation not in _GROUPS:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            groups[param.name] = param.annotation
            hints = typing.get_type_hints(param.annotation, include_extras=True)
            params.extend(
                inspect.Parameter(
                    field.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=field.default,
                    annotation=hints[field.name],
                )
                for field in dataclasses.fields(param.annotation)
                if field.name not in omit and field.name not in own
            )

        @functools.wraps(command)
        def run(**options: Any) -> None:
            for name, group in groups.items():
                fields = [field.name for field in dataclasses.fields(group)]
                options[name] = group(
                    **{field: options[field] for field in fields if field in options}
                )
            command(**{name: value for name, value in options.items() if name in own})

        signature = inspect.Signature(params, return_annotation=None)
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {param.name: param.annotation for param in params}
        return run

    return decorate


# -- the store and errors --------------------------------------------------------------------
def local_path(path: str) -> str | None:
    """Return ``path`` as an absolute local path, or None if it is a remote (fsspec) URL."""
    if get_protocol(path) not in ("file", "local"):
        return None
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


@contextlib.contextmanager
def open_store(
    store: str | None, db: str | None, *, readonly: bool, create: bool = False
) -> Iterator[CacheStore]:
    """Open the store the ``--store``/``--db`` options select, and close it afterwards.

    Every command opens its store here. Only ``import-legacy`` passes ``create=True``: any other
    command on a path that is not a store fails with
    :class:`~xpersist_sql.StoreNotFoundError` instead of creating one.

    Parameters
    ----------
    store : str or None
        ``--store`` (None: the default store).
    db : str or None
        ``--db`` (None: ``$XPERSIST_SQL_DATABASE_URL`` or the store's embedded index).
    readonly : bool
        Open the store read-only (listing, ``--dry-run``).
    create : bool
        Create the store if there is none at the path.

    Yields
    ------
    CacheStore
        The store, closed when the block ends.
    """
    opened = CacheStore(store, database_url=db, readonly=readonly, create=create)
    try:
        yield opened
    finally:
        opened.close()


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr, on one line (no markup, never folded)."""
    stderr().print(f"error: {message}", markup=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    print_error(message)
    return typer.Exit(EXIT_ERROR)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors of a command into one line on stderr and exit status 2.

    Covers the package's errors (a path that is not a store, a missing key, an index at another
    schema revision...), bad option values (``ValueError``, ``TypeError``, ``OverflowError``),
    filesystem errors, Alembic's errors and database errors (their first line only: the rest is
    SQL).
    """
    try:
        yield
    except (
        XpersistSQLError,
        ValueError,
        TypeError,
        OverflowError,
        OSError,
        CommandError,
    ) as exc:
        message = str(exc) or type(exc).__name__
        raise _fail(message.splitlines()[0]) from None
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(f"database: {first}") from None


# -- output ----------------------------------------------------------------------------------
def stdout() -> Console:
    """Return a console on stdout; piped output (scripts, grep) is never folded."""
    width = None if sys.stdout.isatty() else 100_000
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=width)


def print_table(renderable: RenderableType) -> None:
    """Print a table on stdout: fitted to the terminal, or piped at its natural width.

    Piped (a file, ``grep``, ``less``), nothing is folded, no style is written and no line
    carries the padding of its columns: each ends with its last character.
    """
    if sys.stdout.isatty():
        Console(file=sys.stdout, highlight=False).print(renderable)
        return
    buffer = io.StringIO()
    Console(file=buffer, highlight=False, width=100_000, color_system=None).print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def stderr() -> Console:
    """Return a console on stderr (messages, prompts, progress bars)."""
    return Console(file=sys.stderr, highlight=False)


def confirm(question: str) -> bool:
    """Ask ``question`` on stderr; only an explicit yes answers True."""
    return typer.confirm(question, default=False, err=True)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def size(value: int | None) -> str:
    """Return a size for a table: ``units.format_size``, or ``-`` when unknown."""
    return "-" if value is None else format_size(value)


def when(moment: datetime | None) -> str:
    """Return a UTC timestamp for a table, to the second (``-`` when unknown)."""
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def table(*columns: str) -> Table:
    """Return an unboxed table with these column headers (``SIZE`` right-aligned)."""
    result = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        result.add_column(name, overflow="fold", justify="right" if name == "SIZE" else "left")
    return result


def _tags(artifact: Artifact) -> str:
    meta = artifact.additional_metadata
    found: list[str] = []
    for field in ("task_tags", "tags"):
        value = meta.get(field)
        if isinstance(value, list):
            found.extend(str(tag) for tag in value if str(tag) not in found)
    return ", ".join(found)


def artifact_table(artifacts: list[Artifact]) -> Table:
    """Return the table ``ls`` prints: key, flow, task, serializer, size, creation, tags."""
    result = Table(box=None, header_style="bold", pad_edge=False)
    longest = max((len(artifact.key) for artifact in artifacts), default=3)
    result.add_column("KEY", overflow="fold", min_width=min(longest, 60))
    for name in ("FLOW", "TASK", "SERIALIZER"):
        result.add_column(name, overflow="fold")
    result.add_column("SIZE", justify="right", no_wrap=True)
    result.add_column("CREATED (UTC)", no_wrap=True)
    result.add_column("TAGS", overflow="fold")
    for artifact in artifacts:
        meta = artifact.additional_metadata
        result.add_row(
            artifact.key,
            str(meta.get("flow_name") or ""),
            str(meta.get("task_name") or ""),
            artifact.serializer,
            size(artifact.size_bytes),
            when(artifact.created_at),
            _tags(artifact),
        )
    return result


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(phase, done, total)`` callback drawing one bar per phase on a terminal.

    The bars are transient and drawn only when ``console`` is a terminal.
    """
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total or None)
            bar.update(tasks[phase], completed=done, total=total or None)

        yield update
