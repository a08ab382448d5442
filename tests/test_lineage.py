"""Lineage: put(derived_from=...), lineage up and down, delete downstream, graph text."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from xpersist_sql import Artifact, ArtifactNotFoundError, CacheStore, ReadonlyStoreError
from xpersist_sql.db.tables import EDGES
from xpersist_sql.lineage import DERIVED_FROM, parents_of, to_dot, to_mermaid
from xpersist_sql.provenance import (
    LOADED_CONTAINERS,
    ArtifactIdentity,
    forget,
    identity_of,
    lineage_of,
    store_id,
)


def keys(artifacts: list[Artifact]) -> list[str]:
    return [artifact.key for artifact in artifacts]


def put(store: CacheStore, key: str, *parents: Any, **kwargs: Any) -> Artifact:
    return store.put(key, {"key": key}, serializer="json", derived_from=list(parents), **kwargs)


@pytest.fixture
def chain(store: CacheStore) -> CacheStore:
    """A three-step chain raw -> regrid -> clim, and a diamond top -> (left, right) -> bottom.

    ``report`` is derived from both ``clim`` and ``bottom``; ``other`` stands alone.
    """
    put(store, "raw.json")
    put(store, "regrid.json", "raw.json")
    put(store, "clim.json", "regrid.json")
    put(store, "top.json")
    put(store, "left.json", "top.json")
    put(store, "right.json", "top.json")
    put(store, "bottom.json", "left.json", "right.json")
    put(store, "report.json", "clim.json", "bottom.json")
    put(store, "other.json")
    return store


def edge_count(store: CacheStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(EDGES)) or 0)


# -- recording -------------------------------------------------------------------------------
def test_parents_are_recorded_with_their_version(store: CacheStore) -> None:
    raw = put(store, "raw.json")
    child = put(store, "child.json", "raw.json")
    [record] = child.additional_metadata[DERIVED_FROM]
    assert record["key"] == "raw.json"
    assert record["created_at"] == raw.created_at.isoformat()
    assert record["store_id"] == store._backend.marker().store_id  # type: ignore[union-attr]
    [parent] = parents_of(child)
    assert parent.key == "raw.json" and parent.created_at == raw.created_at.isoformat()
    assert parents_of(store.get_artifact("child.json")) == [parent]


def test_parents_given_as_artifacts_and_identities(store: CacheStore) -> None:
    raw = put(store, "raw.json")
    other = put(store, "other.json")
    foreign = ArtifactIdentity(store_id="f" * 32, key="elsewhere.zarr", created_at="2021-01-01")
    own = ArtifactIdentity(
        store_id=store._backend.marker().store_id,  # type: ignore[union-attr]
        key="other.json",
        created_at=other.created_at.isoformat(),
    )
    child = put(store, "child.json", raw, own, foreign, "raw.json")
    assert [p.key for p in parents_of(child)] == ["raw.json", "other.json", "elsewhere.zarr"]
    # the parent in another store is recorded, but lineage returns only this store's rows
    assert keys(store.lineage("child.json")) == ["other.json", "raw.json"]
    assert edge_count(store) == 3


def test_unknown_parent_writes_nothing(store: CacheStore) -> None:
    put(store, "raw.json")
    with pytest.raises(ArtifactNotFoundError, match=r"missing\.json"):
        put(store, "child.json", "raw.json", "missing.json")
    own = ArtifactIdentity(
        store_id=store._backend.marker().store_id,  # type: ignore[union-attr]
        key="gone.json",
        created_at="2021-01-01T00:00:00+00:00",
    )
    with pytest.raises(ArtifactNotFoundError, match=r"gone\.json"):
        put(store, "child.json", own)
    assert "child.json" not in store
    assert not os.path.exists(store.payload_url("child.json"))
    with pytest.raises(TypeError, match="derived_from takes"):
        put(store, "child.json", 3)
    with pytest.raises(ValueError, match="not both"):
        store.put(
            "child.json",
            1,
            serializer="json",
            derived_from=["raw.json"],
            additional_metadata={DERIVED_FROM: []},
        )
    assert edge_count(store) == 0


def test_parent_in_a_fresh_store_is_unknown(make_store: Callable[..., CacheStore]) -> None:
    store = make_store()
    with pytest.raises(ArtifactNotFoundError):
        put(store, "child.json", "raw.json")


def test_a_value_loaded_from_a_store_read_before_its_first_write_links(
    make_store: Callable[..., CacheStore],
) -> None:
    """A store's id read before its marker exists is not remembered: its path is no id."""
    store = make_store()
    before = store_id(store)  # no marker yet: the path answers, and is not kept
    assert before == store.path
    store.put("raw.npy", np.arange(4))
    assert store_id(store) != before  # the marker's id, now that the store exists
    loaded = store.get("raw.npy")
    identity = identity_of(loaded)
    assert identity is not None and identity.store_id == store_id(store)
    store.put("double.npy", loaded * 2, derived_from=[identity])
    assert keys(store.lineage("double.npy")) == ["raw.npy"]


