"""Run the benchmarks and print one table of timings with ratios against peers.

Every ``benchmarks/bench_<name>.py`` module exposes ``run(quick: bool) -> list[dict]``; each row
has the keys ``benchmark``, ``case``, ``min_ms``, ``median_ms``, ``max_ms`` and ``ratio``.
``ratio`` is this project's median divided by the peer's median for the same operation (so
``2.0`` means xpersist_sql takes twice as long as that peer, ``0.5`` half as long); it is
``None`` on the rows that measure xpersist_sql itself. Rows that also carry ``op``, ``impl``
and ``n`` (``bench_query.py``: the same operation at several index sizes) are summarised in a
second table, latency against rows, and drawn (matplotlib) into a PNG.

Quick by default (small data, fewer repeats; the index sizes 1e4 and 1e6); ``--full`` runs the
full sizes (the indexes reach 1e7 rows: many minutes and about 10 GB of temporary disk).

Usage::

    python benchmarks/run.py                 # everything, quick
    python benchmarks/run.py --full          # everything, full size (1e7 rows)
    python benchmarks/run.py --only query    # one module
    python benchmarks/run.py --json out.json --plot out.png

The results go to ``build/bench/results.json`` (``--json``) and the scaling plot to
``build/bench/query-scaling.png``, or with ``--full`` to the documentation's
``docs/images/query-scaling.png`` (``--plot PATH``; ``--no-plot`` to skip it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROW_KEYS = ("benchmark", "case", "min_ms", "median_ms", "max_ms", "ratio")
DEFAULT_JSON = ROOT / "build" / "bench" / "results.json"
#: Where the plot goes: a --full run draws the documentation's figure, a quick one a scratch copy.
DOCS_PLOT = ROOT / "docs" / "images" / "query-scaling.png"
QUICK_PLOT = ROOT / "build" / "bench" / "query-scaling.png"
#: Scaling targets (issue 10): each size within FLAT x of the smallest, at most VS_RAW x raw SQL.
FLAT_TARGET = 1.5
VS_RAW_TARGET = 3.0


def timings(
    fn: Callable[[int], Any],
    repeats: int,
    *,
    setup: Callable[[int], Any] | None = None,
    teardown: Callable[[int], Any] | None = None,
    warmup: int = 1,
) -> list[float]:
    """Call ``fn(i)`` for ``i`` in ``range(repeats)``; return the durations in milliseconds.

    ``setup(i)`` and ``teardown(i)`` run before and after each call, outside the timing.
    ``warmup`` untimed calls come first, with negative ``i`` (-1, -2...).
    """
    durations: list[float] = []
    for i in [*range(-warmup, 0), *range(repeats)]:
        if setup is not None:
            setup(i)
        start = time.perf_counter()
        fn(i)
        elapsed = (time.perf_counter() - start) * 1000.0
        if teardown is not None:
            teardown(i)
        if i >= 0:
            durations.append(elapsed)
    return durations


def interleaved(
    cases: dict[str, Callable[[int], Any]], repeats: int, *, batch: int = 20, warmup: int = 1
) -> dict[str, list[float]]:
    """Time several cases of one operation in alternating batches; durations (ms) per case.

    Each case runs ``batch`` calls in turn (``fn(i)``, ``i`` counting up per case from 0,
    after ``warmup`` untimed calls with negative ``i``) until each has ``repeats``: a machine
    that slows down or speeds up during the run weighs on every case alike, where timing one
    case after the other would charge the drift to whichever ran later.
    """
    durations: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        for i in range(-warmup, 0):
            fn(i)
    while any(len(done) < repeats for done in durations.values()):
        for name, fn in cases.items():
            done = durations[name]
            for i in range(len(done), min(len(done) + batch, repeats)):
                start = time.perf_counter()
                fn(i)
                done.append((time.perf_counter() - start) * 1000.0)
    return durations


def row(benchmark: str, case: str, durations: Sequence[float]) -> dict[str, Any]:
    """Summarise durations (ms) as a result row (``ratio`` filled by :func:`add_ratios`)."""
    return {
        "benchmark": benchmark,
        "case": case,
        "min_ms": min(durations),
        "median_ms": statistics.median(durations),
        "max_ms": max(durations),
        "ratio": None,
    }


def add_ratios(rows: list[dict[str, Any]], ours: str) -> list[dict[str, Any]]:
    """Set ``ratio`` = median of the ``ours`` case / the row's median, per benchmark."""
    reference = {r["benchmark"]: r["median_ms"] for r in rows if r["case"] == ours}
    for r in rows:
        base = reference.get(r["benchmark"])
        if r["case"] != ours and base is not None and r["median_ms"] > 0:
            r["ratio"] = base / r["median_ms"]
    return rows


