"""Target templates and callable targets, rendered in real flow runs."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from xpersist_sql import (
    CacheStore,
    InvalidKeyError,
    OverlappingKeyError,
    ReadonlyStoreError,
    UnsafePathError,
)
from xpersist_sql.prefect import TEMPLATE_NAMES, TargetTemplateError, xpersist_task
from xpersist_sql.prefect._context import RunContext, render_target

ALL_NAMES_TARGET = (
    "{date:%Y%m%dT%H%M%S}/{today}/{yesterday}/{tomorrow}/{flow_name}/{flow_run_id}/"
    "{flow_run_name}/{task_name}/{task_run_id}/{task_run_name}/{task_tags}/{parameters[x]}.json"
)


def test_every_template_name_and_a_callable_target(pstore: CacheStore) -> None:
    @xpersist_task(store=pstore, target=ALL_NAMES_TARGET, serializer="json", tags=["b", "a"])
    def everything(x: int, y: str = "why") -> int:
        return x

    seen: list[dict[str, Any]] = []

    def key_of(context: dict[str, Any]) -> str:
        seen.append(context)
        return f"callable/{context['task_name']}-{context['parameters']['y']}.json"

    @xpersist_task(store=pstore, target=key_of, serializer="json")
    def by_callable(y: str) -> str:
        return y

    @flow(name="template-flow")
    def template_flow() -> list[Any]:
        return [everything(5, return_state=True), by_callable("z", return_state=True)]

    state, callable_state = template_flow()
    assert state.name == "Completed" and callable_state.result() == "z"
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    start = flow_run.expected_start_time
    assert start is not None
    day = datetime.fromtimestamp(start.timestamp(), tz=timezone.utc)
    expected = (
        f"{day:%Y%m%dT%H%M%S}/{day.date()}/{(day - timedelta(days=1)).date()}/"
        f"{(day + timedelta(days=1)).date()}/template-flow/{flow_run.id}/{flow_run.name}/"
        f"everything/{task_run.id}/{task_run.name}/a-b/5.json"
    )
    assert "callable/by_callable-z.json" in pstore.keys()  # noqa: SIM118
    assert expected in pstore.keys()  # noqa: SIM118
    meta = pstore.get_artifact(expected).additional_metadata
    assert meta["task_tags"] == ["a", "b"]
    assert meta["parameters"] == ["x", "y"]
    assert meta["target"] == ALL_NAMES_TARGET
    assert pstore.get_artifact("callable/by_callable-z.json").additional_metadata["target"] == (
        "test_every_template_name_and_a_callable_target.<locals>.key_of"
    )
    (context,) = seen
    assert set(context) == set(TEMPLATE_NAMES)
    assert context["flow_name"] == "template-flow"
    assert context["parameters"] == {"y": "z"}


def test_bad_targets_fail_the_task_before_the_body(pstore: CacheStore) -> None:
    calls: list[str] = []

    @xpersist_task(store=pstore, target="{flow_name}/{nope}.json", serializer="json")
    def unknown() -> None:
        calls.append("unknown")

    @xpersist_task(store=pstore, target="../{task_name}.json", serializer="json")
    def escaping() -> None:
        calls.append("escaping")

    @xpersist_task(store=pstore, target="{parameters[missing]}.json", serializer="json")
    def missing_parameter(present: int) -> None:
        calls.append("missing")

    @xpersist_task(store=pstore, target=lambda context: 42, serializer="json")  # type: ignore[arg-type,return-value]
    def not_a_str() -> None:
        calls.append("not_a_str")

    @flow(name="bad-targets")
    def bad_targets() -> list[Any]:
        return [
            unknown(return_state=True),
            escaping(return_state=True),
            missing_parameter(1, return_state=True),
            not_a_str(return_state=True),
        ]

    states = bad_targets(return_state=True).result(raise_on_failure=False)
    assert all(state.is_failed() for state in states)
    assert calls == [], "the body must not run when the target is bad"
    assert pstore.keys() == []

    with pytest.raises(
        TargetTemplateError, match=r"unknown name \{nope\}; the known names are date"
    ):
        states[0].result()
    with pytest.raises(InvalidKeyError, match=r"'\.\./escaping\.json'.*'\.\.' path segment"):
        states[1].result()
    with pytest.raises(TargetTemplateError, match=r"KeyError.*parameters are: present"):
        states[2].result()
    with pytest.raises(TargetTemplateError, match="returned int 42; it must return the key"):
        states[3].result()

    # outside a flow there is no flow run: a template naming one says so
    @xpersist_task(store=pstore, target="{flow_run_name}.json", serializer="json")
    def outside() -> None:
        calls.append("outside")

    with pytest.raises(TargetTemplateError, match=r"uses \{flow_run_name\}.*outside a flow"):
        outside()
    assert calls == []


def test_keys_the_store_refuses_fail_the_task_before_the_body(
    db_store: CacheStore, tmp_path: Path
) -> None:
    # a key inside a stored key, a key containing one, a key through a symbolic link
    db_store.put("a", 1, serializer="json")
    db_store.put("b/c.json", 2, serializer="json")
    outside = tmp_path / "outside"
    outside.mkdir()
    Path(db_store.path, "link").symlink_to(outside)
    calls: list[str] = []

    @xpersist_task(store=db_store, target="a/b.json", serializer="json")
    def inside() -> int:
        calls.append("inside")
        return 3

    @xpersist_task(store=db_store, target="b", serializer="json")
    def containing() -> int:
        calls.append("containing")
        return 4

    @xpersist_task(store=db_store, target="link/x.json", serializer="json")
    async def linked() -> int:
        calls.append("linked")
        return 5

    @flow(name="refused-keys")
    async def refused() -> list[Any]:
        return [
            inside(return_state=True),
            containing(return_state=True),
            await linked(return_state=True),
        ]

    states = asyncio.run(refused(return_state=True)).result(raise_on_failure=False)
    assert all(state.is_failed() for state in states)
    assert calls == [], "the body must not run when the store would refuse its key"
    with pytest.raises(OverlappingKeyError, match=r"'a/b\.json'.*lies inside the stored key 'a'"):
        states[0].result()
    with pytest.raises(OverlappingKeyError, match=r"contains the stored key 'b/c\.json'"):
        states[1].result()
    with pytest.raises(UnsafePathError, match="symbolic link"):
        states[2].result()
    assert sorted(db_store.keys()) == ["a", "b/c.json"]
    assert list(outside.iterdir()) == []


def test_check_writable(db_store: CacheStore) -> None:
    db_store.put("a/b.json", 1, serializer="json")
    assert db_store.check_writable("a/c.json") == "a/c.json"
    assert db_store.check_writable("a/b.json") == "a/b.json"  # a duplicate: the policy decides
    with pytest.raises(OverlappingKeyError, match="lies inside the stored key"):
        db_store.check_writable("a/b.json/x")
    with pytest.raises(OverlappingKeyError, match="contains the stored key"):
        db_store.check_writable("a")
    with pytest.raises(InvalidKeyError):
        db_store.check_writable("../x.json")
    readonly = CacheStore(db_store.path, database_url=db_store.database_url, readonly=True)
    with pytest.raises(ReadonlyStoreError):
        readonly.check_writable("new.json")
    readonly.close()


def test_render_target_without_prefect() -> None:
    context = RunContext(
        date=datetime(2021, 12, 16, 8, tzinfo=timezone.utc),
        task_name="get_data",
        parameters={"member": 3},
        flow_name="my-flow",
    )
    assert (
        render_target("{date:%A}-{flow_name}-{task_name}.zarr", context)
        == "Thursday-my-flow-get_data.zarr"
    )
    assert render_target("{yesterday}/{today}/{tomorrow}", context) == (
        "2021-12-15/2021-12-16/2021-12-17"
    )
    assert render_target("m{parameters[member]:03d}.zarr", context) == "m003.zarr"
    with pytest.raises(TargetTemplateError, match=r"unknown name \{\}"):
        render_target("{}.zarr", context)
    with pytest.raises(TargetTemplateError, match=r"uses \{task_run_id\}, which this call"):
        render_target("{task_run_id}.zarr", context)
    with pytest.raises(TargetTemplateError, match="cannot render target"):
        render_target("{date:%A", context)
    with pytest.raises(TypeError, match="target must be a str or a callable"):
        render_target(3, context)  # type: ignore[arg-type]


def test_a_target_without_fields_is_its_own_key() -> None:
    context = RunContext(date=datetime(2021, 12, 16, tzinfo=timezone.utc), task_name="t")
    assert render_target("results/mean.zarr", context) == "results/mean.zarr"
    # braces still go through the renderer: an escaped one renders, a lone one is refused
    assert render_target("a{{b}}.json", context) == "a{b}.json"
    with pytest.raises(TargetTemplateError, match="cannot render target"):
        render_target("a}.json", context)


def test_invalid_arguments_are_refused(pstore: CacheStore) -> None:
    def body() -> int:
        return 1

    with pytest.raises(TypeError, match="exactly one of result="):
        xpersist_task(body, target="x.json")
    with pytest.raises(TypeError, match="needs a CacheStore, got str"):
        xpersist_task(body, target="x.json", store="/tmp/x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"persist_result=True.*second, pickled copy"):
        xpersist_task(body, target="x.json", store=pstore, persist_result=True)
    with pytest.raises(TypeError, match=r"cache_key_fn=: .* use target= instead"):
        xpersist_task(body, target="x.json", store=pstore, cache_key_fn=lambda *a: "k")
    with pytest.raises(TypeError, match="target must be a str or a callable, got int"):
        xpersist_task(body, target=3, store=pstore)  # type: ignore[arg-type]
    made = xpersist_task(body, target="x.json", store=pstore)
    with pytest.raises(TypeError, match=r"cache_policy=: .* use target= \(and isolation_level=\)"):
        made.with_options(cache_policy=object())
    with pytest.raises(TypeError, match=r"cache_expiration must be a datetime\.timedelta"):
        made.with_options(cache_expiration=3600)
    with pytest.raises(TypeError, match="one of ttl= and cache_expiration="):
        xpersist_task(body, target="x.json", store=pstore, ttl=1, cache_expiration=timedelta(1))
    with pytest.raises(TypeError, match="'made' is already a Prefect task"):
        xpersist_task(target="x.json", store=pstore)(made.with_options(name="made"))


# -- a restricted formatter: names and format specs only, bounded widths --------------------------
class _Config:
    secret = "do not render me"


def _context() -> RunContext:
    return RunContext(
        date=datetime(2021, 12, 16, 8, tzinfo=timezone.utc),
        task_name="get_data",
        parameters={"member": 3, "cfg": _Config(), "opts": {"a": 1}},
        flow_name="my-flow",
    )


@pytest.mark.parametrize(
    "template",
    [
        "{parameters[cfg].secret}.json",
        "{parameters[cfg].__init__.__globals__}.json",
        "{parameters[opts][a]}.json",
        "{date.year}.json",
        "{flow_name.__class__}.json",
        "{task_name[0]}.json",
    ],
)
def test_templates_refuse_attributes_and_deep_lookups(template: str) -> None:
    with pytest.raises(TargetTemplateError) as info:
        render_target(template, _context())
    message = str(info.value)
    assert repr(template) in message and "attributes (.name) and further lookups" in message
    assert "do not render me" not in message


@pytest.mark.parametrize(
    ("template", "number"),
    [
        ("{flow_name:>99999999999}", "99999999999"),
        ("{flow_name:>1000000000}", "1000000000"),
        ("{flow_name:x<256}", "256"),
        ("{parameters[member]:.1000000000f}", "1000000000"),
        ("{parameters[member]:01000000000d}", "1000000000"),
        ("{date:%1000000000Y}", "1000000000"),
        ("{task_tags:^999999999}", "999999999"),
    ],
)
def test_templates_refuse_huge_widths_before_allocating(template: str, number: str) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(TargetTemplateError) as info:
            render_target(template, _context())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # refused before the string was made
    message = str(info.value)
    assert repr(template) in message and f"of {number}" in message and "limit is 255" in message
    assert isinstance(info.value, ValueError)


def test_templates_keep_names_and_format_specs() -> None:
    context = _context()
    assert render_target("{flow_name:>10}|{task_name:.3}|{parameters[member]:04d}", context) == (
        "   my-flow|get|0003"
    )
    assert render_target("{date:%Y/%m/%d}/{{literal}}/{today}", context) == (
        "2021/12/16/{literal}/2021-12-16"
    )
    assert render_target("{flow_name:x<255}", context) == "my-flow" + "x" * 248
    with pytest.raises(TargetTemplateError, match=r"conversion !r"):
        render_target("{flow_name!r}", context)
    with pytest.raises(TargetTemplateError, match="a format spec must be literal"):
        render_target("{flow_name:>{parameters[member]}}", context)
    with pytest.raises(TargetTemplateError, match="not a standard format spec"):
        render_target("{parameters[member]:%Y}", context)
    with pytest.raises(TargetTemplateError, match=r"KeyError: 'nope'.*parameters are: cfg"):
        render_target("{parameters[nope]}", context)
    with pytest.raises(TargetTemplateError, match=r"IndexError: \{task_tags\[0\]\}"):
        render_target("{task_tags[0]}", context)
