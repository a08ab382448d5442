"""What a cache hit hands Prefect, and the argument binding the task calls share with Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.exceptions import ParameterBindError
from prefect.results import ResultRecord, ResultStore
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH
from prefect.utilities.callables import get_call_parameters
from pydantic import Field

from xpersist_sql import CacheStore
from xpersist_sql.prefect import xpersist_task
from xpersist_sql.prefect._context import call_parameters


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def test_a_hit_hands_prefect_a_record_it_never_writes(
    pstore: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Cached state carries the value in an unpersisted record, made without Prefect's
    result store (whose record resolves a storage path on the filesystem)."""
    calls: list[int] = []

    @xpersist_task(store=pstore, target="answer.json", serializer="json")
    def answer() -> dict[str, Any]:
        calls.append(1)
        return {"threshold": 0.5, "members": [1, 2, 3]}

    @flow(name="record-flow")
    def run() -> Any:
        return answer(return_state=True)

    assert run().name == "Completed"
    storage = Path(PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()).expanduser()
    before = _files(storage)
    made: list[Any] = []
    original = ResultStore.create_result_record

    def counted(self: ResultStore, obj: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(obj)
        return original(self, obj, *args, **kwargs)

    monkeypatch.setattr(ResultStore, "create_result_record", counted)

    state = run()
    assert state.name == "Cached" and calls == [1]
    assert isinstance(state.data, ResultRecord)
    assert state.data.result == {"threshold": 0.5, "members": [1, 2, 3]}
    assert state.result() == {"threshold": 0.5, "members": [1, 2, 3]}
    # (the flow run's own result, the task's state, gets its record as usual)
    values = [obj for obj in made if not hasattr(obj, "is_completed")]
    assert values == [], "the hit's value needs no record from Prefect's result store"
    # nothing was written for it: the value lives in the store only
    assert state.data.metadata.storage_key
    assert not (storage / state.data.metadata.storage_key).exists()
    assert _files(storage) == before
    # a direct call still returns the value itself
    assert flow(name="direct-flow")(lambda: answer())() == {
        "threshold": 0.5,
        "members": [1, 2, 3],
    }


def _plain(a: int, b: int = 2, *rest: int, c: str = "x", **extra: Any) -> None:
    """Positional, default, variadic and keyword-only parameters."""


def _with_field(a: int, b: int = Field(default=7)) -> None:
    """A pydantic ``Field`` default, which Prefect resolves to its value."""


class _Holder:
    def method(self, a: int, b: int = 4) -> None:
        """A method (Prefect binds its instance through ``__prefect_self__``)."""


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        (_plain, (1,), {}),
        (_plain, (1, 5, 6, 7), {"c": "y", "d": 8}),
        (_plain, (), {"a": 3}),
        (_with_field, (1,), {}),
        (_with_field, (1,), {"b": 2}),
        (lambda: None, (), {}),
    ],
)
def test_call_parameters_bind_as_prefect_does(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert call_parameters(fn, args, kwargs) == get_call_parameters(fn, args, kwargs)


def test_call_parameters_of_a_bound_method_and_a_bad_call_are_prefects() -> None:
    bound = _Holder().method
    holder = object()

    def method(self: Any, a: int, b: int = 4) -> None:
        """A function Prefect marks as a bound method."""

    method.__prefect_self__ = holder  # type: ignore[attr-defined]
    assert call_parameters(method, (1,), {}) == {"self": holder, "a": 1, "b": 4}
    assert call_parameters(bound, (1,), {}) == get_call_parameters(bound, (1,), {})
    with pytest.raises(ParameterBindError):
        call_parameters(_plain, (), {"nope": 1, "c": "y"})
