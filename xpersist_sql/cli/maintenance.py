"""``xpersist-sql gc``, ``verify``, ``evict`` and ``import-legacy``: keeping a store healthy.

Each calls the store's own method (``store.gc``, ``store.verify``/``store.repair``,
``store.evict``, ``store.import_legacy``). Long work shows a progress bar on stderr; results go
to stdout as a table or, with ``--json``, as JSON.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from ..legacy import LEGACY_METADATA_DIR, LEGACY_SUFFIX, LegacyImportReport, LegacyIssue
from ..maintenance.evict import EvictedItem
from ..maintenance.gc import GcItem
from ..maintenance.verify import VerifyProblem
from ..units import parse_duration, parse_size
from ._app import app
from ._common import (
    EXIT_PROBLEMS,
    DbOpt,
    JsonOpt,
    StoreOptions,
    confirm,
    local_path,
    open_store,
    option_groups,
    print_json,
    print_table,
    progress_bar,
    size,
    stderr,
    table,
    user_errors,
    when,
)

__all__ = ["evict_command", "gc_command", "import_legacy_command", "verify_command"]

_GC_KINDS = ("expired", "orphan", "staging", "trash", "token")
T = TypeVar("T")


# -- gc --------------------------------------------------------------------------------------
@app.command("gc")
@option_groups()
def gc_command(
    where: StoreOptions,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed, with sizes.")
    ] = False,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Grace period for files: staging and trash leftovers and orphan payloads "
            "are removed only if unchanged for this long (seconds, 30m, 12h, 7d, 2w, P1D).",
        ),
    ] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Remove expired artifacts, orphan payloads and leftovers of crashed writes.

    Safe while other processes use the store: nothing written after the scan started is
    removed, and files must also be unchanged for --older-than (default 1h).
    """
    err = stderr()
    with user_errors():
        grace = _option_value("--older-than", parse_duration, older_than)
        with where.open(readonly=dry_run) as opened, progress_bar(err) as progress:
            report = opened.gc(older_than=grace, dry_run=dry_run, progress=progress)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "total_bytes": report.total_bytes,
                "items": [_gc_item(item) for item in report.items],
                "skipped": [_gc_item(item) for item in report.skipped],
            }
        )
    elif report.items:
        found = table("KIND", "PATH", "SIZE")
        for item in report.items:
            found.add_row(item.kind, item.path, size(item.size_bytes))
        print_table(found)
    counts = ", ".join(f"{report.count(k)} {k}" for k in _GC_KINDS if report.count(k))
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


# -- verify ----------------------------------------------------------------------------------
@app.command("verify")
@option_groups()
def verify_command(
    where: StoreOptions,
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
    refingerprint: Annotated[
        bool,
        typer.Option(
            "--refingerprint",
            help="Re-record the fingerprint (file sizes and modification times) of every "
            "payload whose fingerprint changed, e.g. after copying the store with cp -r. A "
            "payload with a recorded checksum is re-recorded only if its content still matches "
            "it; one that does not stays reported as corrupt.",
        ),
    ] = False,
) -> None:
    """Check that every artifact's payload is present and unchanged.

    Exits with status 1 if a payload is missing, modified or corrupt (after --repair or
    --refingerprint: if any problem remains), 2 if the check could not run (not a store, an
    unreachable database...).
    """
    err = stderr()
    with user_errors(), where.open(readonly=not (repair or refingerprint)) as opened:
        with progress_bar(err) as progress:
            report = opened.verify(
                checksums=checksums, refingerprint=refingerprint, progress=progress
            )
        dropped: list[str] = []
        if repair and report.missing:
            question = f"Drop the rows of {len(report.missing)} artifacts whose payload is gone?"
            if yes or confirm(question):
                with progress_bar(err) as progress:
                    dropped = opened.repair(report.missing, progress=progress)
            else:
                err.print("nothing repaired")
    # (re-recorded fingerprints are not problems: only dropped rows are resolved here)
    gone = set(dropped)
    remaining = [p for p in report.problems if p.key not in gone]
    if as_json:
        print_json(
            {
                "checked": report.checked,
                "ok": not remaining,
                "problems": [_problem(p) for p in report.problems],
                "repaired": dropped,
                "refingerprinted": list(report.refingerprinted),
            }
        )
    elif report.problems:
        found = table("KEY", "PROBLEM", "DETAIL")
        for problem in report.problems:
            state = " (row dropped)" if problem.key in gone else ""
            found.add_row(problem.key, problem.problem + state, problem.detail)
        print_table(found)
    err.print(
        f"checked {report.checked} artifacts: {len(report.missing)} missing, "
        f"{len(report.damaged)} modified or corrupt"
        + (f", {len(dropped)} rows dropped" if dropped else "")
        + (
            f", {len(report.refingerprinted)} fingerprints re-recorded"
            if report.refingerprinted
            else ""
        ),
        markup=False,
        soft_wrap=True,
    )
    if remaining:
        kinds = {p.problem for p in remaining}
        if "missing" in kinds and not repair:
            err.print(
                "run `xpersist-sql verify --repair` to drop the rows of missing payloads",
                soft_wrap=True,
            )
        if "modified" in kinds and not refingerprint:
            err.print(
                "if the store was copied or moved (cp -r changes modification times), run "
                "`xpersist-sql verify --refingerprint` to re-record the fingerprints",
                soft_wrap=True,
            )
        raise typer.Exit(EXIT_PROBLEMS)


