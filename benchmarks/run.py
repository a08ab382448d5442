"""Run the benchmarks and print one table of timings with ratios against peers.

Every ``benchmarks/bench_<name>.py`` module exposes ``run(quick: bool) -> list[dict]``; each row
has the keys ``benchmark``, ``case``, ``min_ms``, ``median_ms``, ``max_ms`` and ``ratio``.
``ratio`` is this project's median divided by the peer's median for the same operation (so
``2.0`` means xpersist_sql takes twice as long as that peer, ``0.5`` half as long); it is
``None`` on the rows that measure xpersist_sql itself.

Usage::

    python benchmarks/run.py            # everything, full size
    python benchmarks/run.py --quick    # small data, fewer repeats
    python benchmarks/run.py --only store
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROW_KEYS = ("benchmark", "case", "min_ms", "median_ms", "max_ms", "ratio")


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
        title=f"xpersist_sql benchmarks{' (--quick)' if quick else ''}",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and print their table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small data and fewer repeats")
    parser.add_argument("--only", metavar="NAME", help="run only bench_NAME.py (e.g. store)")
    args = parser.parse_args(argv)

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
    for name, module in modules.items():
        console.print(f"running [bold]{name}[/bold]{' (quick)' if args.quick else ''}...")
        start = time.perf_counter()
        rows.extend(module.run(quick=args.quick))
        console.print(f"  {name} done in {time.perf_counter() - start:.1f} s")
    console.print(render(rows, quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
