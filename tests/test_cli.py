"""The xpersist-sql command line, through typer's runner and as real subprocesses."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.helpers import run_cli
from xpersist_sql import CacheStore
from xpersist_sql.cli import app
from xpersist_sql.db.engine import create_index_engine, redact_url
from xpersist_sql.db.schema import current_revision, head_revision, run_alembic
from xpersist_sql.db.tables import ARTIFACTS, TAGS
from xpersist_sql.marker import HIDDEN_DIR, MARKER_NAME

T0 = datetime(2021, 12, 14, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(make_store: Any) -> CacheStore:
    """Four artifacts of two flows, a day apart (oldest first), on the parametrised backend."""
    store: CacheStore = make_store()
    rows = [
        ("runs/a1.json", "flow-a", "get_data", ["nightly"], 1),
        ("runs/a2.json", "flow-a", "clean", ["nightly", "big"], 22),
        ("runs/b1.json", "flow-b", "get_data", [], 333),
        ("other.pkl", None, None, [], 4),
    ]
    for day, (key, flow, task, tags, value) in enumerate(rows):
        metadata: dict[str, Any] = {"task_tags": tags, "experiment": "ctrl" if day % 2 else 7}
        if flow:
            metadata.update(flow_name=flow, task_name=task)
        store.put(
            key,
            "x" * value,
            serializer="pickle" if key.endswith("pkl") else "json",
            additional_metadata=metadata,
        )
        with store.engine.begin() as conn:
            artifact_id = conn.scalar(sa.select(ARTIFACTS.c.id).where(ARTIFACTS.c.key == key))
            when = T0 + timedelta(days=day)
            conn.execute(
                sa.update(ARTIFACTS).where(ARTIFACTS.c.id == artifact_id).values(created_at=when)
            )
            conn.execute(
                sa.update(TAGS).where(TAGS.c.artifact_id == artifact_id).values(created_at=when)
            )
    return store


def where(store: CacheStore) -> list[str]:
    """The --store/--db options that select ``store``."""
    options = ["--store", store.path]
    if not store.database_url.startswith("sqlite"):
        options += ["--db", store.database_url]
    return options


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
    return result


def assert_user_error(result: Any, *fragments: str) -> None:
    """A usage or runtime error: exit status 2 and one line on stderr, no traceback."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def listed(result: Any) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return [artifact["key"] for artifact in json.loads(result.stdout)]


# -- ls / query ------------------------------------------------------------------------------
def test_ls_table(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "ls", *where(store))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["KEY", "FLOW", "TASK", "SERIALIZER"]
    assert [line.split()[0] for line in lines[1:]] == [
        "other.pkl",
        "runs/b1.json",
        "runs/a2.json",
        "runs/a1.json",
    ]
    assert "flow-a" in lines[3] and "clean" in lines[3] and "nightly, big" in lines[3]
    assert "2021-12-15 08:00:00" in lines[3]
    assert result.stderr.strip() == "4 artifacts"


def test_ls_filters(runner: CliRunner, store: CacheStore) -> None:
    opts = where(store)
    assert listed(invoke(runner, "ls", "--json", "--flow", "flow-a", *opts)) == [
        "runs/a2.json",
        "runs/a1.json",
    ]
    assert listed(invoke(runner, "query", "--json", "--task-name", "get_data", *opts)) == [
        "runs/b1.json",
        "runs/a1.json",
    ]
    assert listed(invoke(runner, "ls", "--json", "--tag", "nightly", "--tag", "big", *opts)) == [
        "runs/a2.json"
    ]
    assert listed(invoke(runner, "ls", "--json", "--key", "runs/?1.json", *opts)) == [
        "runs/b1.json",
        "runs/a1.json",
    ]
    assert listed(invoke(runner, "ls", "--json", "--serializer", "pickle", *opts)) == ["other.pkl"]
    assert listed(invoke(runner, "ls", "--json", "--meta", "experiment=ctrl", *opts)) == [
        "other.pkl",
        "runs/a2.json",
    ]
    assert listed(invoke(runner, "ls", "--json", "--meta", "experiment=7", *opts)) == [
        "runs/b1.json",
        "runs/a1.json",
    ]
    assert listed(invoke(runner, "ls", "--json", "--meta", 'experiment="7"', *opts)) == []
    since = invoke(runner, "ls", "--json", "--since", "2021-12-15", "--until", "2021-12-17", *opts)
    assert listed(since) == ["runs/b1.json", "runs/a2.json"]
    assert listed(invoke(runner, "ls", "--json", "--since", "1d", *opts)) == []
    assert listed(invoke(runner, "ls", "--json", "-n", "1", "--oldest", *opts)) == ["runs/a1.json"]