def _problem(problem: VerifyProblem) -> dict[str, str]:
    return {"key": problem.key, "problem": problem.problem, "detail": problem.detail}


def _gc_item(item: GcItem) -> dict[str, Any]:
    return {"kind": item.kind, "path": item.path, "size_bytes": item.size_bytes}


def _evicted(item: EvictedItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "size_bytes": item.size_bytes,
        "last_used": item.last_used.isoformat(),
    }


def _option_value(option: str, parse: Callable[[str], T], text: str) -> T:
    """Return ``parse(text)``; a ValueError names the option (``--older-than '1e400': ...``)."""
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{option} {text!r}: {exc}") from None


# -- evict -----------------------------------------------------------------------------------
@app.command("evict")
@option_groups()
def evict_command(
    max_size: Annotated[
        str,
        typer.Option(
            "--max-size",
            metavar="SIZE",
            help="Evict until the store fits: bytes or 500MB, 50GB, 2TiB.",
        ),
    ],
    where: StoreOptions,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be evicted.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evict least-recently-used artifacts (expired ones first) until the store fits."""
    err = stderr()
    with user_errors():
        limit = _option_value(
            "--max-size", functools.partial(parse_size, allow_zero=True), max_size
        )
        with where.open(readonly=dry_run) as opened, progress_bar(err) as progress:
            report = opened.evict(limit, dry_run=dry_run, progress=progress)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "max_size": report.max_size,
                "size_before": report.size_before,
                "size_after": report.size_after,
                "freed_bytes": report.freed_bytes,
                "evicted": [_evicted(item) for item in report.evicted],
                "skipped": [_evicted(item) for item in report.skipped],
            }
        )
    elif report.evicted:
        found = table("KEY", "SIZE", "LAST USED (UTC)")
        for item in report.evicted:
            found.add_row(item.key, size(item.size_bytes), when(item.last_used))
        print_table(found)
    verb = "would evict" if dry_run else "evicted"
    err.print(
        f"{verb} {len(report.evicted)} artifacts ({size(report.freed_bytes)}): "
        f"{size(report.size_before)} -> {size(report.size_after)} "
        f"(max {size(report.max_size)})",
        markup=False,
        soft_wrap=True,
    )


# -- import-legacy ---------------------------------------------------------------------------
def _issues(items: list[LegacyIssue]) -> list[dict[str, Any]]:
    return [
        {"sidecar": i.sidecar, "key": i.key, "problem": i.problem, "detail": i.detail}
        for i in items
    ]


def _legacy_json(report: LegacyImportReport) -> dict[str, Any]:
    return {
        "path": report.path,
        "sidecars": report.sidecars,
        "imported": report.imported,
        "already_indexed": report.already_indexed,
        "unsupported": _issues(report.unsupported),
        "skipped": _issues(report.skipped),
    }


def _check_legacy_layout(path: str) -> None:
    """Refuse a local path that is not a 2021 store before anything is created in it."""
    local = local_path(path)
    if local is not None and not os.path.isdir(os.path.join(local, LEGACY_METADATA_DIR)):
        raise FileNotFoundError(
            f"{path} is not a store written by xpersist 2021: it has no "
            f"{LEGACY_METADATA_DIR}/ directory of <key>{LEGACY_SUFFIX} sidecars"
        )


@app.command("import-legacy")
def import_legacy_command(
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="Root of a store written by xpersist 2021.")
    ],
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
    err = stderr()
    with user_errors():
        _check_legacy_layout(path)
        # the one command that may create a store: PATH becomes one
        with (
            open_store(path, db, readonly=False, create=True) as opened,
            progress_bar(err) as progress,
        ):
            report = opened.import_legacy(progress=progress)
    issues = [*report.unsupported, *report.skipped]
    if as_json:
        print_json(_legacy_json(report))
    elif issues:
        found = table("SIDECAR", "KEY", "PROBLEM", "DETAIL")
        for issue in issues:
            found.add_row(issue.sidecar, issue.key or "", issue.problem, issue.detail)
        print_table(found)
    err.print(
        f"{report.sidecars} sidecars: imported {len(report.imported)}, "
        f"{len(report.already_indexed)} already indexed, {len(report.skipped)} skipped, "
        f"{len(report.unsupported)} with an unsupported serializer",
        markup=False,
        soft_wrap=True,
    )
    if strict and report.skipped:
        raise typer.Exit(EXIT_PROBLEMS)
