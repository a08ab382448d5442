"""``xpersist-sql db upgrade|downgrade|current|history``: the index schema.

These commands work on an index at any revision, so they never query the store. With ``--db``
(or ``$XPERSIST_SQL_DATABASE_URL``) the URL is used as it is, and ``--store`` only names the
store the index belongs to (``db upgrade`` gives it the rows written before stores had an
identity); it must be an existing directory but need not carry a marker yet, since an index at
an old revision is exactly what a store without a marker has. Without ``--db``, the store is
opened (never created) only to find its embedded index.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from alembic.script import ScriptDirectory

from .. import StoreNotFoundError, __version__
from ..db import schema
from ..db.engine import create_index_engine, redact_url, sqlite_path
from ._app import db_app
from ._common import StoreOptions, local_path, option_groups, print_json, stdout, user_errors

__all__ = ["db_current", "db_downgrade", "db_history", "db_upgrade"]

DbJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a sentence.", show_default=False)
]
UpgradeTarget = Annotated[str, typer.Argument(help="Target revision (head, +1, an id).")]
DowngradeTarget = Annotated[str, typer.Argument(help="Target revision (-1, an id, base).")]


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


def _revision(url: str) -> str | None:
    """Return the revision of the index at ``url`` (None: no schema), writing nothing."""
    db_file = sqlite_path(url)
    if db_file is not None and not db_file.exists():
        return None  # reading must not create the file
    engine = create_index_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return schema.current_revision(conn)
    finally:
        engine.dispose()


@db_app.command("upgrade")
@option_groups()
def db_upgrade(
    revision: UpgradeTarget = "head", *, where: StoreOptions, as_json: DbJsonOpt = False
) -> None:
    """Upgrade the index schema (creating it if the database is empty)."""
    with user_errors():
        url, root = _index(where)
        before, after = schema.upgrade(url, revision, store_root=root)
    if as_json:
        print_json({"url": redact_url(url), "before": before, "after": after})
    elif before == after:
        stdout().print(f"{redact_url(url)} is already at revision {after}", markup=False)
    else:
        stdout().print(
            f"upgraded {redact_url(url)} from {before or 'an empty database'} to {after}",
            markup=False,
        )


@db_app.command(
    "downgrade", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True}
)
@option_groups()
def db_downgrade(
    revision: DowngradeTarget, where: StoreOptions, as_json: DbJsonOpt = False
) -> None:
    """Downgrade the index schema, e.g. before going back to an older xpersist_sql."""
    with user_errors():
        url = _index(where)[0]
        before = _revision(url)
        if before is None:
            raise ValueError(f"{redact_url(url)} has no xpersist_sql schema to downgrade")
        before, after = schema.downgrade(url, revision)
    if as_json:
        print_json({"url": redact_url(url), "before": before, "after": after})
        return
    stdout().print(
        f"downgraded {redact_url(url)} from {before} to {after or 'base (no schema)'}",
        markup=False,
    )


@db_app.command("current")
@option_groups()
def db_current(where: StoreOptions, as_json: DbJsonOpt = False) -> None:
    """Print the index's schema revision and whether it is the one this version needs."""
    with user_errors():
        url, _ = _index(where)
        current = _revision(url)
        head = schema.head_revision()
    if as_json:
        print_json({"url": redact_url(url), "current": current, "head": head})
        return
    if current is None:
        text = f"{redact_url(url)}: no xpersist_sql schema (head is {head})"
    elif current == head:
        text = f"{current} (head)"
    else:
        text = f"{current} (xpersist_sql {__version__} needs {head}: run xpersist-sql db upgrade)"
    stdout().print(text, markup=False)


@db_app.command("history")
@option_groups()
def db_history(where: StoreOptions, as_json: DbJsonOpt = False) -> None:
    """List the schema revisions shipped with this version, marking the index's current one.

    Without --store, --db or their environment variables, only the revisions are listed.
    """
    with user_errors():
        current = None
        if where.store is not None or where.db is not None:
            current = _revision(_index(where)[0])
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
