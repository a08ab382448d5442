"""The run context of a task call, and the targets rendered from it.

The context is captured when the key is computed, inside the task run, with Prefect 1's names:
``date`` (the flow run's scheduled start), ``today``/``yesterday``/``tomorrow`` (``YYYY-MM-DD``),
``flow_name``, ``flow_run_id``, ``flow_run_name``, ``task_name``, ``task_run_id``,
``task_run_name``, ``task_tags`` and ``parameters``; and ``inputs_hash``, a deterministic hash of
the task's bound arguments (:func:`xpersist_sql.provenance.hash_inputs`), computed only when a
target uses it.

Templates are rendered with names and format specs only (``{parameters[x]}`` one level into
the parameters, ``{task_tags[0]}``; no attributes, no conversions), widths and precisions at
most :data:`MAX_FORMAT_WIDTH`: a target cannot reach into objects nor make the process
allocate gigabytes.
"""

from __future__ import annotations

import functools
import inspect
import re
import string
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.utilities.callables import get_call_parameters
from pydantic.fields import FieldInfo

from ..errors import XpersistSQLError
from ..explain import CONTEXT_NAMES
from ..provenance import combine, components

__all__ = [
    "MAX_FORMAT_WIDTH",
    "TEMPLATE_NAMES",
    "RunContext",
    "TargetTemplateError",
    "TaskTags",
    "render_target",
]

#: The names a target template may use, as in Prefect 1.
TEMPLATE_NAMES: tuple[str, ...] = ("date", *CONTEXT_NAMES, "parameters", "inputs_hash")
#: The template name computed only when a target uses it (hashing may read large values).
INPUTS_HASH = "inputs_hash"
#: The ``additional_metadata`` name of the per-argument hashes the inputs hash combines.
INPUT_HASHES = "input_hashes"
#: A task with more arguments than this records its inputs hash without its components.
MAX_RECORDED_INPUT_HASHES = 64

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


