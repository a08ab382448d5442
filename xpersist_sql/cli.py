"""The ``xpersist-sql`` command line (also ``python -m xpersist_sql``).

Every command selects its store with ``--store PATH`` (or ``$XPERSIST_SQL_STORE``) and its index
with ``--db URL`` (or ``$XPERSIST_SQL_DATABASE_URL``); a local store without ``--db`` uses its
embedded SQLite index. User errors print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from rich.console import Console
from rich.progress import track
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ._version import __version__
from .db.engine import create_index_engine, redact_url
from .db.schema import alembic_config, current_revision, head_revision, run_alembic
from .errors import XpersistSQLError
from .models import Artifact
from .query import SUMMARY_FIELDS, ArtifactQuery, MetadataValue, parse_query, summarize
from .store import DATABASE_URL_ENV, CacheStore

__all__ = ["app", "main"]

STORE_ENV = "XPERSIST_SQL_STORE"

app = typer.Typer(
    name="xpersist-sql",
    help="Find, inspect and manage the cached results of an xpersist_sql store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="Manage the index schema with the migrations shipped in the package.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app, name="db")

# -- shared options --------------------------------------------------------------------------
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        help="Store root: a directory or an fsspec URL [default: <tempdir>/xpersist_sql].",
        show_default=False,
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=DATABASE_URL_ENV,
        help="SQLAlchemy URL of the index [default: the store's embedded SQLite file].",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="Glob on the key (* and ?).", show_default=False)
]
FlowOpt = Annotated[str | None, typer.Option("--flow", "--flow-name", help="Flow name.")]
TaskOpt = Annotated[str | None, typer.Option("--task", "--task-name", help="Task name.")]
FlowRunOpt = Annotated[str | None, typer.Option("--flow-run-id", help="Prefect flow run id.")]
TaskRunOpt = Annotated[str | None, typer.Option("--task-run-id", help="Prefect task run id.")]
SerializerOpt = Annotated[str | None, typer.Option("--serializer", help="Serializer name.")]
TagOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", help="A tag the artifact has (repeat: all of them).", show_default=False),
]
MetaOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        help="NAME=VALUE equality on additional_metadata (VALUE read as JSON if it is a JSON "
        "number, true, false or null, else as text; repeat for several).",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Created at or after: ISO date/time (UTC unless an offset is given) or a duration "
        "ago (7d, 12h, 30m, 2w, P7D).",
    ),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Created before (same forms as --since).")
]
ExpiredOpt = Annotated[
    bool, typer.Option("--include-expired", help="Also show artifacts whose ttl has passed.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _meta(pairs: list[str] | None) -> dict[str, MetadataValue] | None:
    if not pairs:
        return None
    result: dict[str, MetadataValue] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--meta {pair!r} is not NAME=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        result[name] = value if value is None or isinstance(value, (int, float, bool)) else text
    return result


def _filters(
    *,
    key: str | None = None,
    flow: str | None = None,
    task: str | None = None,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    serializer: str | None = None,
    tag: list[str] | None = None,
    meta: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    include_expired: bool = False,
) -> dict[str, Any]:
    return {
        "key": key,
        "flow_name": flow,
        "task_name": task,
        "flow_run_id": flow_run_id,
        "task_run_id": task_run_id,
        "serializer": serializer,
        "tags": tag or None,
        "metadata": _meta(meta),
        "since": since,
        "until": until,
        "include_expired": include_expired,
    }


def _has_filter(filters: dict[str, Any]) -> bool:
    return any(value not in (None, False) for value in filters.values())


# -- output helpers --------------------------------------------------------------------------
def _stdout() -> Console:
    # piped output (scripts, grep) is never folded to 80 columns
    width = None if sys.stdout.isatty() else 100_000
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=width)


def _stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024**exponent:.1f} {'BKMGT'[exponent]}iB"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _tags(artifact: Artifact) -> str:
    meta = artifact.additional_metadata
    tags: list[str] = []
    for field in ("task_tags", "tags"):
        value = meta.get(field)
        if isinstance(value, list):
            tags.extend(str(tag) for tag in value if str(tag) not in tags)
    return ", ".join(tags)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _artifact_table(artifacts: list[Artifact]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    longest = max((len(artifact.key) for artifact in artifacts), default=3)
    table.add_column("KEY", overflow="fold", min_width=min(longest, 60))
    for name in ("FLOW", "TASK", "SERIALIZER"):
        table.add_column(name, overflow="fold")
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("TAGS", overflow="fold")
    for artifact in artifacts:
        meta = artifact.additional_metadata
        table.add_row(
            artifact.key,
            str(meta.get("flow_name") or ""),
            str(meta.get("task_name") or ""),
            artifact.serializer,
            _size(artifact.size_bytes),
            _when(artifact.created_at),
            _tags(artifact),
        )
    return table


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit status 1."""
    try:
        yield
    except (XpersistSQLError, ValueError, TypeError, OSError, CommandError) as exc:
        message = str(exc) or type(exc).__name__
        _stderr().print(f"error: {message.splitlines()[0]}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        # the first line names the failure; the rest is SQL and a documentation link
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _stderr().print(f"error: database: {first}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _open(store: str | None, db: str | None, *, readonly: bool = True) -> CacheStore:
    return CacheStore(store, database_url=db, readonly=readonly)


# -- ls / query ------------------------------------------------------------------------------
def list_artifacts(
    store: StoreOpt = None,
    db: DbOpt = None,
    key: KeyOpt = None,
    flow: FlowOpt = None,
    task: TaskOpt = None,
    flow_run_id: FlowRunOpt = None,
    task_run_id: TaskRunOpt = None,
    serializer: SerializerOpt = None,
    tag: TagOpt = None,
    meta: MetaOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Show at most this many.")
    ] = None,
    oldest: Annotated[bool, typer.Option("--oldest", help="Oldest first.")] = False,
    include_expired: ExpiredOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the artifacts matching the filters, newest first (all of them without filters)."""
    with _user_errors():
        filters = _filters(
            key=key,
            flow=flow,
            task=task,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            serializer=serializer,
            tag=tag,
            meta=meta,
            since=since,
            until=until,
            include_expired=include_expired,
        )
        opened = _open(store, db)
        try:
            artifacts = opened.query(**filters, limit=limit, order="oldest" if oldest else "newest")
        finally:
            opened.close()
    if as_json:
        _print_json([artifact.model_dump(mode="json") for artifact in artifacts])
        return
    out = _stdout()
    if artifacts:
        out.print(_artifact_table(artifacts))
    noun = "artifact" if len(artifacts) == 1 else "artifacts"
    _stderr().print(f"{len(artifacts)} {noun}")


app.command("ls")(list_artifacts)
app.command("query", help="Same as ls: list the artifacts matching the filters.")(list_artifacts)


# -- show ------------------------------------------------------------------------------------
@app.command("show")
def show(
    key: Annotated[str, typer.Argument(help="The artifact's key.")],
    store: StoreOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show everything recorded about one artifact."""
    with _user_errors():
        opened = _open(store, db)
        try:
            artifact = opened.get_artifact(key)
            location = opened.payload_url(key)
        finally:
            opened.close()
    record = {**artifact.model_dump(mode="json"), "payload": location}
    if as_json:
        _print_json(record)
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in record.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if name == "size_bytes" and isinstance(value, int):
            text = f"{value} ({_size(value)})"
        table.add_row(name, text)
    _stdout().print(table)


# -- rm --------------------------------------------------------------------------------------
@app.command("rm")
def remove(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Keys to delete.", show_default=False)
    ] = None,
    store: StoreOpt = None,
    db: DbOpt = None,
    key: KeyOpt = None,
    flow: FlowOpt = None,
    task: TaskOpt = None,
    flow_run_id: FlowRunOpt = None,
    task_run_id: TaskRunOpt = None,
    serializer: SerializerOpt = None,
    tag: TagOpt = None,
    meta: MetaOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    include_expired: ExpiredOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete by filter without asking.")
    ] = False,
) -> None:
    """Delete artifacts (row, then payload): the KEYS given, or those matching the filters.

    Deleting by filter lists the matches and asks for confirmation (--yes skips it).
    """
    with _user_errors():
        filters = _filters(
            key=key,
            flow=flow,
            task=task,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            serializer=serializer,
            tag=tag,
            meta=meta,
            since=since,
            until=until,
            include_expired=include_expired,
        )
        by_filter = _has_filter(filters)
        if keys and by_filter:
            raise ValueError("give either KEYS or filters to rm, not both")
        if not keys and not by_filter:
            raise ValueError(
                "rm needs KEYS or at least one filter (--key '*' matches every artifact)"
            )
        opened = _open(store, db, readonly=dry_run)
        try:
            _remove(opened, keys or [], filters, by_filter=by_filter, dry_run=dry_run, yes=yes)
        finally:
            opened.close()