def discover(only: str | None = None) -> dict[str, ModuleType]:
    """Import the ``bench_*.py`` modules next to this file (``only``: the one named so)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    found: dict[str, ModuleType] = {}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only is not None and only not in (name, path.stem):
            continue
        spec = importlib.util.spec_from_file_location(f"benchmarks_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic and dataclasses resolve annotations there
        spec.loader.exec_module(module)
        if not callable(getattr(module, "run", None)):
            raise SystemExit(f"{path} has no run(quick: bool) -> list[dict] function")
        found[name] = module
    return found


def _ms(value: float) -> str:
    return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"


def render(rows: list[dict[str, Any]], *, quick: bool) -> Table:
    """Return the rich table of all rows."""
    table = Table(
        title=f"xpersist_sql benchmarks ({'quick' if quick else '--full'})",
        caption="ratio = xpersist_sql median / peer median (>1: xpersist_sql is slower)",
    )
    table.add_column("benchmark")
    table.add_column("case")
    for column in ("min ms", "median ms", "max ms"):
        table.add_column(column, justify="right")
    table.add_column("ratio (ours / peer)", justify="right")
    previous = None
    for r in rows:
        missing = [key for key in ROW_KEYS if key not in r]
        if missing:
            raise ValueError(f"benchmark row {r!r} lacks {missing}")
        if previous is not None and r["benchmark"] != previous:
            table.add_section()
        previous = r["benchmark"]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        table.add_row(
            r["benchmark"],
            r["case"],
            _ms(r["min_ms"]),
            _ms(r["median_ms"]),
            _ms(r["max_ms"]),
            ratio,
        )
    return table


def scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summarise the rows measured at several sizes (``op``/``impl``/``n``): one per (op, n).

    ``vs_raw`` = xpersist_sql median / raw median at that size; ``vs_smallest`` = xpersist_sql
    median / its median at the smallest size (1.0 there); ``flat`` and ``near_raw`` say whether
    the targets (:data:`FLAT_TARGET`, :data:`VS_RAW_TARGET`) are met. ``vs_raw_min`` and
    ``vs_smallest_min`` are the same ratios on the minimums (the fastest call of each), which a
    busy machine disturbs less. ``near_raw`` is None for an operation whose rows say
    ``vs_raw_target: False`` (its raw peer gives the scale, no target).
    """
    medians: dict[tuple[str, str, int], float] = {}
    minimums: dict[tuple[str, str, int], float] = {}
    # operations whose raw peer is shown for scale only (``vs_raw_target: False``)
    untargeted = {r["op"] for r in rows if r.get("vs_raw_target") is False}
    for r in rows:
        if {"op", "impl", "n"} <= r.keys():
            medians[(r["op"], r["impl"], r["n"])] = r["median_ms"]
            minimums[(r["op"], r["impl"], r["n"])] = r["min_ms"]
    ops = list(dict.fromkeys(op for op, _, _ in medians))
    summary = []
    for op in ops:
        sizes = sorted({n for o, impl, n in medians if o == op and impl != "raw sqlite3"})
        impls = {impl for o, impl, _ in medians if o == op}
        ours_impl = next(i for i in impls if i != "raw sqlite3")
        smallest = medians[(op, ours_impl, sizes[0])]
        smallest_min = minimums[(op, ours_impl, sizes[0])]
        for n in sizes:
            ours = medians[(op, ours_impl, n)]
            raw = medians.get((op, "raw sqlite3", n))
            vs_raw = None if raw is None or raw <= 0 else ours / raw
            raw_min = minimums.get((op, "raw sqlite3", n))
            ours_min = minimums[(op, ours_impl, n)]
            summary.append(
                {
                    "op": op,
                    "n": n,
                    "ours_median_ms": ours,
                    "raw_median_ms": raw,
                    "vs_raw": vs_raw,
                    "vs_smallest": ours / smallest,
                    "flat": ours / smallest <= FLAT_TARGET,
                    "near_raw": (
                        None if op in untargeted else vs_raw is not None and vs_raw <= VS_RAW_TARGET
                    ),
                    # the same on the fastest call of each: less sensitive to a busy machine
                    "vs_raw_min": None if not raw_min else ours_min / raw_min,
                    "vs_smallest_min": ours_min / smallest_min,
                }
            )
    return summary