def test_ls_json_is_the_query_result(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "ls", "--json", "--flow", "flow-a", *where(store))
    expected = [a.model_dump(mode="json") for a in store.query(flow_name="flow-a")]
    assert json.loads(result.stdout) == expected


def test_ls_empty(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "ls", "--flow", "nothing", *where(store))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.strip() == "0 artifacts"


def test_store_from_the_environment(runner: CliRunner, store: CacheStore) -> None:
    env = {"XPERSIST_SQL_STORE": store.path}
    if not store.database_url.startswith("sqlite"):
        env["XPERSIST_SQL_DATABASE_URL"] = store.database_url
    result = runner.invoke(app, ["ls", "--json", "--tag", "big"], env=env)
    assert listed(result) == ["runs/a2.json"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        # --since / --until: the option's name and the accepted forms, never Python's words
        (["ls", "--since", "last tuesday"], ["--since 'last tuesday' is not a date", "7d"]),
        (["ls", "--until", "2021-02-30"], ["--until '2021-02-30' is not a valid date", "day"]),
        (["ls", "--since", "2021-12-17T25:00"], ["--since '2021-12-17T25:00'", "hour"]),
        (["ls", "--since", "99999999d"], ["--since '99999999d' reaches back before the year 1"]),
        (["ls", "--since", "1e400d"], ["--since '1e400d' is not a date, a time or a duration"]),
        (["ls", "--since", "99999999999999d"], ["--since '99999999999999d'", "too large"]),
        (["ls", "--until", "-5d"], ["--until '-5d' is a negative duration"]),
        (["ls", "--since", "2021-12-17", "--until", "2021-12-16"], ["is after --until"]),
        (["stats", "--since", "someday"], ["--since 'someday' is not a date"]),
        (["rm", "--until", "2021-13-01"], ["--until '2021-13-01' is not a valid date"]),
        # --limit: a whole number from 0 to 2**63 - 1
        (["ls", "--limit", "-1"], ["--limit -1 is out of range", "from 0 to"]),
        (["ls", "-n", "9223372036854775808"], ["--limit 9223372036854775808 is out of range"]),
        (["ls", "-n", "abc"], ["--limit 'abc' is not a whole number"]),
        (["ls", "-n", "1.5"], ["--limit '1.5' is not a whole number"]),
        (["ls", "--meta", "novalue"], ["--meta 'novalue' is not NAME=VALUE"]),
        (["ls", "--meta", "x=1e400"], ["--meta 'x=1e400'", "beyond the range of a number"]),
        (["ls", "--meta", f"x={2**64}"], ["--meta 'x=18446744073709551616'", "64-bit"]),
        (["show", "missing.json"], ["key 'missing.json' not found"]),
        (["rm"], ["rm needs KEYS or at least one filter"]),
        (["rm", "a.json", "--flow", "f"], ["either KEYS or filters"]),
        (["rm", "../escape"], ["invalid key '../escape'"]),
        (["ls", "--db", "not a url"], ["not a url"]),
        (["db", "downgrade", "zzz"], ["unknown revision 'zzz'", "0001", "head"]),
        (["db", "upgrade", "nope"], ["unknown revision 'nope'", "0001", "head"]),
        (["db", "upgrade", "0001:0003"], ["'0001:0003' is a range of revisions"]),
        (["db", "upgrade", "+9"], ["cannot upgrade", "'+9'"]),
        (["db", "downgrade", "-9"], ["cannot downgrade", "'-9'"]),
        (["gc", "--older-than", "soon"], ["--older-than 'soon'", "as a duration", "'PT12H'"]),
        (["gc", "--older-than", "-5m"], ["--older-than '-5m'", "must not be negative"]),
        (["gc", "--older-than", "1000000000d"], ["--older-than '1000000000d'", "too large"]),
        (["gc", "--older-than", "1e400"], ["--older-than '1e400'"]),
        (["gc", "--older-than", "nan"], ["--older-than 'nan'"]),
        (["evict", "--max-size", "lots"], ["--max-size 'lots'", "as a size"]),
        (["evict", "--max-size", "-1"], ["--max-size '-1'", "as a size"]),
        (["evict", "--max-size", "1e400"], ["--max-size '1e400'"]),
    ],
)
def test_user_errors_are_one_line(
    runner: CliRunner, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("a.json", 1, serializer="json")
    store.close()
    result = invoke(runner, *args, "--store", str(tmp_path / "s"))
    assert_user_error(result, *fragments)


def test_remote_store_without_db_is_a_user_error(runner: CliRunner) -> None:
    assert_user_error(invoke(runner, "ls", "--store", "s3://bucket/cache"), "database_url")


# -- show ------------------------------------------------------------------------------------
def test_show(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "show", "runs/a2.json", *where(store))
    assert result.exit_code == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines() if " " in line)
    assert fields["key"].strip() == "runs/a2.json"
    assert fields["serializer"].strip() == "json"
    assert '"flow_name": "flow-a"' in result.stdout
    assert fields["payload"].strip() == store.payload_url("runs/a2.json")

    data = json.loads(invoke(runner, "show", "runs/a2.json", "--json", *where(store)).stdout)
    artifact = store.get_artifact("runs/a2.json")
    assert data == {**artifact.model_dump(mode="json"), "payload": store.payload_url(artifact.key)}


