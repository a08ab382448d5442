"""The run context of a task call, and the targets rendered from it.

The context is captured when the key is computed, inside the task run, with Prefect 1's names:
``date`` (the flow run's scheduled start), ``today``/``yesterday``/``tomorrow`` (``YYYY-MM-DD``),
``flow_name``, ``flow_run_id``, ``flow_run_name``, ``task_name``, ``task_run_id``,
``task_run_name``, ``task_tags`` and ``parameters``.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext

from ..errors import XpersistSQLError

__all__ = ["TEMPLATE_NAMES", "RunContext", "TargetTemplateError", "TaskTags", "render_target"]

#: The names a target template may use, as in Prefect 1.
TEMPLATE_NAMES: tuple[str, ...] = (
    "date",
    "today",
    "yesterday",
    "tomorrow",
    "flow_name",
    "flow_run_id",
    "flow_run_name",
    "task_name",
    "task_run_id",
    "task_run_name",
    "task_tags",
    "parameters",
)

Target = str | Callable[[dict[str, Any]], str]


class TargetTemplateError(XpersistSQLError, ValueError):
    """A target template uses an unknown name or a value the run does not have."""


class TaskTags(tuple[str, ...]):
    """The sorted tags of a task run; ``{task_tags}`` renders them joined by ``-``.

    ``{task_tags[0]}`` picks one tag.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return "-".join(self)

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


def _as_utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    # Prefect's DateTime subclasses datetime; keep a plain stdlib datetime in UTC.
    return datetime.fromtimestamp(value.timestamp(), tz=timezone.utc)


@dataclass(frozen=True)
class RunContext:
    """What a target template and an artifact's metadata know about one task call.

    Attributes are ``None`` when the call does not have them (a task called outside a flow has
    no flow run, a bare ``task.fn(...)`` call has no task run).
    """

    date: datetime
    task_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    flow_name: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    task_run_id: str | None = None
    task_run_name: str | None = None
    task_tags: TaskTags = field(default_factory=TaskTags)
    in_task_run: bool = False

    @classmethod
    def capture(
        cls,
        fn: Callable[..., Any],
        default_task_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> RunContext:
        """Capture the context of the current call of ``fn`` (a task body) now."""
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        parameters = dict(bound.arguments)
        task_ctx = TaskRunContext.get()
        flow_ctx = FlowRunContext.get()
        flow_run = flow_ctx.flow_run if flow_ctx is not None else None
        task_run = task_ctx.task_run if task_ctx is not None else None
        if flow_run is not None:
            date = _as_utc(flow_run.expected_start_time or flow_run.start_time)
        elif task_run is not None:
            date = _as_utc(task_run.expected_start_time or task_run.start_time)
        else:
            date = _as_utc(None)
        return cls(
            date=date,
            task_name=task_ctx.task.name if task_ctx is not None else default_task_name,
            parameters=parameters,
            flow_name=flow_ctx.flow.name if flow_ctx is not None and flow_ctx.flow else None,
            flow_run_id=str(flow_run.id) if flow_run is not None else None,
            flow_run_name=flow_run.name if flow_run is not None else None,
            task_run_id=str(task_run.id) if task_run is not None else None,
            task_run_name=task_run.name if task_run is not None else None,
            task_tags=TaskTags(sorted(task_run.tags)) if task_run is not None else TaskTags(),
            in_task_run=task_ctx is not None,
        )

    def template_values(self) -> dict[str, Any]:
        """Return the values of the template names (``None`` for those this call does not know)."""
        day = self.date.date()
        return {
            "date": self.date,
            "today": day.isoformat(),
            "yesterday": (day - timedelta(days=1)).isoformat(),
            "tomorrow": (day + timedelta(days=1)).isoformat(),
            "flow_name": self.flow_name,
            "flow_run_id": self.flow_run_id,
            "flow_run_name": self.flow_run_name,
            "task_name": self.task_name,
            "task_run_id": self.task_run_id,
            "task_run_name": self.task_run_name,
            "task_tags": self.task_tags,
            "parameters": dict(self.parameters),
        }

    def metadata(self) -> dict[str, Any]:
        """JSON-able context for an artifact's ``additional_metadata`` (dates as strings).

        ``parameters`` lists the parameter names only (their values may be large); names this
        call does not know are left out.
        """
        values = self.template_values()
        values.pop("date")
        values["task_tags"] = list(self.task_tags)
        values["parameters"] = list(self.parameters)
        return {name: value for name, value in values.items() if value is not None}


class _TargetFormatter(string.Formatter):
    def __init__(self, template: str) -> None:
        self.template = template

    def get_value(self, key: int | str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int) or key not in TEMPLATE_NAMES:
            field_name = "{}" if key == "" or isinstance(key, int) else f"{{{key}}}"
            raise TargetTemplateError(
                f"target {self.template!r} uses the unknown name {field_name}; the known names "
                f"are {', '.join(TEMPLATE_NAMES)}"
            )
        value = kwargs[key]
        if value is None:
            raise TargetTemplateError(
                f"target {self.template!r} uses {{{key}}}, which this call does not have (a task "
                "called outside a flow has no flow run); call the task inside a flow or use "
                "another name"
            )
        return value


def render_target(target: Target, context: RunContext) -> str:
    """Render ``target`` (a ``str.format`` template or a callable) over ``context``.

    Parameters
    ----------
    target : str or callable
        A template such as ``"{date:%A}-{flow_name}-{task_name}.zarr"``, or a callable
        receiving the template values as a dict and returning the key.
    context : RunContext
        The captured context of the call.

    Returns
    -------
    str
        The key (not validated yet: the store does that).

    Raises
    ------
    TargetTemplateError
        An unknown name, a name the call does not have, a missing parameter or a bad format.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> ctx = RunContext(date=datetime(2021, 12, 16, tzinfo=timezone.utc), task_name="get_data",
    ...                  parameters={"i": 3})
    >>> render_target("{date:%A}-{task_name}-{parameters[i]}.zarr", ctx)
    'Thursday-get_data-3.zarr'
    """
    values = context.template_values()
    if callable(target):
        key = target(values)
        if not isinstance(key, str):
            raise TargetTemplateError(
                f"the target callable {getattr(target, '__name__', target)!r} returned "
                f"{type(key).__name__} {key!r}; it must return the key as a str"
            )
        return key
    if not isinstance(target, str):
        raise TypeError(f"target must be a str or a callable, got {type(target).__name__}")
    try:
        return _TargetFormatter(target).vformat(target, (), values)
    except TargetTemplateError:
        raise
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        known = ", ".join(sorted(context.parameters)) or "none"
        raise TargetTemplateError(
            f"cannot render target {target!r}: {type(exc).__name__}: {exc} (the task's "
            f"parameters are: {known}; the known names are {', '.join(TEMPLATE_NAMES)})"
        ) from exc