def render_scaling(summary: list[dict[str, Any]], *, quick: bool) -> Table:
    """Return the rich table of :func:`scaling`."""
    table = Table(
        title=f"latency against index size ({'quick' if quick else '--full'})",
        caption=(
            f"medians; targets: each size within {FLAT_TARGET}x of the smallest, at most "
            f"{VS_RAW_TARGET}x raw sqlite3 returning the same rows (red: missed). (min): the "
            "same ratios on the fastest calls"
        ),
    )
    for column in ("operation", "rows", "xpersist_sql ms", "raw sqlite3 ms"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    table.add_column("x raw", justify="right")
    table.add_column("x smallest", justify="right")
    table.add_column("x raw (min)", justify="right")
    table.add_column("x smallest (min)", justify="right")
    previous = None
    for s in summary:
        if previous is not None and s["op"] != previous:
            table.add_section()
        previous = s["op"]
        vs_raw = "-" if s["vs_raw"] is None else f"{s['vs_raw']:.2f}"
        table.add_row(
            s["op"],
            f"{s['n']:,}",
            _ms(s["ours_median_ms"]),
            "-" if s["raw_median_ms"] is None else _ms(s["raw_median_ms"]),
            vs_raw if s["near_raw"] is not False else f"[red]{vs_raw}",
            f"{s['vs_smallest']:.2f}" if s["flat"] else f"[red]{s['vs_smallest']:.2f}",
            "-" if s["vs_raw_min"] is None else f"{s['vs_raw_min']:.2f}",
            f"{s['vs_smallest_min']:.2f}",
        )
    return table


def plot(rows: list[dict[str, Any]], path: Path, *, quick: bool) -> bool:
    """Draw median and minimum latency against index size, one panel per operation.

    Returns False (and draws nothing) when matplotlib is not installed or no row has a size.
    """
    sized = [r for r in rows if {"op", "impl", "n"} <= r.keys()]
    if not sized:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  note: no plot: matplotlib is not installed (pip install -e '.[bench]')")
        return False
    ops = list(dict.fromkeys(r["op"] for r in sized))
    columns = min(2, len(ops))
    lines = (len(ops) + columns - 1) // columns
    fig, axes = plt.subplots(
        lines, columns, figsize=(5.2 * columns, 3.6 * lines), squeeze=False, sharex=True
    )
    for ax, op in zip(axes.flat, ops, strict=False):
        for impl, style in (("xpersist_sql", "o-"), ("raw sqlite3", "s--")):
            points = sorted(
                (r for r in sized if r["op"] == op and r["impl"] == impl), key=lambda r: r["n"]
            )
            if not points:
                continue
            xs = [r["n"] for r in points]
            line = ax.plot(xs, [r["median_ms"] for r in points], style, label=f"{impl}, median")
            ax.plot(
                xs,
                [r["min_ms"] for r in points],
                style[0] + ":",
                color=line[0].get_color(),
                alpha=0.5,
                label=f"{impl}, min",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("artifacts in the index")
        ax.set_ylabel("ms per call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ops) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"xpersist_sql on SQLite: latency against index size ({'quick' if quick else '--full'})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import sqlalchemy

    from xpersist_sql import __version__

    return {
        "xpersist_sql": __version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks; print their tables, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="full sizes and repeats (indexes up to 1e7 rows)"
    )
    size.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # the default
    parser.add_argument("--only", metavar="NAME", help="run only bench_NAME.py (e.g. store)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=DEFAULT_JSON,
        help=f"write the results here (default: {DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        type=Path,
        help=(
            "latency against index size, PNG (default: "
            f"{DOCS_PLOT.relative_to(ROOT)} with --full, else {QUICK_PLOT.relative_to(ROOT)})"
        ),
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    args = parser.parse_args(argv)
    quick = not args.full
    plot_path: Path = args.plot or (QUICK_PLOT if quick else DOCS_PLOT)

    console = Console()
    if console.width < 140:  # a pipe or a narrow terminal: do not wrap the table's cells
        console = Console(width=140)
    modules = discover(args.only)
    if not modules:
        available = ", ".join(
            p.stem.removeprefix("bench_") for p in sorted(HERE.glob("bench_*.py"))
        )
        console.print(f"[red]no benchmark named {args.only!r}; available: {available}")
        return 2
    rows: list[dict[str, Any]] = []
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for name, module in modules.items():
        console.print(f"running [bold]{name}[/bold]{' (quick)' if quick else ' (--full)'}...")
        start = time.perf_counter()
        rows.extend(module.run(quick=quick))
        console.print(f"  {name} done in {time.perf_counter() - start:.1f} s")
    console.print(render(rows, quick=quick))
    summary = scaling(rows)
    if summary:
        console.print(render_scaling(summary, quick=quick))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "mode": "quick" if quick else "full",
        "started_at": started_at,
        "environment": environment(),
        "rows": rows,
        "scaling": summary,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"results written to {args.json}")
    if summary and not args.no_plot and plot(rows, plot_path, quick=quick):
        console.print(f"plot written to {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