# -- rm --------------------------------------------------------------------------------------
def test_rm_keys(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "rm", "runs/a1.json", "runs/b1.json", "--dry-run", *where(store))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["would delete runs/a1.json", "would delete runs/b1.json"]
    assert len(store) == 4

    result = invoke(runner, "rm", "runs/a1.json", "runs/b1.json", *where(store))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["deleted runs/a1.json", "deleted runs/b1.json"]
    assert sorted(store.keys()) == ["other.pkl", "runs/a2.json"]
    assert not os.path.exists(store.payload_url("runs/a1.json"))


def test_rm_missing_key_fails_but_deletes_the_others(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "rm", "nope.json", "other.pkl", *where(store))
    assert result.exit_code == 2  # a runtime error, after deleting what could be deleted
    assert "key 'nope.json' not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert "other.pkl" not in store


def test_rm_by_filter_asks_first(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "rm", "--flow", "flow-a", *where(store), input="n\n")
    assert result.exit_code == 1  # declined: nothing done, nothing failed
    assert "nothing deleted" in result.stderr
    assert "Delete these 2 artifacts" in result.stderr
    assert "runs/a1.json" in result.stdout and "runs/a2.json" in result.stdout
    assert len(store) == 4

    result = invoke(runner, "rm", "--flow", "flow-a", *where(store), input="y\n")
    assert result.exit_code == 0, result.stderr
    assert sorted(store.keys()) == ["other.pkl", "runs/b1.json"]

    result = invoke(runner, "rm", "--key", "*.pkl", "--yes", *where(store))
    assert result.exit_code == 0
    assert "deleted other.pkl" in result.stdout
    assert store.keys() == ["runs/b1.json"]


def test_rm_by_filter_dry_run_and_no_match(runner: CliRunner, store: CacheStore) -> None:
    result = invoke(runner, "rm", "--tag", "nightly", "--dry-run", *where(store))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["would delete runs/a2.json", "would delete runs/a1.json"]
    assert len(store) == 4
    result = invoke(runner, "rm", "--tag", "none-such", "--yes", *where(store))
    assert result.exit_code == 0
    assert "no artifact matches" in result.stderr


# -- stats -----------------------------------------------------------------------------------
def test_stats(runner: CliRunner, store: CacheStore) -> None:
    data = json.loads(invoke(runner, "stats", "--json", *where(store)).stdout)
    sizes = {a.key: a.size_bytes or 0 for a in store.query()}
    assert data["total"] == {"count": 4, "size_bytes": sum(sizes.values())}
    flows = {row["value"]: (row["count"], row["size_bytes"]) for row in data["flow_name"]}
    assert flows == {
        "flow-a": (2, sizes["runs/a1.json"] + sizes["runs/a2.json"]),
        "flow-b": (1, sizes["runs/b1.json"]),
        None: (1, sizes["other.pkl"]),
    }
    assert {row["value"]: row["count"] for row in data["task_name"]} == {
        "get_data": 2,
        "clean": 1,
        None: 1,
    }
    assert {row["value"]: row["count"] for row in data["serializer"]} == {"json": 3, "pickle": 1}
    filtered = json.loads(
        invoke(runner, "stats", "--json", "--tag", "nightly", *where(store)).stdout
    )
    assert filtered["total"]["count"] == 2

    table = invoke(runner, "stats", *where(store))
    assert table.exit_code == 0
    assert table.stdout.startswith("4 artifacts")
    assert "by flow_name" in table.stdout and "flow-a" in table.stdout and "(none)" in table.stdout