def _remove(
    store: CacheStore,
    keys: list[str],
    filters: dict[str, Any],
    *,
    by_filter: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    out, err = _stdout(), _stderr()
    if by_filter:
        matches = store.query(**filters)
        if not matches:
            err.print("no artifact matches the filters")
            return
        keys = [artifact.key for artifact in matches]
        if not dry_run:
            out.print(_artifact_table(matches))
            total = sum(artifact.size_bytes or 0 for artifact in matches)
            question = f"Delete these {len(keys)} artifacts ({_size(total)})?"
            if not yes and not typer.confirm(question, default=False, err=True):
                err.print("nothing deleted")
                raise typer.Exit(1)
    failed = 0
    deleted = 0
    freed = 0
    steps = track(keys, description="deleting", console=err, transient=True, disable=len(keys) < 2)
    for name in steps:
        try:
            artifact = store.delete(name, dry_run=dry_run)
        except XpersistSQLError as exc:  # one missing key does not stop the others
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
            failed += 1
            continue
        deleted += 1
        freed += artifact.size_bytes or 0
        out.print(f"{'would delete' if dry_run else 'deleted'} {name}", markup=False)
    if len(keys) > 1 or not failed:
        verb = "would delete" if dry_run else "deleted"
        err.print(f"{verb} {deleted} of {len(keys)} artifacts ({_size(freed)})")
    if failed:
        raise typer.Exit(1)


# -- stats -----------------------------------------------------------------------------------
@app.command("stats")
def stats(
    store: StoreOpt = None,
    db: DbOpt = None,
    key: KeyOpt = None,
    flow: FlowOpt = None,
    task: TaskOpt = None,
    serializer: SerializerOpt = None,
    tag: TagOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    include_expired: ExpiredOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Count the artifacts and add up their sizes per flow, task and serializer."""
    with _user_errors():
        query: ArtifactQuery = parse_query(
            **_filters(
                key=key,
                flow=flow,
                task=task,
                serializer=serializer,
                tag=tag,
                since=since,
                until=until,
                include_expired=include_expired,
            )
        )
        opened = _open(store, db)
        try:
            with opened.engine.connect() as conn:
                groups = {by: summarize(conn, query, by) for by in SUMMARY_FIELDS}
        finally:
            opened.close()
    rows = groups["serializer"]
    total = {"count": sum(r.count for r in rows), "size_bytes": sum(r.size_bytes for r in rows)}
    if as_json:
        _print_json(
            {
                "total": total,
                **{
                    by: [
                        {"value": r.value, "count": r.count, "size_bytes": r.size_bytes}
                        for r in summary
                    ]
                    for by, summary in groups.items()
                },
            }
        )
        return
    out = _stdout()
    out.print(f"{total['count']} artifacts, {_size(total['size_bytes'])}")
    for by, summary in groups.items():
        table = Table(title=f"by {by}", title_justify="left", box=None, header_style="bold")
        table.add_column(by.upper(), overflow="fold")
        table.add_column("ARTIFACTS", justify="right")
        table.add_column("SIZE", justify="right")
        for row in summary:
            table.add_row(
                "(none)" if row.value is None else row.value, str(row.count), _size(row.size_bytes)
            )
        out.print()
        out.print(table)


# -- db --------------------------------------------------------------------------------------
def _index_url(store: str | None, db: str | None) -> str:
    # CacheStore resolves --db / $XPERSIST_SQL_DATABASE_URL / the embedded default without
    # opening the index, which may be at any revision here
    return CacheStore(store, database_url=db, readonly=True).database_url


def _revision(engine: Any) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (head, +1, an id).")] = "head",
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Upgrade the index schema (creating it if the database is empty)."""
    with _user_errors():
        url = _index_url(store, db)
        engine = create_index_engine(url)
        try:
            before = _revision(engine)
            run_alembic(engine, "upgrade", revision)
            after = _revision(engine)
        finally:
            engine.dispose()
    if before == after:
        _stdout().print(f"{redact_url(url)} is already at revision {after}", markup=False)
    else:
        _stdout().print(
            f"upgraded {redact_url(url)} from {before or 'an empty database'} to {after}",
            markup=False,
        )


@db_app.command(
    "downgrade", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True}
)
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (-1, an id, base).")],
    store: StoreOpt = None,
    db: DbOpt = None,
) -> None:
    """Downgrade the index schema, e.g. before going back to an older xpersist_sql."""
    with _user_errors():
        url = _index_url(store, db)
        engine = create_index_engine(url)
        try:
            before = _revision(engine)
            if before is None:
                raise ValueError(f"{redact_url(url)} has no xpersist_sql schema to downgrade")
            run_alembic(engine, "downgrade", revision)
            after = _revision(engine)
        finally:
            engine.dispose()
    _stdout().print(
        f"downgraded {redact_url(url)} from {before} to {after or 'base (no schema)'}",
        markup=False,
    )


