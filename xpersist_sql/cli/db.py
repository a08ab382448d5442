"""``xpersist-sql db upgrade|downgrade|current|history``: the index schema.

These commands work on an index at any revision, so they never query the store. With ``--db``
(or ``$XPERSIST_SQL_DATABASE_URL``) the URL is used as it is, and ``--store`` only names the
store the index belongs to (``db upgrade`` gives it the rows written before stores had an
identity); it must be an existing directory but need not carry a marker yet, since an index at
an old revision is exactly what a store without a marker has. Without ``--db``, the store is
opened (never created) only to find its embedded index.

``db upgrade URL`` (MLflow's ``mlflow db upgrade URL``) takes a URL given as the argument for
``--db URL``. ``--sql`` prints the SQL of the migration (Alembic's offline mode) instead of
running it. An index at a revision this version does not know (a newer xpersist_sql upgraded
it), a target it does not know, and a migration that fails half-way are said in the command
line's words, with what to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Annotated, Any

import typer
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import StoreNotFoundError, XpersistSQLError, __version__
from ..db import schema
from ..db.engine import create_index_engine, redact_url, sqlite_path
from ..db.tables import ARTIFACTS
from ._app import db_app
from ._common import (
    DATABASE_URL_ENV,
    EXIT_PROBLEMS,
    StoreOptions,
    local_path,
    option_groups,
    print_json,
    stderr,
    stdout,
    user_errors,
)

__all__ = ["db_current", "db_downgrade", "db_history", "db_upgrade"]

DbJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a sentence.", show_default=False)
]
UpgradeTarget = Annotated[
    str,
    typer.Argument(
        metavar="REVISION",
        help="Target revision (head, +1, an id). A database URL here is taken as --db URL.",
    ),
]
DowngradeTarget = Annotated[
    str, typer.Argument(metavar="REVISION", help="Target revision (-1, an id, base).")
]
SqlOpt = Annotated[
    bool,
    typer.Option(
        "--sql",
        help="Print the SQL of the migration (for a DBA to review and run) instead of running "
        "it; nothing is written to the database. Upgrading an index with rows past revision "
        "0004 needs --store ROOT (whose marker is created if missing).",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="REVISION",
        help="With --sql: the revision the database is at (base: an empty database) "
        "[default: read from the database].",
        show_default=False,
    ),
]

#: What an index's revision means for this version (``db current --json``'s ``state``).
STATES = ("empty", "head", "older", "newer", "foreign")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


# -- the index the options select ------------------------------------------------------------
def _index(where: StoreOptions) -> tuple[str, str | None]:
    """Return the index URL and the store root (None with ``--db`` alone) the options select.

    Nothing is created: a path that is not a store is an error, for ``db upgrade`` too.
    """
    if where.db is not None:
        return where.db, None if where.store is None else _existing_root(where.store)
    with where.open(readonly=True) as opened:
        return opened.database_url, opened.path


def _existing_root(store: str) -> str:
    local = local_path(store)
    if local is None:
        return store
    if not os.path.isdir(local):
        raise StoreNotFoundError(
            f"no xpersist_sql store at {store!r}: there is no such directory; check --store"
        )
    return local


def _inspect(url: str) -> tuple[str | None, bool]:
    """Return the index's revision (None: none) and whether it has xpersist_sql tables.

    Writes nothing (a missing SQLite file is not created).
    """
    db_file = sqlite_path(url)
    if db_file is not None and not db_file.exists():
        return None, False  # reading must not create the file
    engine = create_index_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return schema.current_revision(conn), inspect(conn).has_table(ARTIFACTS.name)
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    """Return the revision of the index at ``url`` (None: no schema), writing nothing."""
    return _inspect(url)[0]


def _state(current: str | None, has_tables: bool) -> str:
    if current is None:
        return "foreign" if has_tables else "empty"
    if current == schema.head_revision():
        return "head"
    return "older" if schema.is_known_revision(current) else "newer"


def _url_argument(revision: str, where: StoreOptions) -> tuple[str, StoreOptions]:
    """Take ``db upgrade URL`` (MLflow's habit) as ``db upgrade head --db URL``."""
    if not _URL.match(revision):
        return revision, where
    if where.db is not None and where.db != revision:
        raise ValueError(
            f"two databases given: {redact_url(revision)!r} as the argument and "
            f"{redact_url(where.db)!r} with --db (or ${DATABASE_URL_ENV}); give "
            "the one to upgrade with --db URL"
        )
    return "head", dataclasses.replace(where, db=revision)


def _refuse_url_target(revision: str) -> None:
    if _URL.match(revision):
        raise ValueError(
            f"db downgrade takes the target revision as its argument and the database as "
            f"--db URL: xpersist-sql db downgrade -1 --db '{redact_url(revision)}'"
        )


def _check_known(url: str, root: str | None, current: str | None) -> None:
    """Refuse an index at a revision this version does not know (a newer one migrated it)."""
    if current is not None and not schema.is_known_revision(current):
        raise ValueError(schema.newer_revision_message(url, root, current))


# -- migrating -------------------------------------------------------------------------------
def _migrate(
    action: str, url: str, root: str | None, revision: str
) -> tuple[str | None, str | None]:
    """Run ``db upgrade``/``db downgrade``, its failures said in the command line's words."""
    before = _revision(url)
    _check_known(url, root, before)
    if action == "downgrade" and before is None:
        raise ValueError(f"{redact_url(url)} has no xpersist_sql schema to downgrade")
    try:
        if action == "upgrade":
            return schema.upgrade(url, revision, store_root=root)
        return schema.downgrade(url, revision)
    except (CommandError, RevisionError) as exc:  # e.g. a step beyond the first revision
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"cannot {action} {redact_url(url)} from {before or 'an empty database'} to "
            f"{revision!r}: {first}"
        ) from None
    except DBAPIError as exc:
        raise ValueError(_failed_migration(action, url, root, revision, before, exc)) from None


