"""The lifecycle commands of ``xpersist-sql``: ``gc``, ``verify``, ``evict``, ``import-legacy``.

:func:`register` adds them to the main typer app of :mod:`xpersist_sql.cli`, reusing its options
and helpers (``--store``/``--db``, one-line errors with exit status 1). Long work shows a
progress bar on stderr; results go to stdout as a table or, with ``--json``, as JSON.

This module evaluates its annotations when :func:`register` runs (no postponed annotations), so
that it imports :mod:`xpersist_sql.cli` only then, whichever module is imported first.
"""

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import lifecycle
from .legacy import LegacyImportReport, import_legacy

__all__ = ["register"]


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a ``progress(phase, done, total)`` callback drawing one rich bar per phase."""
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


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold", justify="right" if name == "SIZE" else "left")
    return table


def _legacy_json(report: LegacyImportReport) -> dict[str, Any]:
    def issues(items: list[Any]) -> list[dict[str, Any]]:
        return [
            {"sidecar": i.sidecar, "key": i.key, "problem": i.problem, "detail": i.detail}
            for i in items
        ]

    return {
        "path": report.path,
        "sidecars": report.sidecars,
        "imported": report.imported,
        "already_indexed": report.already_indexed,
        "unsupported": issues(report.unsupported),
        "skipped": issues(report.skipped),
    }


def register(app: typer.Typer) -> None:
    """Add ``gc``, ``verify``, ``evict`` and ``import-legacy`` to the ``xpersist-sql`` app."""
    from .cli import DbOpt, JsonOpt, StoreOpt, _open, _stderr, _stdout, _user_errors

    size = lifecycle.format_size

    @app.command("gc")
    def gc_command(
        store: StoreOpt = None,
        db: DbOpt = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Only list what would be removed, with sizes.")
        ] = False,
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                help="Grace period for files: staging and trash leftovers and orphan payloads "
                "are removed only if unchanged for this long (30m, 12h, 7d, seconds).",
            ),
        ] = "1h",
        as_json: JsonOpt = False,
    ) -> None:
        """Remove expired artifacts, orphan payloads and leftovers of crashed writes.

        Safe while other processes use the store: nothing written after the scan started is
        removed, and files must also be unchanged for --older-than (default 1h).
        """
        err = _stderr()
        with _user_errors():
            grace = lifecycle.parse_duration(older_than)
            opened = _open(store, db, readonly=dry_run)
            try:
                with _progress(err) as progress:
                    report = lifecycle.gc(
                        opened, older_than=grace, dry_run=dry_run, progress=progress
                    )
            finally:
                opened.close()
        if as_json:
            _print_json(
                {
                    "dry_run": dry_run,
                    "total_bytes": report.total_bytes,
                    "items": [vars(item) for item in report.items],
                    "skipped": [vars(item) for item in report.skipped],
                }
            )
        elif report.items:
            table = _table("KIND", "PATH", "SIZE")
            for item in report.items:
                table.add_row(item.kind, item.path, size(item.size_bytes))
            _stdout().print(table)
        kinds = ("expired", "orphan", "staging", "trash")
        counts = ", ".join(f"{report.count(k)} {k}" for k in kinds if report.count(k))
        verb = "would remove" if dry_run else "removed"
        err.print(
            f"{verb} {len(report.items)} items ({size(report.total_bytes)})"
            + (f": {counts}" if counts else ""),
            markup=False,
            soft_wrap=True,
        )
        if report.skipped:
            err.print(
                f"kept {len(report.skipped)} items that changed or were claimed during the scan",
                markup=False,
                soft_wrap=True,
            )

    @app.command("verify")
    def verify_command(
        store: StoreOpt = None,
        db: DbOpt = None,
        as_json: JsonOpt = False,
        repair: Annotated[
            bool,
            typer.Option("--repair", help="Drop the rows whose payload is gone (asks first)."),
        ] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Repair without asking.")] = False,
        checksums: Annotated[
            bool,
            typer.Option(
                "--checksums/--no-checksums",
                help="Hash payloads that have a recorded checksum (a full read of each).",
            ),
        ] = True,
    ) -> None:
        """Check that every artifact's payload is present and unchanged.

        Exits with status 1 if a payload is missing, modified or corrupt (after --repair: if
        any problem remains).
        """
        err = _stderr()
        with _user_errors():
            opened = _open(store, db, readonly=not repair)
            try:
                with _progress(err) as progress:
                    report = lifecycle.verify(opened, checksums=checksums, progress=progress)
                dropped: list[str] = []
                if repair and report.missing:
                    question = (
                        f"Drop the rows of {len(report.missing)} artifacts whose payload is gone?"
                    )
                    if yes or typer.confirm(question, default=False, err=True):
                        dropped = lifecycle.repair_missing(opened, report.missing)
                    else:
                        err.print("nothing repaired")
            finally:
                opened.close()
        remaining = [p for p in report.problems if p.key not in set(dropped)]
        if as_json:
            _print_json(
                {
                    "checked": report.checked,
                    "problems": [vars(p) for p in report.problems],
                    "repaired": dropped,
                }
            )
        elif report.problems:
            table = _table("KEY", "PROBLEM", "DETAIL")
            for problem in report.problems:
                state = " (row dropped)" if problem.key in dropped else ""
                table.add_row(problem.key, problem.problem + state, problem.detail)
            _stdout().print(table)
        err.print(
            f"checked {report.checked} artifacts: {len(report.missing)} missing, "
            f"{len(report.damaged)} modified or corrupt"
            + (f", {len(dropped)} rows dropped" if dropped else ""),
            markup=False,
            soft_wrap=True,
        )
        if remaining:
            if report.missing and not repair:
                err.print(
                    "run `xpersist-sql verify --repair` to drop the rows of missing payloads",
                    soft_wrap=True,
                )
            raise typer.Exit(1)

    @app.command("evict")
    def evict_command(
        max_size: Annotated[
            str,
            typer.Option(
                "--max-size", help="Evict until the store fits: bytes or 500MB, 50GB, 2TiB."
            ),
        ],
        store: StoreOpt = None,
        db: DbOpt = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Only list what would be evicted.")
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Evict least-recently-used artifacts (expired ones first) until the store fits."""
        err = _stderr()
        with _user_errors():
            limit = lifecycle.parse_size(max_size)
            opened = _open(store, db, readonly=dry_run)
            try:
                with _progress(err) as progress:
                    report = lifecycle.evict(opened, limit, dry_run=dry_run, progress=progress)
            finally:
                opened.close()
        if as_json:
            _print_json(
                {
                    "dry_run": dry_run,
                    "max_size": report.max_size,
                    "size_before": report.size_before,
                    "size_after": report.size_after,
                    "evicted": [
                        {
                            "key": item.key,
                            "size_bytes": item.size_bytes,
                            "last_used": item.last_used.isoformat(),
                        }
                        for item in report.evicted
                    ],
                }
            )
        elif report.evicted:
            table = _table("KEY", "SIZE", "LAST USED (UTC)")
            for item in report.evicted:
                table.add_row(
                    item.key, size(item.size_bytes), item.last_used.strftime("%Y-%m-%d %H:%M:%S")
                )
            _stdout().print(table)
        verb = "would evict" if dry_run else "evicted"
        err.print(
            f"{verb} {len(report.evicted)} artifacts ({size(report.freed_bytes)}): "
            f"{size(report.size_before)} -> {size(report.size_after)} "
            f"(max {size(report.max_size)})",
            markup=False,
            soft_wrap=True,
        )

    @app.command("import-legacy")
    def import_legacy_command(
        path: Annotated[str, typer.Argument(help="Root of a store written by xpersist 2021.")],
        db: DbOpt = None,
        strict: Annotated[
            bool,
            typer.Option("--strict", help="Exit with status 1 if any sidecar was skipped."),
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Index a store written by xpersist 2021 in place (running it again changes nothing).

        Payloads stay where they are; each xpersist_metadata_store/<key>.artifact.json sidecar
        becomes a row with its created_at and metadata. Afterwards `--store PATH` serves it.
        """
        err = _stderr()
        with _user_errors(), _progress(err) as progress:
            report = import_legacy(path, database_url=db, progress=progress)
        issues = [*report.unsupported, *report.skipped]
        if as_json:
            _print_json(_legacy_json(report))
        elif issues:
            table = _table("SIDECAR", "KEY", "PROBLEM", "DETAIL")
            for issue in issues:
                table.add_row(issue.sidecar, issue.key or "", issue.problem, issue.detail)
            _stdout().print(table)
        err.print(
            f"{report.sidecars} sidecars: imported {len(report.imported)}, "
            f"{len(report.already_indexed)} already indexed, {len(report.skipped)} skipped, "
            f"{len(report.unsupported)} with an unsupported serializer",
            markup=False,
            soft_wrap=True,
        )
        if strict and report.skipped:
            raise typer.Exit(1)
