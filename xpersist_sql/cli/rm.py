"""``xpersist-sql rm``: delete artifacts by key or by filter, or with what was derived from them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import track

from .. import Artifact, CacheStore, XpersistSQLError
from ._app import app
from ._common import (
    EXIT_ERROR,
    QueryFilters,
    StoreOptions,
    artifact_table,
    confirm,
    option_groups,
    print_error,
    print_json,
    print_table,
    size,
    stderr,
    stdout,
    user_errors,
)

__all__ = ["remove"]

#: Exit status when the user declines the confirmation: nothing was done, nothing failed.
EXIT_DECLINED = 1


@app.command("rm")
@option_groups()
def remove(
    keys: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY", help="Keys to delete.", show_default=False),
    ] = None,
    *,
    where: StoreOptions,
    filters: QueryFilters,
    downstream: Annotated[
        bool,
        typer.Option(
            "--downstream",
            help="Also delete everything derived from the KEYS (their lineage downstream).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Delete by filter or --downstream without asking."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON (deleted keys, freed bytes, failures) instead of one line per key.",
        ),
    ] = False,
) -> None:
    """Delete artifacts (row, then payload): the KEYS given, or those matching the filters.

    Deleting by filter lists the matches and asks for confirmation (--yes skips it), as does
    --downstream when more than the KEYS would go. A key that cannot be deleted does not stop
    the others; the command then exits with status 2.
    """
    with user_errors():
        query = filters.query()
        by_filter = filters.any()
        if keys and by_filter:
            raise ValueError("give either KEYS or filters to rm, not both")
        if not keys and not by_filter:
            raise ValueError(
                "rm needs KEYS or at least one filter (--key '*' matches every artifact)"
            )
        if downstream and not keys:
            raise ValueError("rm --downstream takes KEYS, not filters")
        with where.open(readonly=dry_run) as opened:
            if downstream:
                _remove_downstream(opened, keys or [], dry_run=dry_run, yes=yes, as_json=as_json)
                return
            _remove(
                opened,
                keys or [],
                query if by_filter else None,
                dry_run=dry_run,
                yes=yes,
                as_json=as_json,
            )


def _report(
    *, dry_run: bool, deleted: list[str], freed: int, failures: list[dict[str, str]]
) -> None:
    print_json({"dry_run": dry_run, "deleted": deleted, "freed_bytes": freed, "failures": failures})


def _remove(
    store: CacheStore,
    keys: list[str],
    query_filters: dict[str, Any] | None,
    *,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    # With --json, stdout carries only the JSON document: tables and prompts go to stderr.
    err = stderr()
    if query_filters is not None:
        matches = store.query(**query_filters)
        if not matches:
            err.print("no artifact matches the filters")
            if as_json:
                _report(dry_run=dry_run, deleted=[], freed=0, failures=[])
            return
        keys = [artifact.key for artifact in matches]
        if not dry_run:
            if as_json:
                err.print(artifact_table(matches))
            else:
                print_table(artifact_table(matches))
            total = sum(artifact.size_bytes or 0 for artifact in matches)
            question = f"Delete these {len(keys)} artifacts ({size(total)})?"
            if not yes and not confirm(question):
                err.print("nothing deleted")
                if as_json:
                    _report(dry_run=dry_run, deleted=[], freed=0, failures=[])
                raise typer.Exit(EXIT_DECLINED)
    deleted: list[str] = []
    failures: list[dict[str, str]] = []
    freed = 0
    steps = track(keys, description="deleting", console=err, transient=True, disable=len(keys) < 2)
    for name in steps:
        try:
            artifact = store.delete(name, dry_run=dry_run)
        except XpersistSQLError as exc:  # one missing key does not stop the others
            print_error(str(exc))
            failures.append({"key": name, "error": str(exc)})
            continue
        deleted.append(name)
        freed += artifact.size_bytes or 0
        if not as_json:
            stdout().print(f"{'would delete' if dry_run else 'deleted'} {name}", markup=False)
    if as_json:
        _report(dry_run=dry_run, deleted=deleted, freed=freed, failures=failures)
    if len(keys) > 1 or not failures:
        verb = "would delete" if dry_run else "deleted"
        err.print(f"{verb} {len(deleted)} of {len(keys)} artifacts ({size(freed)})")
    if failures:
        raise typer.Exit(EXIT_ERROR)


def _remove_downstream(
    store: CacheStore, keys: list[str], *, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Delete each key with everything derived from it (``CacheStore.delete_downstream``)."""
    err = stderr()
    failures: list[dict[str, str]] = []
    plans: dict[str, list[Artifact]] = {}
    for name in keys:
        try:
            plans[name] = store.delete_downstream(name, dry_run=True)
        except XpersistSQLError as exc:  # one missing key does not stop the others
            print_error(str(exc))
            failures.append({"key": name, "error": str(exc)})
    planned: dict[str, Artifact] = {}
    for plan in plans.values():
        planned.update((artifact.key, artifact) for artifact in plan if artifact.key not in planned)
    if not dry_run and len(planned) > len(plans):
        matches = list(planned.values())
        if as_json:
            err.print(artifact_table(matches))
        else:
            print_table(artifact_table(matches))
        total = sum(artifact.size_bytes or 0 for artifact in matches)
        question = f"Delete these {len(matches)} artifacts ({size(total)})?"
        if not yes and not confirm(question):
            err.print("nothing deleted")
            if as_json:
                _report(dry_run=dry_run, deleted=[], freed=0, failures=failures)
            raise typer.Exit(EXIT_DECLINED)
    deleted: list[Artifact] = []
    if dry_run:
        deleted = list(planned.values())
    else:
        for name in plans:
            if any(artifact.key == name for artifact in deleted):
                continue  # derived from a key deleted before it
            try:
                deleted.extend(store.delete_downstream(name))
            except XpersistSQLError as exc:
                print_error(str(exc))
                failures.append({"key": name, "error": str(exc)})
    freed = sum(artifact.size_bytes or 0 for artifact in deleted)
    if as_json:
        _report(
            dry_run=dry_run,
            deleted=[artifact.key for artifact in deleted],
            freed=freed,
            failures=failures,
        )
    else:
        verb = "would delete" if dry_run else "deleted"
        for artifact in deleted:
            stdout().print(f"{verb} {artifact.key}", markup=False)
    verb = "would delete" if dry_run else "deleted"
    err.print(
        f"{verb} {len(deleted)} artifacts ({size(freed)}): {len(plans)} of {len(keys)} keys "
        "and what was derived from them"
    )
    if failures:
        raise typer.Exit(EXIT_ERROR)