@db_app.command("current")
def db_current(store: StoreOpt = None, db: DbOpt = None) -> None:
    """Print the index's schema revision and whether it is the one this version needs."""
    with _user_errors():
        url = _index_url(store, db)
        engine = create_index_engine(url)
        try:
            current = _revision(engine)
        finally:
            engine.dispose()
        head = head_revision()
    if current is None:
        text = f"{redact_url(url)}: no xpersist_sql schema (head is {head})"
    elif current == head:
        text = f"{current} (head)"
    else:
        text = f"{current} (xpersist_sql {__version__} needs {head}: run xpersist-sql db upgrade)"
    _stdout().print(text, markup=False)


@db_app.command("history")
def db_history(store: StoreOpt = None, db: DbOpt = None) -> None:
    """List the schema revisions shipped with this version, marking the index's current one.

    Without --store, --db or their environment variables, only the revisions are listed.
    """
    with _user_errors():
        current = None
        if store is not None or db is not None:
            engine = create_index_engine(_index_url(store, db))
            try:
                current = _revision(engine)
            finally:
                engine.dispose()
        script = ScriptDirectory.from_config(alembic_config())
        revisions = list(script.walk_revisions())
    out = _stdout()
    for rev in revisions:
        marks = [
            name for name, on in (("head", rev.is_head), ("current", rev.revision == current)) if on
        ]
        suffix = f" ({', '.join(marks)})" if marks else ""
        message = (rev.doc or "").strip().splitlines()[0] if rev.doc else ""
        out.print(
            f"{rev.down_revision or '<base>'} -> {rev.revision}{suffix}: {message}", markup=False
        )


from .cli_lifecycle import register as _register_lifecycle  # noqa: E402  (gc, verify, evict...)

_register_lifecycle(app)


def main() -> None:
    """Run the command line (the ``xpersist-sql`` script)."""
    app(prog_name="xpersist-sql")