# -- walking ---------------------------------------------------------------------------------
def test_loaded_dicts_and_lists_are_known_to_lineage_only(store: CacheStore) -> None:
    store.put("d.json", {"a": 1}, serializer="json")
    store.put("n.json", 7, serializer="json")
    loaded = store.get("d.json")
    found = lineage_of(loaded)
    assert found is not None and found.key == "d.json"
    assert identity_of(loaded) is None  # it hashes by its data
    assert lineage_of({"a": 1}) is None  # an equal dict is not the loaded one
    assert lineage_of(store.get("n.json")) is None  # numbers are shared objects: never noted
    forget(loaded)
    assert lineage_of(loaded) is None

    first = store.get("d.json")
    later = [store.get("d.json") for _ in range(LOADED_CONTAINERS)]
    assert lineage_of(first) is None  # only the last LOADED_CONTAINERS are kept
    assert all(lineage_of(value) is not None for value in later)


def test_lineage_upstream_and_downstream_of_a_chain(chain: CacheStore) -> None:
    assert keys(chain.lineage("clim.json")) == ["regrid.json", "raw.json"]
    assert keys(chain.lineage("clim.json", depth=1)) == ["regrid.json"]
    assert keys(chain.lineage("raw.json", "downstream")) == [
        "regrid.json",
        "clim.json",
        "report.json",
    ]
    assert keys(chain.lineage("raw.json", "downstream", depth=2)) == ["regrid.json", "clim.json"]
    assert chain.lineage("raw.json") == []
    assert chain.lineage("other.json", "downstream") == []


def test_lineage_of_a_diamond_visits_each_artifact_once(chain: CacheStore) -> None:
    assert keys(chain.lineage("bottom.json")) == ["left.json", "right.json", "top.json"]
    assert keys(chain.lineage("top.json", "downstream")) == [
        "left.json",
        "right.json",
        "bottom.json",
        "report.json",
    ]
    assert keys(chain.lineage("report.json")) == [
        "bottom.json",
        "clim.json",
        "left.json",
        "regrid.json",
        "right.json",
        "raw.json",
        "top.json",
    ]
    assert keys(chain.lineage("report.json", depth=1)) == ["bottom.json", "clim.json"]


def test_lineage_returns_full_artifacts(chain: CacheStore) -> None:
    [parent] = chain.lineage("regrid.json")
    assert parent == chain.get_artifact("raw.json")


def test_cycles_end(store: CacheStore) -> None:
    put(store, "a.json")
    put(store, "b.json", "a.json")
    put(store, "a.json", "b.json", on_duplicate_key="overwrite")  # a <- b <- a
    assert keys(store.lineage("a.json")) == ["b.json"]
    assert keys(store.lineage("a.json", "downstream")) == ["b.json"]
    put(store, "a.json", "a.json", on_duplicate_key="overwrite")  # derived from its old self
    assert keys(store.lineage("a.json")) == []


