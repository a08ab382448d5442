"""Workers of tests/test_boundaries.py that must run in another process.

- :func:`race_puts` is a ``multiprocessing`` (spawn) target: it puts one key per round, every
  round starting at a barrier shared with a rival process that puts an overlapping key.
- Run as a script (``python tests/boundary_worker.py readonly-reader PATH [DB_URL]``), it opens
  the store at PATH with ``readonly=True`` and prints what it could read as one JSON document; the
  tests run it as another user (``nobody``) on a directory that user cannot write.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def race_puts(store: Any, keys: list[str], barrier: Any, results: Any, role: str) -> None:
    """Put ``keys[i]`` in round ``i``, right after the barrier; report each outcome."""
    from xpersist_sql import OverlappingKeyError

    for round_no, key in enumerate(keys):
        barrier.wait(timeout=120)
        try:
            store.put(key, {"round": round_no, "role": role}, serializer="json")
        except OverlappingKeyError as exc:
            results.put((round_no, role, "overlap", str(exc)))
        except BaseException as exc:  # anything else is a failure the test reports
            results.put((round_no, role, "error", f"{type(exc).__name__}: {exc}"))
        else:
            results.put((round_no, role, "ok", key))
    store.close()


def _outcome(call: Any) -> dict[str, Any]:
    try:
        value = call()
    except BaseException as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"value": value}


def readonly_reader(path: str, database_url: str | None) -> dict[str, Any]:
    """Open ``path`` read-only and return everything a reader can learn from it."""
    from xpersist_sql import CacheStore

    store = CacheStore(path, database_url=database_url, readonly=True)
    result: dict[str, Any] = {
        "euid": os.geteuid(),
        "can_write": os.access(path, os.W_OK)
        or os.access(os.path.join(path, ".xpersist_sql"), os.W_OK),
        "keys": store.keys(),
        "len": len(store),
        "contains": "a.json" in store,
        "get": store.get("a.json"),
        "get_nested": store.get("runs/b.json"),
        "frame_rows": len(store.get("table.parquet")),
        "query": [a.key for a in store.query(key="runs/*")],
        "summarize": [(row.value, row.count) for row in store.summarize("serializer")],
        "artifact": store.get_artifact("a.json").key,
    }
    report = store.verify()
    result["verify"] = {"checked": report.checked, "problems": [vars(p) for p in report.problems]}
    dry = store.gc(dry_run=True)
    result["gc_dry_run"] = [vars(item) for item in dry.items]
    result["put"] = _outcome(lambda: store.put("new.json", 1, serializer="json"))
    result["delete"] = _outcome(lambda: store.delete("a.json"))
    result["gc"] = _outcome(lambda: store.gc())
    result["evict"] = _outcome(lambda: store.evict(1))
    result["setitem"] = _outcome(lambda: store.__setitem__("a.json", 2))
    store.close()
    return result


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "readonly-reader":
        database_url = argv[2] if len(argv) > 2 and argv[2] else None
        print(json.dumps(readonly_reader(argv[1], database_url), default=str))
        return 0
    print(f"usage: boundary_worker.py readonly-reader PATH [DB_URL]; got {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