def _failed_migration(
    action: str, url: str, root: str | None, revision: str, before: str | None, exc: DBAPIError
) -> str:
    """Explain a migration the database refused, and how to recover from a half-applied one."""
    reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    text = (
        f"cannot {action} {redact_url(url)} from {before or 'an empty database'} to "
        f"{revision}: the database refused a step of the migration ({reason[0] if reason else exc})"
    )
    try:
        after = _revision(url)
        drift = schema.schema_drift(url, before)
    except (SQLAlchemyError, XpersistSQLError, CommandError, OSError, RuntimeError):
        return text  # the index cannot be read any more: the error is all there is to say
    if after == before:
        text += (
            f". Nothing was changed: the failed migration was rolled back and the index is still "
            f"at revision {before or '(none)'}"
        )
    if not drift.extra and not drift.missing:
        return text
    found = []
    if drift.extra:
        found.append(f"already has {', '.join(drift.extra)}")
    if drift.missing:
        found.append(f"lacks {', '.join(drift.missing)}")
    text += (
        f". The index does not match its recorded revision {before or '(none)'}: it "
        f"{' and '.join(found)}; a migration was half applied (or the schema was changed by "
        "hand). To recover, restore the index from the backup taken before"
    )
    if drift.extra and not drift.missing:
        text += (
            f", or drop what was half added ({'; '.join(drift.drops)}) and run "
            f"`{schema.db_command(action, url, root, revision)}` again"
        )
    return text


def _start(url: str, given: str | None) -> str | None:
    """Return the revision ``--sql`` starts from: ``--from``, else the database's own."""
    if given is not None:
        if given == "base":
            return None
        if not schema.is_known_revision(given):
            schema.check_target(given)  # says what is accepted
            raise ValueError(f"--from takes base or a revision id, not {given!r}")
        return given
    try:
        return _revision(url)
    except (SQLAlchemyError, XpersistSQLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"cannot read the revision {redact_url(url)} is at ({first}); give it with --from "
            "REVISION (base for an empty database) to write the SQL without the database"
        ) from None


def _print_sql(
    action: str, url: str, root: str | None, revision: str, start: str | None, as_json: bool
) -> None:
    text = schema.migration_sql(url, action, revision, start=start, store=root)
    if as_json:
        print_json({"url": redact_url(url), "before": start, "target": revision, "sql": text})
        return
    header = (
        f"-- xpersist_sql {__version__}: {action} {redact_url(url)} from "
        f"{start or 'an empty database'} to {revision}\n"
    )
    sys.stdout.write(header + (text or f"-- nothing to do: the index is already at {revision}\n"))


def _report(action: str, url: str, before: str | None, after: str | None, as_json: bool) -> None:
    shown = redact_url(url)
    if as_json:
        print_json({"url": shown, "before": before, "after": after})
    elif before == after:
        stdout().print(
            f"{shown} is already at revision {after or 'base (no schema)'}", markup=False
        )
    elif action == "upgrade":
        stdout().print(
            f"upgraded {shown} from {before or 'an empty database'} to {after}", markup=False
        )
    else:
        stdout().print(
            f"downgraded {shown} from {before} to {after or 'base (no schema)'}", markup=False
        )