# -- db --------------------------------------------------------------------------------------
def test_db_commands_on_an_old_index(runner: CliRunner, store: CacheStore) -> None:
    opts = where(store)
    store.close()
    result = invoke(runner, "db", "downgrade", "0001", *opts)
    assert result.exit_code == 0, result.stderr
    assert f"from {head_revision()} to 0001" in result.stdout

    assert_user_error(invoke(runner, "ls", *opts), "'0001'", "xpersist-sql db upgrade")
    current = invoke(runner, "db", "current", *opts)
    assert current.exit_code == 0, current.stderr
    assert current.stdout.startswith("0001 (") and "db upgrade" in current.stdout

    history = invoke(runner, "db", "history", *opts)
    assert history.exit_code == 0, history.stderr
    assert "<base> -> 0001 (current): Create the artifacts table." in history.stdout
    assert f"-> {head_revision()} (head)" in history.stdout

    result = invoke(runner, "db", "upgrade", *opts)
    assert result.exit_code == 0, result.stderr
    assert f"from 0001 to {head_revision()}" in result.stdout
    assert invoke(runner, "db", "current", *opts).stdout.strip() == f"{head_revision()} (head)"
    assert "is already at revision" in invoke(runner, "db", "upgrade", *opts).stdout
    assert len(listed(invoke(runner, "ls", "--json", *opts))) == 4

    result = invoke(runner, "db", "downgrade", "-1", *opts)
    assert result.exit_code == 0, result.stderr
    engine = create_index_engine(store.database_url)
    with engine.connect() as conn:
        assert current_revision(conn) not in (None, head_revision())
    engine.dispose()
    result = invoke(runner, "db", "downgrade", "base", *opts)
    assert "to base (no schema)" in result.stdout
    assert_user_error(invoke(runner, "db", "downgrade", "base", *opts), "no xpersist_sql schema")


def test_db_upgrade_of_a_store_from_before_store_markers(
    runner: CliRunner, store: CacheStore
) -> None:
    """An index at 0003 has a store without a marker: ``db upgrade --store --db`` takes it."""
    opts = ["--store", store.path, "--db", store.database_url]
    store.close()
    assert invoke(runner, "db", "downgrade", "0003", *opts).exit_code == 0
    (Path(store.path) / HIDDEN_DIR / MARKER_NAME).unlink()
    # (the store itself refuses to open, naming the remedy)
    assert_user_error(invoke(runner, "ls", *opts), "xpersist-sql db upgrade --store")

    current = invoke(runner, "db", "current", *opts)
    assert current.exit_code == 0, current.stderr
    assert current.stdout.startswith("0003 (")
    result = invoke(runner, "db", "upgrade", *opts)
    assert result.exit_code == 0, result.stderr
    assert f"from 0003 to {head_revision()}" in result.stdout
    assert (Path(store.path) / HIDDEN_DIR / MARKER_NAME).exists()
    assert len(listed(invoke(runner, "ls", "--json", *opts))) == 4

    typo = ["--store", store.path + "-typo", "--db", store.database_url]
    for command in (["current"], ["upgrade"], ["history"], ["downgrade", "-1"]):
        assert_user_error(invoke(runner, "db", *command, *typo), "no xpersist_sql store at")
    assert not Path(store.path + "-typo").exists()