def test_lineage_errors(chain: CacheStore) -> None:
    with pytest.raises(ArtifactNotFoundError, match=r"missing\.json"):
        chain.lineage("missing.json")
    with pytest.raises(ValueError, match="'upstream', 'downstream'"):
        chain.lineage("raw.json", "sideways")
    with pytest.raises(ValueError, match="depth"):
        chain.lineage("raw.json", depth=0)
    with pytest.raises(TypeError, match="depth"):
        chain.lineage("raw.json", depth="1")  # type: ignore[arg-type]


def test_overwrite_re_records_edges(chain: CacheStore) -> None:
    put(chain, "clim.json", "raw.json", on_duplicate_key="overwrite")
    assert keys(chain.lineage("clim.json")) == ["raw.json"]
    assert keys(chain.lineage("regrid.json", "downstream")) == []
    chain.put("clim.json", 1, serializer="json", on_duplicate_key="overwrite")
    assert chain.lineage("clim.json") == []
    # what was derived from it still points at it
    assert keys(chain.lineage("clim.json", "downstream")) == ["report.json"]


def test_an_overwritten_parent_is_detectable(store: CacheStore) -> None:
    put(store, "raw.json")
    child = put(store, "child.json", "raw.json")
    newer = put(store, "raw.json", on_duplicate_key="overwrite")
    [recorded] = parents_of(child)
    [current] = store.lineage("child.json")
    assert current == newer
    assert recorded.created_at != current.created_at.isoformat()


def test_deleted_parent_is_left_out_and_child_edges_go_with_it(chain: CacheStore) -> None:
    before = edge_count(chain)
    chain.delete("regrid.json")  # its own edge (to raw) goes; clim's edge to it stays
    assert edge_count(chain) == before - 1
    assert chain.lineage("clim.json") == []
    assert [p.key for p in parents_of(chain.get_artifact("clim.json"))] == ["regrid.json"]
    chain.delete("report.json")
    assert edge_count(chain) == before - 3


def test_expired_artifacts_are_followed_but_not_returned(store: CacheStore) -> None:
    put(store, "raw.json")
    put(store, "mid.json", "raw.json")
    put(store, "top.json", "mid.json")
    with store.engine.begin() as conn:
        from xpersist_sql.db.tables import ARTIFACTS

        conn.execute(
            sa.update(ARTIFACTS)
            .where(ARTIFACTS.c.key == "mid.json")
            .values(expires_at=sa.func.current_timestamp())
        )
    assert keys(store.lineage("top.json")) == ["raw.json"]
    assert keys(store.lineage("raw.json", "downstream")) == ["top.json"]
    assert keys(store.delete_downstream("raw.json", dry_run=True)) == [
        "raw.json",
        "mid.json",
        "top.json",
    ]


# -- deleting downstream ---------------------------------------------------------------------
def payloads(store: CacheStore, names: list[str]) -> dict[str, bool]:
    return {name: os.path.exists(store.payload_url(name)) for name in names}


def test_delete_downstream_dry_run_then_for_real(chain: CacheStore) -> None:
    everything = chain.keys()
    planned = chain.delete_downstream("regrid.json", dry_run=True)
    assert keys(planned) == ["regrid.json", "clim.json", "report.json"]
    assert chain.keys() == everything  # nothing removed
    assert all(payloads(chain, everything).values())

    removed = chain.delete_downstream("regrid.json")
    assert keys(removed) == keys(planned)
    assert [a.created_at for a in removed] == [a.created_at for a in planned]
    kept = sorted(set(everything) - set(keys(planned)))
    assert chain.keys() == kept
    assert payloads(chain, kept) == dict.fromkeys(kept, True)
    assert payloads(chain, keys(planned)) == dict.fromkeys(keys(planned), False)
    # the rest of the graph is intact
    assert keys(chain.lineage("bottom.json")) == ["left.json", "right.json", "top.json"]