# -- the commands ----------------------------------------------------------------------------
@db_app.command("upgrade")
@option_groups()
def db_upgrade(
    revision: UpgradeTarget = "head",
    *,
    where: StoreOptions,
    sql: SqlOpt = False,
    from_revision: FromOpt = None,
    as_json: DbJsonOpt = False,
) -> None:
    """Upgrade the index schema (creating it if the database is empty).

    Back up a shared database first. `xpersist-sql db upgrade postgresql+psycopg://...` is
    read as `--db postgresql+psycopg://...`. With --sql, print the SQL instead (from the
    revision the database is at, or --from).
    """
    with user_errors():
        revision, where = _url_argument(revision, where)
        schema.check_target(revision)
        url, root = _index(where)
        if sql:
            _print_sql("upgrade", url, root, revision, _start(url, from_revision), as_json)
            return
        before, after = _migrate("upgrade", url, root, revision)
    _report("upgrade", url, before, after, as_json)


@db_app.command(
    "downgrade", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True}
)
@option_groups()
def db_downgrade(
    revision: DowngradeTarget,
    where: StoreOptions,
    sql: SqlOpt = False,
    from_revision: FromOpt = None,
    as_json: DbJsonOpt = False,
) -> None:
    """Downgrade the index schema, e.g. before going back to an older xpersist_sql.

    With --sql, print the SQL instead (from the revision the database is at, or --from).
    """
    with user_errors():
        _refuse_url_target(revision)
        schema.check_target(revision)
        url, root = _index(where)
        if sql:
            start = _start(url, from_revision)
            if start is None:
                raise ValueError(f"{redact_url(url)} has no xpersist_sql schema to downgrade")
            _print_sql("downgrade", url, root, revision, start, as_json)
            return
        before, after = _migrate("downgrade", url, root, revision)
    _report("downgrade", url, before, after, as_json)


@db_app.command("current")
@option_groups()
def db_current(where: StoreOptions, as_json: DbJsonOpt = False) -> None:
    """Print the index's schema revision and whether it is the one this version needs.

    Exits with status 1 if this version cannot use the index as it is nor upgrade it: it was
    upgraded by a newer xpersist_sql, or its tables were not created by xpersist_sql.
    """
    with user_errors():
        url, root = _index(where)
        current, has_tables = _inspect(url)
        head = schema.head_revision()
    state = _state(current, has_tables)
    if as_json:
        print_json({"url": redact_url(url), "current": current, "head": head, "state": state})
    else:
        stdout().print(_describe_state(url, root, current, state), markup=False)
    if state in ("newer", "foreign"):
        raise typer.Exit(EXIT_PROBLEMS)


def _describe_state(url: str, root: str | None, current: str | None, state: str) -> str:
    head = schema.head_revision()
    if state == "empty":
        return f"{redact_url(url)}: no xpersist_sql schema (head is {head})"
    if state == "foreign":
        return (
            f"{redact_url(url)}: has an xpersist_sql table but no {schema.VERSION_TABLE!r} "
            "table, so it was not created by xpersist_sql's migrations; point the store at "
            "another database"
        )
    if state == "head":
        return f"{current} (head)"
    if state == "older":
        return (
            f"{current} (xpersist_sql {__version__} needs {head}: run "
            f"`{schema.db_command('upgrade', url, root)}`)"
        )
    assert current is not None
    return f"{current}: {schema.newer_revision_message(url, root, current)}"


@db_app.command("history")
@option_groups()
def db_history(where: StoreOptions, as_json: DbJsonOpt = False) -> None:
    """List the schema revisions shipped with this version, marking the index's current one.

    Without --store, --db or their environment variables, only the revisions are listed.
    """
    with user_errors():
        current = None
        if where.store is not None or where.db is not None:
            url, root = _index(where)
            current = _revision(url)
            if current is not None and not schema.is_known_revision(current):
                stderr().print(
                    schema.newer_revision_message(url, root, current), markup=False, soft_wrap=True
                )
        script = ScriptDirectory.from_config(schema.alembic_config())
        revisions = list(script.walk_revisions())
    entries: list[dict[str, Any]] = [
        {
            "revision": rev.revision,
            "down_revision": rev.down_revision,
            "head": rev.is_head,
            "current": rev.revision == current,
            "message": (rev.doc or "").strip().splitlines()[0] if rev.doc else "",
        }
        for rev in revisions
    ]
    if as_json:
        print_json(entries)
        return
    out = stdout()
    for entry in entries:
        marks = [name for name in ("head", "current") if entry[name]]
        suffix = f" ({', '.join(marks)})" if marks else ""
        out.print(
            f"{entry['down_revision'] or '<base>'} -> {entry['revision']}{suffix}: "
            f"{entry['message']}",
            markup=False,
        )