def test_db_upgrade_of_an_empty_database(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bare.sqlite"
    result = invoke(runner, "db", "current", "--db", url)
    assert result.exit_code == 0, result.stderr
    assert "no xpersist_sql schema" in result.stdout
    assert not (tmp_path / "bare.sqlite").exists()  # reading creates nothing

    result = invoke(runner, "db", "upgrade", "0001", "--db", url)
    assert result.exit_code == 0, result.stderr
    assert "from an empty database to 0001" in result.stdout
    assert invoke(runner, "db", "current", "--db", url).stdout.startswith("0001 (")


def test_db_commands_json(runner: CliRunner, store: CacheStore) -> None:
    opts = where(store)
    store.close()
    head = head_revision()
    current = invoke(runner, "db", "current", "--json", *opts)
    assert current.exit_code == 0, current.stderr
    url = json.loads(current.stdout)["url"]
    assert json.loads(current.stdout) == {
        "url": url,
        "current": head,
        "head": head,
        "state": "head",
    }
    assert url == redact_url(store.database_url)

    down = invoke(runner, "db", "downgrade", "0001", "--json", *opts)
    assert down.exit_code == 0, down.stderr
    assert json.loads(down.stdout) == {"url": url, "before": head, "after": "0001"}
    up = invoke(runner, "db", "upgrade", "--json", *opts)
    assert up.exit_code == 0, up.stderr
    assert json.loads(up.stdout) == {"url": url, "before": "0001", "after": head}
    again = json.loads(invoke(runner, "db", "upgrade", "--json", *opts).stdout)
    assert again == {"url": url, "before": head, "after": head}

    history = json.loads(invoke(runner, "db", "history", "--json", *opts).stdout)
    assert history[0] == {**history[0], "revision": head, "head": True, "current": True}
    assert history[-1] == {
        "revision": "0001",
        "down_revision": None,
        "head": False,
        "current": False,
        "message": "Create the artifacts table.",
    }


def test_db_errors_never_show_the_password(runner: CliRunner) -> None:
    result = invoke(runner, "db", "current", "--db", "postgresql+psycopg://u:s3cret@127.0.0.1:1/x")
    assert_user_error(result, "cannot connect", "127.0.0.1:1")
    assert "s3cret" not in result.stdout + result.stderr


def test_db_current_of_a_path_that_is_not_a_store(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "db", "current", "--store", str(tmp_path / "new"))
    assert_user_error(result, "no xpersist_sql store at")
    assert not (tmp_path / "new").exists()


def test_db_history_without_a_store(runner: CliRunner) -> None:
    result = invoke(runner, "db", "history")
    assert result.exit_code == 0
    assert "<base> -> 0001: Create the artifacts table." in result.stdout
    assert "(current)" not in result.stdout


def test_db_upgrade_keeps_rows(runner: CliRunner, store: CacheStore) -> None:
    url = store.database_url
    store.close()
    engine = create_index_engine(url)
    run_alembic(engine, "downgrade", "0001")
    engine.dispose()
    assert invoke(runner, "db", "upgrade", *where(store)).exit_code == 0
    assert listed(invoke(runner, "ls", "--json", "--tag", "nightly", *where(store))) == [
        "runs/a2.json",
        "runs/a1.json",
    ]


# -- help ------------------------------------------------------------------------------------
EVERY_COMMAND = [
    [],
    ["ls"],
    ["query"],
    ["show"],
    ["rm"],
    ["stats"],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "current"],
    ["db", "history"],
    ["gc"],
    ["verify"],
    ["evict"],
    ["import-legacy"],
]
#: A Python type where a help text should name the value (typer's ``<str>``, ``<list[str]>``).
TYPE_PLACEHOLDER = re.compile(r"<(str|int|float|bool|list\[[^>]*\]|[a-z]+\|[a-z|]+)>|\{[a-z_]+\}")


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: " ".join(c) or "xpersist-sql")
def test_help_everywhere(runner: CliRunner, command: list[str]) -> None:
    result = invoke(runner, *command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")
    if command and command not in (["db"], ["import-legacy"]):
        assert "--store ROOT" in result.stdout and "--db URL" in result.stdout
    if command not in ([], ["db"]):
        assert "--json" in result.stdout


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: " ".join(c) or "xpersist-sql")
def test_help_names_values_not_python_types(runner: CliRunner, command: list[str]) -> None:
    text = invoke(runner, *command, "--help").stdout
    assert not TYPE_PLACEHOLDER.search(text), TYPE_PLACEHOLDER.search(text)
    arguments = text.splitlines()[0].split("[OPTIONS]", 1)[1]
    assert arguments == arguments.upper(), arguments  # KEY, [REVISION], [KEY]...


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["show"], ["KEY "]),
        (["rm"], ["KEY... ", "--tag TAG", "--meta NAME=VALUE", "--since WHEN", "--key GLOB"]),
        (["ls"], ["-n, --limit N", "--flow, --flow-name NAME", "--until WHEN"]),
        (["gc"], ["--older-than DURATION"]),
        (["evict"], ["--max-size SIZE"]),
        (["import-legacy"], ["PATH "]),
        (["db", "upgrade"], ["REVISION ", "--sql", "--from REVISION"]),
        (["db", "downgrade"], ["REVISION ", "--sql", "--from REVISION"]),
        (["verify"], ["--refingerprint"]),
    ],
)
def test_help_names_each_value(runner: CliRunner, command: list[str], expected: list[str]) -> None:
    text = invoke(runner, *command, "--help").stdout
    for fragment in expected:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize("command", [[], ["db"]], ids=["xpersist-sql", "db"])
def test_help_documents_the_exit_statuses(runner: CliRunner, command: list[str]) -> None:
    text = " ".join(invoke(runner, *command, "--help").stdout.split())
    assert "Exit status: 0 clean; 1 problems found" in text
    assert "2 usage or runtime error" in text


def test_no_command_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert "Usage: " in result.stdout + result.stderr
    assert "ls" in result.stdout + result.stderr


