"""``xpersist-sql lineage`` and ``xpersist-sql rm --downstream``, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from typer.testing import CliRunner

from xpersist_sql import CacheStore
from xpersist_sql.cli import app


@pytest.fixture
def chain(store: CacheStore) -> CacheStore:
    """raw -> regrid -> clim, and report from clim and raw; other alone."""

    def put(key: str, *parents: str) -> None:
        store.put(key, {"key": key}, serializer="json", derived_from=list(parents))

    put("raw.json")
    put("regrid.json", "raw.json")
    put("clim.json", "regrid.json")
    put("report.json", "clim.json", "raw.json")
    put("other.json")
    return store


def where(store: CacheStore) -> list[str]:
    options = ["--store", store.path]
    if not store.database_url.startswith("sqlite"):
        options += ["--db", store.database_url]
    return options


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def assert_user_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- lineage ---------------------------------------------------------------------------------
def test_lineage_tree_upstream(runner: CliRunner, chain: CacheStore) -> None:
    result = invoke(runner, "lineage", "report.json", *where(chain))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("report.json")
    names = [line.strip("│├└─ ").split()[0] for line in lines[1:]]
    assert names[:2] == ["clim.json", "regrid.json"]
    assert set(names) == {"clim.json", "regrid.json", "raw.json"}
    assert "(shown above)" in result.stdout  # raw.json, reached twice
    assert "3 artifacts upstream" in result.stderr


def test_lineage_json_and_depth(runner: CliRunner, chain: CacheStore) -> None:
    result = invoke(runner, "lineage", "raw.json", "--downstream", "--json", *where(chain))
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["key"] == "raw.json" and document["direction"] == "downstream"
    assert [a["key"] for a in document["artifacts"]] == ["regrid.json", "report.json", "clim.json"]
    assert document["edges"] == [
        {"parent": "clim.json", "child": "report.json"},
        {"parent": "raw.json", "child": "regrid.json"},
        {"parent": "raw.json", "child": "report.json"},
        {"parent": "regrid.json", "child": "clim.json"},
    ]
    shallow = invoke(
        runner, "lineage", "raw.json", "--downstream", "--depth", "1", "--json", *where(chain)
    )
    document = json.loads(shallow.stdout)
    assert [a["key"] for a in document["artifacts"]] == ["regrid.json", "report.json"]
    assert document["depth"] == 1
    assert len(document["edges"]) == 2


def test_lineage_graph_formats(runner: CliRunner, chain: CacheStore) -> None:
    mermaid = invoke(runner, "lineage", "clim.json", "--format", "mermaid", *where(chain))
    assert mermaid.exit_code == 0, mermaid.stderr
    assert mermaid.stdout == (
        'flowchart TD\n    n0["clim.json"]\n    n1["raw.json"]\n    n2["regrid.json"]\n'
        "    n1 --> n2\n    n2 --> n0\n"
    )
    dot = invoke(runner, "lineage", "clim.json", "--format", "dot", *where(chain))
    assert dot.stdout.startswith("digraph lineage {")
    assert '"regrid.json" -> "clim.json";' in dot.stdout


def test_lineage_errors(runner: CliRunner, chain: CacheStore) -> None:
    assert_user_error(invoke(runner, "lineage", "missing.json", *where(chain)), "missing.json")
    assert_user_error(
        invoke(runner, "lineage", "raw.json", "--depth", "0", *where(chain)), "--depth"
    )
    assert_user_error(
        invoke(runner, "lineage", "raw.json", "--depth", "x", *where(chain)), "--depth"
    )
    assert_user_error(
        invoke(runner, "lineage", "raw.json", "--format", "svg", *where(chain)), "mermaid, dot"
    )
    alone = invoke(runner, "lineage", "other.json", *where(chain))
    assert alone.exit_code == 0
    assert alone.stdout.splitlines()[0].startswith("other.json")
    assert "0 artifacts upstream" in alone.stderr


# -- rm --downstream -------------------------------------------------------------------------
def test_rm_downstream_dry_run_then_for_real(runner: CliRunner, chain: CacheStore) -> None:
    everything = chain.keys()
    dry = invoke(runner, "rm", "regrid.json", "--downstream", "--dry-run", *where(chain))
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete regrid.json",
        "would delete clim.json",
        "would delete report.json",
    ]
    assert chain.keys() == everything
    as_json = invoke(
        runner, "rm", "regrid.json", "--downstream", "--dry-run", "--json", *where(chain)
    )
    assert json.loads(as_json.stdout)["deleted"] == ["regrid.json", "clim.json", "report.json"]
    assert chain.keys() == everything

    declined = invoke(runner, "rm", "regrid.json", "--downstream", *where(chain), input="n\n")
    assert declined.exit_code == 1
    assert chain.keys() == everything

    done = invoke(runner, "rm", "regrid.json", "--downstream", "--yes", "--json", *where(chain))
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["deleted"] == ["regrid.json", "clim.json", "report.json"]
    assert report["failures"] == []
    assert chain.keys() == ["other.json", "raw.json"]
    for key in ("other.json", "raw.json"):
        assert os.path.exists(chain.payload_url(key))
    for key in report["deleted"]:
        assert not os.path.exists(chain.payload_url(key))


def test_rm_downstream_of_a_leaf_asks_nothing(runner: CliRunner, chain: CacheStore) -> None:
    result = invoke(runner, "rm", "report.json", "--downstream", *where(chain))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["deleted report.json"]
    assert "report.json" not in chain


def test_rm_downstream_errors(runner: CliRunner, chain: CacheStore) -> None:
    assert_user_error(
        invoke(runner, "rm", "--downstream", "--key", "*", *where(chain)), "takes KEYS"
    )
    missing = invoke(runner, "rm", "missing.json", "--downstream", "--yes", *where(chain))
    assert missing.exit_code == 2
    assert "missing.json" in missing.stderr
    # several keys, one derived from another: each removed once
    both = invoke(
        runner, "rm", "raw.json", "clim.json", "--downstream", "--yes", "--json", *where(chain)
    )
    assert both.exit_code == 0, both.stderr
    assert sorted(json.loads(both.stdout)["deleted"]) == [
        "clim.json",
        "raw.json",
        "regrid.json",
        "report.json",
    ]
    assert chain.keys() == ["other.json"]