def test_delete_with_downstream_returns_the_key(chain: CacheStore) -> None:
    artifact = chain.delete("left.json", downstream=True, dry_run=True)
    assert artifact.key == "left.json"
    assert "bottom.json" in chain
    artifact = chain.delete("left.json", downstream=True)
    assert artifact.key == "left.json"
    assert "left.json" not in chain and "bottom.json" not in chain and "report.json" not in chain
    assert "right.json" in chain and "top.json" in chain and "clim.json" in chain


def test_delete_downstream_errors(chain: CacheStore, make_store: Any) -> None:
    with pytest.raises(ArtifactNotFoundError):
        chain.delete_downstream("missing.json")
    readonly = make_store(readonly=True)
    assert keys(readonly.delete_downstream("clim.json", dry_run=True)) == [
        "clim.json",
        "report.json",
    ]
    with pytest.raises(ReadonlyStoreError):
        readonly.delete_downstream("clim.json")
    assert "clim.json" in chain


# -- two stores, one database ----------------------------------------------------------------
def test_stores_sharing_a_database_do_not_see_each_others_edges(
    make_store: Callable[..., CacheStore], tmp_path: Path, database_url: str | None
) -> None:
    url = database_url or f"sqlite:///{tmp_path}/shared.sqlite"  # one database for both
    first = make_store(tmp_path / "one", database_url=url)
    second = make_store(tmp_path / "two", database_url=url)
    for store in (first, second):
        put(store, "raw.json")
        put(store, "mid.json", "raw.json")
    put(first, "top.json", "mid.json")
    # the second store derives from the first's raw.json (recorded, never walked across)
    first_marker = first._backend.marker()
    assert first_marker is not None
    foreign = first.get_artifact("raw.json")
    put(
        second,
        "from-first.json",
        ArtifactIdentity(
            store_id=first_marker.store_id,
            key="raw.json",
            created_at=foreign.created_at.isoformat(),
        ),
    )
    assert keys(first.lineage("raw.json", "downstream")) == ["mid.json", "top.json"]
    assert keys(second.lineage("raw.json", "downstream")) == ["mid.json"]
    assert keys(second.lineage("from-first.json")) == []
    assert keys(first.delete_downstream("raw.json", dry_run=True)) == [
        "raw.json",
        "mid.json",
        "top.json",
    ]
    first.delete_downstream("raw.json")
    assert first.keys() == []
    assert second.keys() == ["from-first.json", "mid.json", "raw.json"]
    assert keys(second.lineage("mid.json")) == ["raw.json"]
    assert first.lineage_graph() == "flowchart TD"
    assert (
        second.lineage_graph()
        == 'flowchart TD\n    n0["mid.json"]\n    n1["raw.json"]\n    n1 --> n0'
    )


# -- graph text ------------------------------------------------------------------------------
def test_lineage_graph_mermaid_and_dot(chain: CacheStore) -> None:
    text = chain.lineage_graph("regrid.json")
    assert text == "\n".join(
        [
            "flowchart TD",
            '    n0["clim.json"]',
            '    n1["raw.json"]',
            '    n2["regrid.json"]',
            '    n3["report.json"]',
            "    n0 --> n3",
            "    n1 --> n2",
            "    n2 --> n0",
        ]
    )
    assert chain.lineage_graph("regrid.json") == text  # deterministic
    dot = chain.lineage_graph(["raw.json"], format="dot")
    assert dot.splitlines()[0] == "digraph lineage {"
    assert '    "raw.json" -> "regrid.json";' in dot
    whole = chain.lineage_graph()
    assert whole.count("-->") == 8
    assert "other.json" not in whole
    assert '"other.json"' in chain.lineage_graph("other.json")
    with pytest.raises(ValueError, match="'mermaid', 'dot'"):
        chain.lineage_graph(format="svg")
    with pytest.raises(ArtifactNotFoundError):
        chain.lineage_graph("missing.json")


def test_graph_text_escapes_names() -> None:
    assert 'n0["a#quot;b"]' in to_mermaid(['a"b'], [])
    assert '"a\\"b"' in to_dot(['a"b'], [])
