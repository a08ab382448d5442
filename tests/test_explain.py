"""``CacheStore.explain`` and ``xpersist-sql explain``, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from xpersist_sql import ArtifactNotFoundError, CacheStore
from xpersist_sql.cli import app
from xpersist_sql.db.tables import ARTIFACTS
from xpersist_sql.explain import Explanation
from xpersist_sql.provenance import code_hash


def put(store: CacheStore, key: str, *parents: str, value: Any = None) -> None:
    store.put(
        key,
        {"key": key} if value is None else value,
        serializer="json",
        derived_from=list(parents),
    )


@pytest.fixture
def chain(store: CacheStore) -> CacheStore:
    """raw -> regrid -> clim."""
    put(store, "raw.json")
    put(store, "regrid.json", "raw.json")
    put(store, "clim.json", "regrid.json")
    return store


def test_a_fresh_chain_would_hit(chain: CacheStore) -> None:
    found = chain.explain("clim.json")
    assert isinstance(found, Explanation)
    assert found.would_hit and not found.stale and found.ok and found.reasons == ()
    assert found.key == "clim.json" and found.serializer == "json"
    assert found.payload_present and found.payload_matches and not found.expired
    artifact = chain.get_artifact("clim.json")
    assert found.created_at == artifact.created_at
    assert found.size_bytes == artifact.size_bytes
    assert found.payload_url == chain.payload_url("clim.json")
    [parent] = found.upstream
    assert parent.key == "regrid.json" and parent.status == "unchanged"
    regrid = chain.get_artifact("regrid.json")
    assert parent.recorded_created_at == parent.current_created_at
    assert parent.current_created_at == regrid.created_at.isoformat()
    assert chain.explain("raw.json").upstream == ()  # nothing recorded: nothing upstream
    text = str(found)
    assert text.splitlines()[0] == "clim.json: would hit"
    assert "regrid.json  unchanged" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.key = "other"  # type: ignore[misc]


def test_an_overwritten_upstream_makes_it_stale(chain: CacheStore) -> None:
    before = chain.get_artifact("regrid.json").created_at
    chain.put("regrid.json", {"key": "new"}, serializer="json", on_duplicate_key="overwrite")
    found = chain.explain("clim.json")
    assert found.stale and not found.ok
    assert found.would_hit  # the stored value is still served: staleness is the reason to act
    [parent] = found.upstream
    assert parent.status == "changed"
    assert parent.recorded_created_at == before.isoformat()
    assert parent.current_created_at == chain.get_artifact("regrid.json").created_at.isoformat()
    assert any(
        reason.startswith("stale: upstream 'regrid.json' changed since") for reason in found.reasons
    )
    assert str(found).splitlines()[0] == "clim.json: would hit, but stale"
    # two levels up is not this artifact's business: regrid.json is fresh (a new root)
    assert chain.explain("regrid.json").ok


def test_a_deleted_upstream_is_reported_missing(chain: CacheStore) -> None:
    chain.delete("regrid.json")
    found = chain.explain("clim.json")
    [parent] = found.upstream
    assert parent.status == "missing" and parent.current_created_at is None
    assert found.would_hit and not found.stale and not found.ok
    assert any("'regrid.json' is no longer stored" in reason for reason in found.reasons)


def test_a_deleted_payload_is_not_a_hit(chain: CacheStore) -> None:
    os.remove(chain.payload_url("clim.json"))
    found = chain.explain("clim.json")
    assert not found.payload_present and not found.payload_matches
    assert not found.would_hit and not found.ok
    assert any(reason.startswith("payload missing") for reason in found.reasons)
    assert str(found).splitlines()[0] == "clim.json: would not hit"


def test_a_changed_payload_is_not_a_hit(store: CacheStore) -> None:
    store.put("a.npy", np.arange(4))
    path = Path(store.payload_url("a.npy"))
    np.save(path, np.arange(5))  # rewritten behind the index's back
    found = store.explain("a.npy")
    assert found.payload_present and not found.payload_matches and not found.would_hit
    assert any(reason.startswith("payload changed") for reason in found.reasons)


def test_an_expired_artifact_is_explained_and_not_a_hit(chain: CacheStore) -> None:
    with chain.engine.begin() as conn:  # expire it without waiting
        conn.execute(
            sa.update(ARTIFACTS)
            .where(ARTIFACTS.c.key == "clim.json")
            .values(expires_at=datetime.now(timezone.utc) - timedelta(minutes=1))
        )
    found = chain.explain("clim.json")
    assert found.expired and not found.would_hit and found.expires_at is not None
    assert any(reason.startswith("expired at") for reason in found.reasons)
    assert [parent.status for parent in found.upstream] == ["unchanged"]


def test_a_missing_key_raises(store: CacheStore) -> None:
    put(store, "a.json")
    with pytest.raises(ArtifactNotFoundError, match=r"nothing\.json"):
        store.explain("nothing.json")


def body(x: int) -> int:
    return x + 1


def test_code_hash_now_is_compared_with_the_recorded_one(store: CacheStore) -> None:
    store.put(
        "coded.json",
        2,
        serializer="json",
        additional_metadata={"code_hash": code_hash(body), "task_version": "1"},
    )
    same = store.explain("coded.json", fn=body)
    assert same.code_hash == same.code_hash_now == code_hash(body)
    assert same.code_changed is False and same.ok

    def other(x: int) -> int:
        return x + 2

    changed = store.explain("coded.json", fn=other)
    assert changed.code_changed is True and not changed.would_hit
    assert any(reason.startswith("code changed") for reason in changed.reasons)
    assert store.explain("coded.json").code_hash_now is None  # no fn: nothing compared


def test_to_dict_is_json(chain: CacheStore) -> None:
    document = chain.explain("clim.json").to_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["would_hit"] is True and document["ok"] is True
    assert document["upstream"][0]["status"] == "unchanged"
    assert json.loads(chain.explain("clim.json").to_json()) == document


# -- command line ------------------------------------------------------------------------------
def where(store: CacheStore) -> list[str]:
    options = ["--store", store.path]
    if not store.database_url.startswith("sqlite"):
        options += ["--db", store.database_url]
    return options


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_cli_explain_json_and_exit_status(runner: CliRunner, chain: CacheStore) -> None:
    fresh = invoke(runner, "explain", "clim.json", "--json", *where(chain))
    assert fresh.exit_code == 0, fresh.stderr
    document = json.loads(fresh.stdout)
    assert document["key"] == "clim.json" and document["would_hit"] is True
    assert [parent["key"] for parent in document["upstream"]] == ["regrid.json"]

    text = invoke(runner, "explain", "clim.json", *where(chain))
    assert text.exit_code == 0, text.stderr
    assert text.stdout.splitlines()[0] == "clim.json: would hit"

    chain.put("regrid.json", {"changed": True}, serializer="json", on_duplicate_key="overwrite")
    stale = invoke(runner, "explain", "clim.json", "--json", *where(chain))
    assert stale.exit_code == 1
    assert json.loads(stale.stdout)["stale"] is True

    os.remove(chain.payload_url("clim.json"))
    gone = invoke(runner, "explain", "clim.json", *where(chain))
    assert gone.exit_code == 1
    assert "payload missing" in gone.stdout


def test_cli_explain_unknown_key_is_an_error(runner: CliRunner, chain: CacheStore) -> None:
    result = invoke(runner, "explain", "nothing.json", *where(chain))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "nothing.json" in result.stderr


def test_the_context_is_what_the_template_used(store: CacheStore) -> None:
    """A template's names map to the recorded context; ``date`` shows as ``today``."""
    metadata = {
        "target": "{date:%Y}/{flow_name}-{parameters[member]}-{task_tags[0]}.json",
        "flow_name": "ingest",
        "task_name": "get_data",
        "today": "2021-12-16",
        "task_tags": ["nightly", "zz"],
        "parameters": ["member"],
        "parameter_values": {"member": 2},
    }
    store.put("2021/ingest-2-nightly.json", 1, serializer="json", additional_metadata=metadata)
    found = store.explain("2021/ingest-2-nightly.json")
    assert found.target == metadata["target"]
    assert found.context == {
        "today": "2021-12-16",
        "flow_name": "ingest",
        "parameters[member]": 2,
        "task_tags[0]": "nightly",
    }
    assert found.parameters == {"member": 2}
    assert found.inputs_hash is None and found.input_hashes == {}
    # a callable target (its qualified name): every recorded context name
    store.put(
        "by-callable.json",
        1,
        serializer="json",
        additional_metadata={**metadata, "target": "make_key"},
    )
    assert store.explain("by-callable.json").context == {
        "today": "2021-12-16",
        "flow_name": "ingest",
        "task_name": "get_data",
        "task_tags": ["nightly", "zz"],
    }