# -- real processes --------------------------------------------------------------------------
def test_python_m_xpersist_sql(store: CacheStore, tmp_path: Path) -> None:
    result = run_cli("ls", "--json", "--flow", "flow-b", *where(store), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [a["key"] for a in json.loads(result.stdout)] == ["runs/b1.json"]

    result = run_cli("ls", "--since", "yesterday-ish", *where(store), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --since 'yesterday-ish' is not a date")
    assert len(result.stderr.strip().splitlines()) == 1


def test_console_script(store: CacheStore, tmp_path: Path) -> None:
    result = run_cli("rm", "--key", "runs/*", "--yes", *where(store), cwd=tmp_path, script=True)
    assert result.returncode == 0, result.stderr
    assert store.keys() == ["other.pkl"]


# -- every command ---------------------------------------------------------------------------
def test_version(runner: CliRunner) -> None:
    from xpersist_sql import __version__

    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout == f"xpersist-sql {__version__}\n"


READING_COMMANDS = [
    ["ls"],
    ["query", "--json"],
    ["show", "a.json"],
    ["stats"],
    ["rm", "a.json"],
    ["rm", "--key", "*", "--yes"],
    ["gc"],
    ["gc", "--dry-run"],
    ["verify"],
    ["verify", "--repair", "--yes"],
    ["evict", "--max-size", "1GB"],
    ["db", "current"],
    ["db", "history"],
    ["db", "upgrade"],
    ["db", "downgrade", "-1"],
]


@pytest.mark.parametrize("command", READING_COMMANDS, ids=" ".join)
def test_no_command_creates_a_store_on_a_mistyped_path(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    store = CacheStore(tmp_path / "store")
    store.put("a.json", 1, serializer="json")
    store.close()
    result = invoke(runner, *command, "--store", str(tmp_path / "stroe"))
    assert_user_error(result, "no xpersist_sql store at", "stroe")
    assert not (tmp_path / "stroe").exists()

    (tmp_path / "empty").mkdir()
    result = invoke(runner, *command, "--store", str(tmp_path / "empty"))
    assert_user_error(result, "no xpersist_sql store at")
    assert list((tmp_path / "empty").iterdir()) == []


def test_sizes_are_decimal_everywhere(runner: CliRunner, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "s")
    store.put("big.json", "x" * 1498, serializer="json")  # 1500 bytes with the quotes
    store.put("small.json", 1, serializer="json")
    store.close()
    opts = ["--store", str(tmp_path / "s")]
    table = invoke(runner, "ls", *opts)
    assert table.exit_code == 0, table.stderr
    big = next(line for line in table.stdout.splitlines() if line.startswith("big.json"))
    assert " 1.5 kB " in big and "KiB" not in table.stdout
    small = next(line for line in table.stdout.splitlines() if line.startswith("small.json"))
    assert " 1 B " in small

    show = invoke(runner, "show", "big.json", *opts)
    assert "1500 (1.5 kB)" in show.stdout
    stats = invoke(runner, "stats", *opts)
    assert stats.stdout.startswith("2 artifacts, 1.5 kB")
    rm = invoke(runner, "rm", "big.json", "small.json", "--dry-run", *opts)
    assert "would delete 2 of 2 artifacts (1.5 kB)" in rm.stderr


@pytest.mark.parametrize("older_than", ["30", "30s", "30m", "12 h", "P7D", "PT1H", "0"])
def test_gc_reads_every_duration_form(
    runner: CliRunner, store: CacheStore, older_than: str
) -> None:
    result = invoke(runner, "gc", "--dry-run", "--older-than", older_than, *where(store))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("would remove 0 items (0 B)")


def test_rm_json(runner: CliRunner, store: CacheStore) -> None:
    sizes = {a.key: a.size_bytes or 0 for a in store.query()}
    dry = invoke(runner, "rm", "runs/a1.json", "--dry-run", "--json", *where(store))
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "deleted": ["runs/a1.json"],
        "freed_bytes": sizes["runs/a1.json"],
        "failures": [],
    }
    assert len(store) == 4

    result = invoke(runner, "rm", "runs/a1.json", "nope.json", "--json", *where(store))
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["deleted"] == ["runs/a1.json"]
    assert report["freed_bytes"] == sizes["runs/a1.json"]
    assert [failure["key"] for failure in report["failures"]] == ["nope.json"]
    assert "key 'nope.json' not found" in report["failures"][0]["error"]
    assert "runs/a1.json" not in store

    # by filter: the table and the question go to stderr, stdout stays JSON
    asked = invoke(runner, "rm", "--flow", "flow-a", "--json", *where(store), input="y\n")
    assert asked.exit_code == 0, asked.stderr
    # (CliRunner echoes the typed answer on its stdout; a terminal would not)
    assert json.loads(asked.stdout[asked.stdout.index("{") :])["deleted"] == ["runs/a2.json"]
    assert "Delete these 1 artifacts" in asked.stderr and "runs/a2.json" in asked.stderr

    none = invoke(runner, "rm", "--tag", "none-such", "--json", "--yes", *where(store))
    assert none.exit_code == 0
    assert json.loads(none.stdout) == {
        "dry_run": False,
        "deleted": [],
        "freed_bytes": 0,
        "failures": [],
    }


def test_an_unexpected_error_exits_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import xpersist_sql.cli as cli

    def broken(**kwargs: Any) -> None:
        raise LookupError("a bug")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert "LookupError: a bug" in capsys.readouterr().err


def test_command_modules_do_not_import_each_other() -> None:
    import ast

    package = Path(__file__).resolve().parent.parent / "xpersist_sql" / "cli"
    commands = {"query", "rm", "maintenance", "db"}
    for module in commands:
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = {node.module} if node.module else {a.name for a in node.names}
                assert imported <= {"_app", "_common"}, (module, imported)


# -- output that pipes cleanly ---------------------------------------------------------------
def _assert_no_padding(text: str) -> None:
    lines = text.splitlines()
    assert lines, text
    padded = [line for line in lines if line != line.rstrip()]
    assert not padded, padded[:3]


def test_show_and_ls_pipe_without_padding(store: CacheStore, tmp_path: Path) -> None:
    """Piped, a table has the width of its content: no line padded to the widest one."""
    long_note = "a long note " * 30  # ~360 characters: one wide row
    store.put("wide.json", 1, serializer="json", additional_metadata={"note": long_note})
    opts = where(store)
    show = run_cli("show", "wide.json", *opts, cwd=tmp_path)  # stdout is a pipe
    assert show.returncode == 0, show.stderr
    _assert_no_padding(show.stdout)
    lines = show.stdout.splitlines()
    assert next(line for line in lines if line.startswith("key")).endswith("wide.json")
    assert max(len(line) for line in lines) > 300  # piped, long values are not folded
    assert sum(len(line) > 100 for line in lines) == 1  # ...and only that row is long

    listing = run_cli("ls", *opts, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    _assert_no_padding(listing.stdout)
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == [
        "wide.json",
        "other.pkl",
        "runs/b1.json",
        "runs/a2.json",
        "runs/a1.json",
    ]
    stats = run_cli("stats", *opts, cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    _assert_no_padding(stats.stdout)


# -- verify ----------------------------------------------------------------------------------
def test_verify_exit_statuses(runner: CliRunner, store: CacheStore, tmp_path: Path) -> None:
    """0 clean, 1 problems found, 2 could not run (not a store, an unreachable database)."""
    opts = where(store)
    clean = invoke(runner, "verify", *opts)
    assert clean.exit_code == 0, clean.stderr
    assert "checked 4 artifacts: 0 missing" in clean.stderr

    os.remove(store.payload_url("runs/a1.json"))
    found = invoke(runner, "verify", "--json", *opts)
    assert found.exit_code == 1, found.stderr
    report = json.loads(found.stdout)
    assert report == {
        "checked": 4,
        "ok": False,
        "problems": [
            {"key": "runs/a1.json", "problem": "missing", "detail": report["problems"][0]["detail"]}
        ],
        "repaired": [],
        "refingerprinted": [],
    }
    assert "verify --repair" in found.stderr

    assert_user_error(invoke(runner, "verify", "--store", str(tmp_path / "nope")), "no xpersist")
    unreachable = ["--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "--store", store.path]
    assert_user_error(invoke(runner, "verify", *unreachable), "cannot connect")
    assert_user_error(invoke(runner, "verify", "--json", *unreachable), "cannot connect")


def test_verify_refingerprint_after_a_copy(
    runner: CliRunner, make_store: Any, tmp_path: Path
) -> None:
    """Touched payloads (what cp -r does) are re-recorded; a corrupt one never is."""
    store: CacheStore = make_store(checksum=True)
    store.put("sum/a.json", [1, 2, 3], serializer="json")
    store.put("sum/b.json", [4, 5, 6], serializer="json")
    plain: CacheStore = make_store(checksum=False)  # (same store, no checksums recorded)
    plain.put("plain.json", {"x": 1}, serializer="json")
    opts = where(store)
    later = datetime.now().timestamp() + 3600
    for key in ("sum/a.json", "sum/b.json", "plain.json"):
        for root, _dirs, files in os.walk(store.payload_url(key)):
            for name in files:
                os.utime(os.path.join(root, name), (later, later))
        if os.path.isfile(store.payload_url(key)):
            os.utime(store.payload_url(key), (later, later))
    with open(store.payload_url("sum/b.json"), "w") as f:  # same size, other content
        f.write("[4, 5, 7]")
    os.utime(store.payload_url("sum/b.json"), (later, later))

    before = invoke(runner, "verify", "--json", *opts)
    assert before.exit_code == 1
    problems = {p["key"]: p["problem"] for p in json.loads(before.stdout)["problems"]}
    assert problems == {"plain.json": "modified", "sum/b.json": "corrupt"}
    assert "verify --refingerprint" in before.stderr

    fixed = invoke(runner, "verify", "--refingerprint", "--json", *opts)
    assert fixed.exit_code == 1, fixed.stderr  # the corrupt payload remains a problem
    report = json.loads(fixed.stdout)
    assert report["refingerprinted"] == ["plain.json", "sum/a.json"]
    assert [(p["key"], p["problem"]) for p in report["problems"]] == [("sum/b.json", "corrupt")]
    assert report["ok"] is False

    after = invoke(runner, "verify", "--json", *opts)
    assert [p["key"] for p in json.loads(after.stdout)["problems"]] == ["sum/b.json"]
    store.delete("sum/b.json")
    table = invoke(runner, "verify", "--refingerprint", *opts)
    assert table.exit_code == 0, table.stderr
    assert "checked 2 artifacts: 0 missing, 0 modified or corrupt" in table.stderr


def test_verify_refingerprint_after_cp_r(runner: CliRunner, tmp_path: Path) -> None:
    """``cp -r`` of a store with its embedded index: verify fails, --refingerprint fixes it."""
    original = CacheStore(tmp_path / "original")
    original.put("a.json", {"a": 1}, serializer="json")
    original.put("b.json", {"b": 2}, serializer="json")
    original.close()
    os.utime(tmp_path / "original" / "a.json", (1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "original" / "b.json", (1_000_000_000, 1_000_000_000))
    original = CacheStore(tmp_path / "original")
    assert invoke(runner, "verify", "--store", original.path).exit_code == 1  # (touched)
    assert invoke(runner, "verify", "--refingerprint", "--store", original.path).exit_code == 0
    original.close()

    import subprocess

    subprocess.run(["cp", "-r", str(tmp_path / "original"), str(tmp_path / "copy")], check=True)
    copy = ["--store", str(tmp_path / "copy")]
    assert invoke(runner, "verify", *copy).exit_code == 1
    result = invoke(runner, "verify", "--refingerprint", "--json", *copy)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["refingerprinted"] == ["a.json", "b.json"]
    assert invoke(runner, "verify", *copy).exit_code == 0


# -- --json everywhere -----------------------------------------------------------------------
JSON_KEYS: list[tuple[list[str], type, set[str]]] = [
    (["ls"], list, set()),
    (["query"], list, set()),
    (["show", "runs/a1.json"], dict, {"key", "serializer", "payload", "size_bytes"}),
    (["stats"], dict, {"total", "flow_name", "task_name", "serializer"}),
    (["rm", "runs/a1.json", "--dry-run"], dict, {"dry_run", "deleted", "freed_bytes", "failures"}),
    (["gc", "--dry-run"], dict, {"dry_run", "total_bytes", "items", "skipped"}),
    (
        ["verify"],
        dict,
        {"checked", "ok", "problems", "repaired", "refingerprinted"},
    ),
    (
        ["evict", "--max-size", "1GB", "--dry-run"],
        dict,
        {
            "dry_run",
            "max_size",
            "size_before",
            "size_after",
            "freed_bytes",
            "evicted",
            "skipped",
        },
    ),
    (["db", "current"], dict, {"url", "current", "head", "state"}),
    (["db", "history"], list, set()),
    (["db", "upgrade"], dict, {"url", "before", "after"}),
    (["db", "upgrade", "--sql"], dict, {"url", "before", "target", "sql"}),
]


@pytest.mark.parametrize(("command", "kind", "keys"), JSON_KEYS, ids=lambda v: str(v))
def test_every_command_prints_json_with_stable_keys(
    runner: CliRunner, store: CacheStore, command: list[str], kind: type, keys: set[str]
) -> None:
    result = invoke(runner, *command, "--json", *where(store))
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)  # stdout is the JSON document alone
    assert isinstance(document, kind)
    if kind is dict:
        assert keys <= set(document), set(document)
        exact = {"stats", "rm", "gc", "verify", "evict", "current", "upgrade"}
        if exact & set(command) and "show" not in command:
            assert set(document) == keys


def test_import_legacy_json(runner: CliRunner, tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    (root / "xpersist_metadata_store").mkdir(parents=True)
    (root / "a.json").write_text("1")
    sidecar = {"key": "a.json", "serializer": "json", "created_at": "2021-12-14T08:00:00"}
    (root / "xpersist_metadata_store" / "a.json.artifact.json").write_text(json.dumps(sidecar))
    result = invoke(runner, "import-legacy", str(root), "--json")
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)) == {
        "path",
        "sidecars",
        "imported",
        "already_indexed",
        "unsupported",
        "skipped",
    }
