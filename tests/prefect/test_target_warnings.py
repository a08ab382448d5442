"""Targets that match the call: a target ignoring a parameter that differs warns, once per task;
a mistyped serializer or bad serializer settings fail when the task is declared."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from prefect import flow

from xpersist_sql import CacheStore, SerializerNotFoundError
from xpersist_sql.prefect import AmbiguousTargetWarning, XpersistResult, xpersist_task
from xpersist_sql.prefect._ambiguity import target_keys

MakeStore = Callable[..., CacheStore]


def _ambiguous(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, AmbiguousTargetWarning)]


def test_two_calls_in_one_flow_run_warn_once_naming_the_parameter(
    make_store: MakeStore, task_logs: Any
) -> None:
    store = make_store()

    @xpersist_task(store=store, target="result.json")
    def square(x: int) -> int:
        return x * x

    @flow(name="square-flow")
    def square_flow() -> list[int]:
        return [square(2), square(3), square(4)]

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        values = square_flow()
    assert values == [4, 4, 4]  # what the issue reported: the target ignores x
    (message,) = _ambiguous(record)  # once per task, not once per call
    assert "'result.json'" in message and "task 'square'" in message
    assert "parameter 'x'" in message and "x=2 then x=3" in message
    assert "target='result-{parameters[x]}.json'" in message
    flow_logged = [m for m in task_logs.messages(logging.WARNING) if "parameter 'x'" in m]
    assert flow_logged == [message], "also logged to the flow run's logger"

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        square_flow()  # once per task: not again
    assert _ambiguous(record) == []


def test_map_over_a_parameter_the_target_ignores_warns(make_store: MakeStore) -> None:
    store = make_store()

    @xpersist_task(store=store, target="{flow_name}/members.json", serializer="json")
    def member_stats(member: int, scale: float = 1.0) -> dict[str, float]:
        return {"member": member * scale}

    @xpersist_task(store=store, target="members/{parameters[member]}.json", serializer="json")
    def keyed_stats(member: int, scale: float = 1.0) -> dict[str, float]:
        return {"member": member * scale}

    @flow(name="map-flow")
    def map_flow() -> tuple[list[Any], list[Any]]:
        ignored = member_stats.map(member=[1, 2, 3]).result()
        keyed = keyed_stats.map(member=[1, 2, 3], scale=2.0).result()
        keyed_stats(1, scale=2.0)  # the same call again: a hit, not ambiguous
        return ignored, keyed

    with pytest.warns(AmbiguousTargetWarning) as record:
        ignored, keyed = map_flow()
    (message,) = _ambiguous(list(record))
    assert "task 'member_stats'" in message and "parameter 'member'" in message
    assert "target='{flow_name}/members-{parameters[member]}.json'" in message
    assert keyed == [{"member": 2.0}, {"member": 4.0}, {"member": 6.0}]
    assert len(ignored) == 3
    assert [k for k in store.keys() if k.startswith("map-flow/")] == ["map-flow/members.json"]  # noqa: SIM118


def test_a_callable_target_and_a_per_run_name(make_store: MakeStore) -> None:
    store = make_store()

    @xpersist_task(store=store, target=lambda ctx: f"{ctx['flow_name']}.json", serializer="json")
    def by_callable(day: str) -> str:
        return day

    @xpersist_task(store=store, target="runs/{task_run_id}.json", serializer="json")
    def per_run(day: str) -> str:
        return day

    @flow(name="callable-flow")
    def callable_flow() -> list[str]:
        return [by_callable("mon"), by_callable("tue"), per_run("mon"), per_run("tue")]

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert callable_flow() == ["mon", "mon", "mon", "tue"]
    (message,) = _ambiguous(record)
    assert "task 'by_callable'" in message and "parameter 'day'" in message
    assert "day='mon' then day='tue'" in message
    assert "ctx['parameters']['day']" in message


def test_values_a_template_renders_alike_warn(make_store: MakeStore, task_logs: Any) -> None:
    # the template uses the parameter, but different values render one key
    store = make_store()

    @xpersist_task(store=store, target="typed/{parameters[x]}.json", serializer="json")
    def typed(x: Any) -> dict[str, Any]:
        return {"x": x}

    @xpersist_task(store=store, target="rounded/{parameters[x]:.0f}.json", serializer="json")
    def rounded(x: float) -> float:
        return x

    @xpersist_task(store=store, target="distinct/{parameters[x]}.json", serializer="json")
    def distinct(x: int) -> int:
        return x

    @flow(name="alike-flow")
    def alike() -> list[Any]:
        return [
            typed.map([1, "1"]).result(),
            rounded.map([1.1, 1.4]).result(),
            distinct.map([1, 2, 1]).result(),  # the same value twice: the same key, no warning
        ]

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        alike()
    messages = sorted(_ambiguous(record))
    assert len(messages) == 2, messages
    rounded_message, typed_message = messages
    assert "task 'rounded'" in rounded_message and "'rounded/1.json'" in rounded_message
    assert "x=1.1 then x=1.4" in rounded_message or "x=1.4 then x=1.1" in rounded_message
    assert "target='rounded/{parameters[x]:.0f}-{inputs_hash}.json'" in rounded_message
    assert "task 'typed'" in typed_message and "'typed/1.json'" in typed_message
    logged = task_logs.messages(logging.WARNING)
    assert any("renders the key 'rounded/1.json'" in m for m in logged)
    assert sorted(store.keys()) == [
        "distinct/1.json",
        "distinct/2.json",
        "rounded/1.json",
        "typed/1.json",
    ]


def test_target_keys() -> None:
    assert target_keys("a/{parameters[x]}-{parameters[y]:03d}.zarr").parameters == {"x", "y"}
    assert target_keys("{date:%A}-{flow_name}.zarr").kind == "static"
    assert target_keys("{task_run_name}.zarr").kind == "unique"
    assert target_keys("{parameters}.zarr").kind == "unique"
    assert target_keys(lambda ctx: "k").kind == "dynamic"


# -- serializer settings are checked when the task is declared ----------------------------------


def test_a_mistyped_serializer_fails_at_decoration(make_store: MakeStore) -> None:
    store = make_store()
    calls: list[int] = []

    with pytest.raises(SerializerNotFoundError, match=r"'jsn'.*known serializers: .*json"):

        @xpersist_task(store=store, target="x.json", serializer="jsn")
        def body() -> int:
            calls.append(1)
            return 1

    with pytest.raises(SerializerNotFoundError, match=r"'xarray\.zar'"):
        XpersistResult(store, serializer="xarray.zar")
    result = XpersistResult(store, serializer="json")
    with pytest.raises(SerializerNotFoundError, match="'pickel'"):
        xpersist_task(lambda: 1, result=result, target="x.json", serializer="pickel")
    assert calls == [] and store.keys() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dump_kwargs": {"cls": object}}, "dump_kwargs['cls']"),
        ({"load_kwargs": {"chunks": {"x": float("nan")}}}, "load_kwargs['chunks']['x']"),
        ({"dump_kwargs": {1: "a"}}, "dump_kwargs[1] = 1 is a int key"),
        ({"load_kwargs": {"s": "\ud800"}}, "load_kwargs['s']"),
    ],
)
def test_serializer_settings_that_do_not_round_trip_fail_at_decoration(
    make_store: MakeStore, kwargs: dict[str, Any], field: str
) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="xpersist_task") as info:
        xpersist_task(lambda: 1, store=store, target="x.json", serializer="json", **kwargs)
    assert field in str(info.value)
    renamed = {f"serializer_{name}": value for name, value in kwargs.items()}
    with pytest.raises(ValueError) as again:
        XpersistResult(store, serializer="json", **renamed)
    assert field in str(again.value)
    ok = xpersist_task(
        lambda: {"a": 1},
        store=store,
        target="ok.json",
        serializer="json",
        dump_kwargs={"indent": 2, "sort_keys": True, "separators": (",", ": ")},
    )
    assert ok() == {"a": 1}