class TemplateValues(dict[str, Any]):
    """The template values given to a callable target: a dict whose ``inputs_hash`` is lazy.

    ``ctx["inputs_hash"]`` (or ``ctx.get("inputs_hash")``) hashes the task's arguments the first
    time it is read; a callable that does not read it costs nothing.
    """

    def __init__(self, values: Mapping[str, Any], inputs_hash: Callable[[], str]) -> None:
        super().__init__(values)
        self._inputs_hash = inputs_hash

    def _resolve(self) -> None:
        if not dict.__contains__(self, INPUTS_HASH):
            dict.__setitem__(self, INPUTS_HASH, self._inputs_hash())

    def __missing__(self, key: str) -> Any:
        if key == INPUTS_HASH:
            self._resolve()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (this is get)

    def __contains__(self, key: object) -> bool:
        return key == INPUTS_HASH or dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        yield from dict.__iter__(self)
        if not dict.__contains__(self, INPUTS_HASH):
            yield INPUTS_HASH

    def __len__(self) -> int:
        return dict.__len__(self) + (0 if dict.__contains__(self, INPUTS_HASH) else 1)

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        return KeysView(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        self._resolve()
        return dict.items(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        self._resolve()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        self._resolve()
        return dict(dict.items(self))

    def __repr__(self) -> str:
        shown = dict(dict.items(self))
        shown.setdefault(INPUTS_HASH, "<computed when read>")
        return repr(shown)


_cached_signature = functools.lru_cache(maxsize=1024)(inspect.signature)


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """Return a task body's signature, read once (every task call binds its arguments)."""
    try:
        return _cached_signature(fn)
    except TypeError:  # an unhashable callable object
        return inspect.signature(fn)


def call_parameters(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Return the bound arguments of a call of a task body, as Prefect binds them.

    Prefect's ``get_call_parameters``, with the body's signature read once: a bound method's
    instance, a call that does not bind (Prefect's ``ParameterBindError``) and pydantic
    ``Field`` defaults go to Prefect's own function.
    """
    if hasattr(fn, "__prefect_self__") or hasattr(fn, "__prefect_cls__"):
        return get_call_parameters(fn, args, kwargs)
    try:
        bound = _signature(fn).bind(*args, **kwargs)
    except TypeError:
        return get_call_parameters(fn, args, kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if any(isinstance(value, FieldInfo) for value in arguments.values()):
        return get_call_parameters(fn, args, kwargs)
    return arguments


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
        bound = _signature(fn).bind(*args, **kwargs)
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

    @functools.cached_property
    def input_hashes(self) -> dict[str, str]:
        """The hash of each bound argument (computed once, when first read)."""
        where = f"task {self.task_name!r}"
        try:
            return components(self.parameters)
        except XpersistSQLError as exc:
            raise type(exc)(f"{where}: {exc}") from exc

    @functools.cached_property
    def inputs_hash(self) -> str:
        """The deterministic hash of the bound arguments (computed once, when first read).

        :func:`xpersist_sql.provenance.hash_inputs` of the arguments, combined from
        :attr:`input_hashes`.
        """
        return combine(self.input_hashes)

    def template_values(self) -> TemplateValues:
        """Return the values of the template names (``None`` for those this call does not know).

        ``inputs_hash`` is computed when first read.
        """
        day = self.date.date()
        values = {
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
        return TemplateValues(values, lambda: self.inputs_hash)

    def metadata(self) -> dict[str, Any]:
        """JSON-able context for an artifact's ``additional_metadata`` (dates as strings).

        ``parameters`` lists the parameter names only (their values may be large); names this
        call does not know are left out. When the inputs hash was computed (a target using
        ``{inputs_hash}``), it is recorded with its per-argument components (``input_hashes``,
        for at most :data:`MAX_RECORDED_INPUT_HASHES` arguments).
        """
        values = dict(dict.items(self.template_values()))  # inputs_hash: only if computed
        values.pop("date")
        values["task_tags"] = list(self.task_tags)
        values["parameters"] = list(self.parameters)
        if "inputs_hash" in self.__dict__:
            values[INPUTS_HASH] = self.__dict__["inputs_hash"]
            if len(self.input_hashes) <= MAX_RECORDED_INPUT_HASHES:
                values[INPUT_HASHES] = dict(self.input_hashes)
        return {name: value for name, value in values.items() if value is not None}


#: The largest width or precision a target's format spec may ask for (a path part's length).
MAX_FORMAT_WIDTH = 255
#: Names that take one index: ``{parameters[x]}`` (a parameter's value), ``{task_tags[0]}``.
_INDEXABLE = ("parameters", "task_tags")
_FIELD = re.compile(r"(?P<name>[^.\[\]]*)(?:\[(?P<index>[^\[\]]+)\])?")
#: The standard format spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type].
_STANDARD_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d+)?[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?",
    re.DOTALL,
)
#: A strftime directive with flags and a width (a glibc extension): ``%10Y``, ``%_5d``.
_STRFTIME_WIDTH = re.compile(r"%[-_0^#]*(\d+)")


class _TargetRenderer:
    """Render a target template with field names and format specs only.

    A field is a template name, ``{parameters[x]}`` (one level into the parameters) or
    ``{task_tags[0]}``; no attributes (``{date.year}``), no deeper lookups, no conversions
    (``!r``), no nested fields in a format spec, and widths and precisions of at most
    :data:`MAX_FORMAT_WIDTH`, checked before anything is formatted.
    """

    def __init__(self, template: str, values: Mapping[str, Any], parameters: str) -> None:
        self.template = template
        self.values = values
        self.parameters = parameters  # the parameter names, for messages

    def refuse(self, why: str) -> TargetTemplateError:
        return TargetTemplateError(f"target {self.template!r} {why}")

    def failed(self, why: str) -> TargetTemplateError:
        return TargetTemplateError(f"cannot render target {self.template!r}: {why}")

    def render(self) -> str:
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise self.failed(f"{exc} (write {{{{ and }}}} for literal braces)") from None
        out: list[str] = []
        for literal, field_name, spec, conversion in parsed:
            out.append(literal)
            if field_name is None:
                continue
            spec = spec or ""
            field = f"{{{field_name}}}"
            if conversion is not None:
                raise self.refuse(
                    f"uses the conversion !{conversion} in {{{field_name}!{conversion}}}; "
                    "a target may use names and format specs only"
                )
            if spec and ("{" in spec or "}" in spec):
                raise self.refuse(
                    f"nests a field in the format spec of {{{field_name}:{spec}}}; "
                    "a format spec must be literal"
                )
            value = self.lookup(field_name, field)
            self.check_spec(value, spec, f"{{{field_name}:{spec}}}")
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError) as exc:
                raise self.failed(f"{{{field_name}:{spec}}}: {type(exc).__name__}: {exc}") from None
        return "".join(out)

    def lookup(self, field_name: str, field: str) -> Any:
        match = _FIELD.fullmatch(field_name)
        name = match["name"] if match else field_name.split(".")[0].split("[")[0]
        if name not in TEMPLATE_NAMES:
            shown = "{}" if name == "" else f"{{{name}}}"
            raise self.refuse(
                f"uses the unknown name {shown}; the known names are {', '.join(TEMPLATE_NAMES)}"
            )
        index = match["index"] if match else None
        if match is None or (index is not None and name not in _INDEXABLE):
            raise self.refuse(
                f"uses {field}: a field is a name, {{parameters[x]}} or {{task_tags[0]}}; "
                "attributes (.name) and further lookups are not allowed (format specs such as "
                "{date:%Y} are)"
            )
        value = self.values[name]
        if value is None:
            raise self.refuse(
                f"uses {{{name}}}, which this call does not have (a task called outside a flow "
                "has no flow run); call the task inside a flow or use another name"
            )
        if index is None:
            return value
        if name == "parameters":
            if index not in value:
                raise self.failed(
                    f"KeyError: {index!r} is not a parameter of the task "
                    f"(the task's parameters are: {self.parameters})"
                )
            return value[index]
        if not index.isdigit() or int(index) >= len(value):
            raise self.failed(
                f"IndexError: {field} picks no tag of the task run's "
                f"{len(value)} tags ({', '.join(value) or 'none'})"
            )
        return value[int(index)]

    def check_spec(self, value: Any, spec: str, field: str) -> None:
        """Refuse a width or precision over the limit before anything is allocated."""
        if not spec:
            return
        if isinstance(value, (date, time)):  # datetime and date: strftime directives
            numbers = _STRFTIME_WIDTH.findall(spec)
        else:
            match = _STANDARD_SPEC.fullmatch(spec)
            if match is None:
                raise self.refuse(
                    f"uses the format spec {spec!r} in {field}, which is not a standard format "
                    "spec ([[fill]align][sign][0][width][,][.precision][type], e.g. '03d', "
                    "'>8', '.2f')"
                )
            numbers = [number for number in match.group("width", "precision") if number]
        for number in numbers:
            if int(number) > MAX_FORMAT_WIDTH:
                raise self.refuse(
                    f"asks for a width or precision of {number} in {field}; the limit is "
                    f"{MAX_FORMAT_WIDTH} (a key's path parts are at most 255 bytes)"
                )


def uses_inputs_hash(target: Target) -> bool:
    """Whether a ``str`` template names ``{inputs_hash}`` (a callable may: it is not known)."""
    if not isinstance(target, str):
        return False
    try:
        parsed = list(string.Formatter().parse(target))
    except ValueError:
        return False
    return any(name is not None and name.split(":")[0] == INPUTS_HASH for _, name, _, _ in parsed)


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
        An unknown name, a name the call does not have, a missing parameter, a bad format, an
        attribute or nested lookup (``{parameters[cfg].x}``), a conversion (``!r``), or a
        width or precision over :data:`MAX_FORMAT_WIDTH` (``{flow_name:>99999}``): targets
        are rendered with names and format specs only.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> ctx = RunContext(date=datetime(2021, 12, 16, tzinfo=timezone.utc), task_name="get_data",
    ...                  parameters={"i": 3})
    >>> render_target("{date:%A}-{task_name}-{parameters[i]}.zarr", ctx)
    'Thursday-get_data-3.zarr'
    """
    if isinstance(target, str) and "{" not in target and "}" not in target:
        return target  # no field to render: the key as written
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
    known = ", ".join(sorted(context.parameters)) or "none"
    return _TargetRenderer(target, values, known).render()
