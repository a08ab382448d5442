"""Property: store.query(...) returns exactly what a brute-force Python filter over the rows does.

One store per backend holds a fixed, varied set of artifacts (shared keys prefixes, ties in
created_at, expired ones, JSON values of every scalar type); hypothesis draws the queries: every
filter, every form of ``since``/``until``, limits and both orders.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xpersist_sql import CacheStore
from xpersist_sql.db.tables import ARTIFACTS, TAGS

UTC = timezone.utc
NOW = datetime.now(UTC)
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FLOWS = ["flow-a", "flow-b", "flow_c"]
TASKS = ["get_data", "clean", "plot"]
RUNS = ["r1", "r2", "r3"]
TAGS_POOL = ["nightly", "big", "t_1", "x%"]
SERIALIZERS = ["json", "pickle"]
KEY_DIRS = ["runs", "runs/2024", "Runs", "r_1", "a%b", "[x]"]
KEY_NAMES = ["ds", "data", "d_1", "ds2"]
KEY_EXTS = ["zarr", "json", "nc"]
META_VALUES: list[Any] = ["ctrl", "exp", "1", 1, 1.0, 2.5, True, False, None, 0]
TIMES = [BASE + timedelta(days=d, seconds=s) for d in range(40) for s in (0, 0.5, 7)]


@dataclass
class Record:
    id: int
    key: str
    serializer: str
    created_at: datetime
    expires_at: datetime | None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)


def make_records(n: int = 90, seed: int = 3) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    seen: set[str] = set()
    while len(records) < n:
        name = f"{rng.choice(KEY_NAMES)}{len(records) % 7}.{rng.choice(KEY_EXTS)}"
        key = f"{rng.choice(KEY_DIRS)}/{name}"
        if key in seen:
            continue
        seen.add(key)
        metadata: dict[str, Any] = {}
        for name, pool in (
            ("flow_name", FLOWS),
            ("task_name", TASKS),
            ("flow_run_id", RUNS),
            ("task_run_id", RUNS),
        ):
            if rng.random() < 0.8:
                metadata[name] = rng.choice(pool)
        tags = set(rng.sample(TAGS_POOL, rng.randint(0, 3)))
        if tags or rng.random() < 0.5:
            metadata["task_tags"] = sorted(tags)
        for name in ("experiment", "n"):
            if rng.random() < 0.7:
                metadata[name] = rng.choice(META_VALUES)
        expiry = rng.random()
        expires_at = (
            None
            if expiry < 0.7
            else NOW - timedelta(days=3)
            if expiry < 0.85
            else NOW + timedelta(days=3)
        )
        records.append(
            Record(
                id=len(records),
                key=key,
                serializer=rng.choice(SERIALIZERS),
                created_at=rng.choice(TIMES),  # drawn with replacement: ties happen
                expires_at=expires_at,
                metadata=metadata,
                tags=tags,
            )
        )
    return records


RECORDS = make_records()


def fill(store: CacheStore) -> None:
    for record in RECORDS:
        store.put(
            record.key,
            record.id,
            serializer=record.serializer,
            additional_metadata=record.metadata,
        )
    with store.engine.begin() as conn:
        for record in RECORDS:
            artifact_id = conn.scalar(
                sa.select(ARTIFACTS.c.id).where(ARTIFACTS.c.key == record.key)
            )
            conn.execute(
                sa.update(ARTIFACTS)
                .where(ARTIFACTS.c.id == artifact_id)
                .values(created_at=record.created_at, expires_at=record.expires_at)
            )
            conn.execute(
                sa.update(TAGS)
                .where(TAGS.c.artifact_id == artifact_id)
                .values(created_at=record.created_at)
            )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CacheStore]:
    root: Path = tmp_path_factory.mktemp("property") / "store"
    if request.param == "sqlite":
        store = CacheStore(root)
        fill(store)
        yield store
        store.close()
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"xpersist_prop_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    store = CacheStore(root, database_url=url)
    try:
        fill(store)
        yield store
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- the brute-force oracle ------------------------------------------------------------------
def glob_regex(pattern: str) -> re.Pattern[str]:
    out = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(out, re.DOTALL)


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str"


def json_equal(stored: Any, wanted: Any) -> bool:
    return json_kind(stored) == json_kind(wanted) and stored == wanted


def brute_force(query: dict[str, Any], bounds: dict[str, datetime]) -> list[str]:
    def keep(record: Record) -> bool:
        meta = record.metadata
        if "key" in query and not glob_regex(query["key"]).fullmatch(record.key):
            return False
        for name in ("flow_name", "task_name", "flow_run_id", "task_run_id"):
            if name in query and meta.get(name) != query[name]:
                return False
        if "serializer" in query and record.serializer != query["serializer"]:
            return False
        if not set(query.get("tags") or ()) <= record.tags:
            return False
        for name, wanted in (query.get("metadata") or {}).items():
            if name not in meta or not json_equal(meta[name], wanted):
                return False
        if "since" in bounds and record.created_at < bounds["since"]:
            return False
        if "until" in bounds and record.created_at >= bounds["until"]:
            return False
        expired = record.expires_at is not None and record.expires_at <= NOW
        return query.get("include_expired", False) or not expired

    found = sorted(filter(keep, RECORDS), key=lambda r: (r.created_at, r.id))
    if query.get("order", "newest") == "newest":
        found.reverse()
    if query.get("limit") is not None:
        found = found[: query["limit"]]
    return [record.key for record in found]


# -- strategies ------------------------------------------------------------------------------
@st.composite
def key_globs(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(RECORDS)).key
    chars = list(key)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(chars) - 1))
        chars[i] = draw(st.sampled_from(["*", "?"]))
    if draw(st.booleans()):  # a prefix or suffix glob
        cut = draw(st.integers(0, len(chars)))
        chars = [*chars[:cut], "*"] if draw(st.booleans()) else ["*", *chars[cut:]]
    return "".join(chars)


@st.composite
def time_bounds(draw: st.DrawFn) -> tuple[Any, datetime]:
    """A since/until value in one of its accepted forms, and the UTC moment it means."""
    moment = draw(st.sampled_from(TIMES)) + draw(
        st.sampled_from([timedelta(0), timedelta(microseconds=1), -timedelta(microseconds=1)])
    )
    form = draw(st.sampled_from(["aware", "naive", "offset", "iso", "iso_z", "date", "date_str"]))
    if form == "aware":
        return moment, moment
    if form == "naive":
        return moment.replace(tzinfo=None), moment
    if form == "offset":
        return moment.astimezone(timezone(timedelta(hours=5, minutes=30))), moment
    if form == "iso":
        return moment.isoformat(), moment
    if form == "iso_z":
        return moment.replace(tzinfo=None).isoformat() + "Z", moment
    day = moment.date()
    midnight = datetime.combine(day, time(), tzinfo=UTC)
    return (day if form == "date" else day.isoformat()), midnight


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def queries(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, datetime]]:
    candidates: dict[str, Any] = {
        "key": optional(key_globs()),
        "flow_name": optional(st.sampled_from([*FLOWS, "nope"])),
        "task_name": optional(st.sampled_from(TASKS)),
        "flow_run_id": optional(st.sampled_from(RUNS)),
        "task_run_id": optional(st.sampled_from(RUNS)),
        "serializer": optional(st.sampled_from(SERIALIZERS)),
        "tags": optional(st.lists(st.sampled_from(TAGS_POOL), max_size=3)),
        "metadata": optional(
            st.dictionaries(
                st.sampled_from(["experiment", "n", "flow_name", "missing"]),
                st.sampled_from(META_VALUES),
                min_size=1,
                max_size=2,
            )
        ),
        "since": optional(time_bounds()),
        "until": optional(time_bounds()),
        "limit": optional(st.integers(0, 30)),
        "order": optional(st.sampled_from(["newest", "oldest"])),
        "include_expired": optional(st.booleans()),
    }
    query: dict[str, Any] = {}
    bounds: dict[str, datetime] = {}
    for name, strategy in candidates.items():
        # most filters stay out of a query, so that results are not always empty
        if draw(st.integers(0, 9)) < (6 if name in ("limit", "order") else 3):
            value = draw(strategy)
            if value is None:
                continue
            if name in ("since", "until"):
                query[name], bounds[name] = value
            else:
                query[name] = value
    if "since" in bounds and "until" in bounds and bounds["since"] > bounds["until"]:
        query["since"], query["until"] = query["until"], query["since"]
        bounds["since"], bounds["until"] = bounds["until"], bounds["since"]
    return query, bounds


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=queries())
def test_query_equals_brute_force(dataset: CacheStore, drawn: tuple[dict, dict]) -> None:
    query, bounds = drawn
    got = [artifact.key for artifact in dataset.query(**query)]
    expected = brute_force(query, bounds)
    event(f"results: {'none' if not expected else 'one' if len(expected) == 1 else 'several'}")
    assert got == expected, query


def test_dataset_is_varied() -> None:
    """The fixed rows exercise what the queries distinguish."""
    times = [record.created_at for record in RECORDS]
    assert len(set(times)) < len(times)  # ties in created_at
    assert any(r.expires_at and r.expires_at < NOW for r in RECORDS)
    assert any(r.expires_at and r.expires_at > NOW for r in RECORDS)
    kinds = {json_kind(r.metadata.get("experiment")) for r in RECORDS if "experiment" in r.metadata}
    assert kinds == {"null", "bool", "number", "str"}
    assert all(len(brute_force({"tags": [tag]}, {})) > 2 for tag in TAGS_POOL)
