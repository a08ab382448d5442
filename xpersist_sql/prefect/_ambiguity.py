"""Targets that match the call: warn when calls with different inputs share one key.

A target that does not use a parameter whose value differs between calls (a ``.map``, or two
calls in one flow run) gives those calls one key: the first stores its value, the later ones
find it and return it whatever their own inputs. The first time this is seen for a task, a
:class:`AmbiguousTargetWarning` is issued (and logged to the Prefect run logger) naming the
parameter and a template that keys on it.

Three checks, all cheap:

- where the task is called (``task(...)``, ``.submit``, ``.map``, in the flow's process, so
  whatever the task runner): a ``str`` template's fields say which parameters it keys on; the
  values of the others are compared between the calls of one flow run;
- where a call renders a callable target (in the process that runs the task): the calls of one
  flow run that render the same key are compared on all their parameters;
- where a call renders a ``str`` template: the calls of one flow run that render the same key
  are compared on the parameters the template uses. Different values can render alike (``1``
  and ``"1"``, ``{parameters[x]:.0f}`` of ``1.1`` and ``1.4``): those calls share a key too.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
import re
import reprlib
import string
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.utilities.annotations import BaseAnnotation

from ._context import TEMPLATE_NAMES, Target

__all__ = ["AmbiguousTargetWarning", "TargetKeys", "check_collisions", "target_keys"]

_MODULE_LOGGER = logging.getLogger("xpersist_sql.prefect")


class AmbiguousTargetWarning(UserWarning):
    """A task's target does not use a parameter whose value differs between calls.

    Those calls share one key: the first stores its value there and the later ones return it,
    whatever their own inputs. Key the target on the parameter (``"{parameters[x]}.json"``).
    Issued once per task; silence it with
    ``warnings.filterwarnings("ignore", category=AmbiguousTargetWarning)`` when the parameter
    really does not change the value (a client, a verbosity flag).
    """


#: Names that differ for every task run, or key on every parameter (``inputs_hash``): a target
#: using one never gives two calls with different inputs one key.
_PER_RUN_NAMES = frozenset({"task_run_id", "task_run_name", "inputs_hash"})
_FIELD = re.compile(r"(?P<name>[^.\[\]]*)(?:\[(?P<index>[^\[\]]+)\])?")


@dataclass(frozen=True)
class TargetKeys:
    """What a target keys on.

    Attributes
    ----------
    kind : {"static", "unique", "dynamic"}
        ``"static"``: a template keying on ``parameters`` only (checked where the task is
        called); ``"unique"``: every call gets its own key (a per-run name, or all the
        parameters), nothing to check; ``"dynamic"``: a callable, checked on the keys it renders.
    parameters : frozenset of str
        The parameters a ``"static"`` template uses.
    """

    kind: Literal["static", "unique", "dynamic"]
    parameters: frozenset[str] = frozenset()


def target_keys(target: Target) -> TargetKeys:
    """Return which parameters ``target`` keys on.

    Examples
    --------
    >>> target_keys("members/{parameters[member]:03d}.json")
    TargetKeys(kind='static', parameters=frozenset({'member'}))
    >>> target_keys("{task_run_id}.json").kind
    'unique'
    """
    if callable(target):
        return TargetKeys("dynamic")
    try:
        parsed = list(string.Formatter().parse(target))
    except ValueError:
        return TargetKeys("unique")  # rendering fails with its own message; nothing to check
    used: set[str] = set()
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        match = _FIELD.fullmatch(field_name)
        if match is None:
            return TargetKeys("unique")
        name, index = match["name"], match["index"]
        if name in _PER_RUN_NAMES or (name == "parameters" and index is None):
            return TargetKeys("unique")
        if name == "parameters" and index is not None:
            used.add(index)
    return TargetKeys("static", frozenset(used))


# -- fingerprints of parameter values ------------------------------------------------------------
_SCALARS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    uuid.UUID,
    enum.Enum,
)
_MAX_ITEMS = 1000
_MAX_BYTES = 4096


def _freeze(value: Any, budget: list[int]) -> Any:
    """Return a hashable stand-in for a small value made of scalars, or raise ``TypeError``."""
    budget[0] -= 1
    if budget[0] < 0:
        raise TypeError("too large to compare by value")
    if isinstance(value, (str, bytes)) and len(value) > _MAX_BYTES:
        return ("hash", type(value).__qualname__, hash(value))
    if isinstance(value, _SCALARS):
        return (type(value).__qualname__, value)
    if isinstance(value, (list, tuple)):
        return (type(value).__qualname__, tuple(_freeze(item, budget) for item in value))
    if isinstance(value, (set, frozenset)):
        return (type(value).__qualname__, frozenset(_freeze(item, budget) for item in value))
    if isinstance(value, Mapping):
        items = [(_freeze(k, budget), _freeze(v, budget)) for k, v in value.items()]
        return ("mapping", frozenset(items))
    raise TypeError("not a plain value")


def fingerprint(value: Any) -> Any:
    """Return what tells two parameter values apart, without keeping large values alive.

    Plain values (scalars, and small lists, tuples, sets and dicts of them) compare by value; a
    Prefect future by its task run; any other hashable value by its hash; anything else (an
    array, a dataset) by identity.
    """
    if isinstance(value, BaseAnnotation):
        value = value.unwrap()
    if isinstance(value, PrefectFuture):
        return ("future", str(value.task_run_id))
    try:
        return ("value", _freeze(value, [_MAX_ITEMS]))
    except (TypeError, RecursionError):
        pass
    try:
        return ("hash", type(value).__qualname__, hash(value))
    except TypeError:
        return ("id", id(value))


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _shown(value: Any) -> str:
    if isinstance(value, BaseAnnotation):
        value = value.unwrap()
    if isinstance(value, PrefectFuture):
        return f"the result of task run {value.task_run_id}"
    return _REPR.repr(value)


# -- the record of calls -------------------------------------------------------------------------
def flow_run_scope() -> str | None:
    """Return the id of the current flow run (``None`` outside a flow)."""
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    return str(flow_run.id) if flow_run is not None else None


class _CallRecord:
    """The first value of each compared parameter, per task and flow run (and key)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._lock = threading.Lock()
        self._first: OrderedDict[tuple[Any, ...], dict[str, tuple[Any, str]]] = OrderedDict()
        self._warned: set[str] = set()
        self._max_entries = max_entries

    def warned(self, token: str) -> bool:
        return token in self._warned

    def differing(
        self, token: str, bucket: tuple[Any, ...], values: Mapping[str, Any], names: Iterable[str]
    ) -> list[tuple[str, str, str]]:
        """Record one call; return ``(name, first value, this value)`` of the differing ones.

        Returns nothing once the task was warned about (the warning is issued once per task).
        """
        if token in self._warned:
            return []
        seen = {name: (fingerprint(values[name]), values[name]) for name in names}
        key = (token, *bucket)
        with self._lock:
            first = self._first.get(key)
            if first is None:
                self._first[key] = {name: (fp, _shown(v)) for name, (fp, v) in seen.items()}
                while len(self._first) > self._max_entries:
                    self._first.popitem(last=False)
                return []
            self._first.move_to_end(key)
            return [
                (name, first[name][1], _shown(value))
                for name, (fp, value) in seen.items()
                if name in first and first[name][0] != fp
            ]

    def claim_warning(self, token: str) -> bool:
        """Return True the first time a task is to be warned about, False after."""
        with self._lock:
            if token in self._warned:
                return False
            self._warned.add(token)
            return True


_RECORD = _CallRecord()


def _suggest(target: Target, names: list[str]) -> str:
    """Suggest a target that keys on ``names`` too (``result.json`` -> ``result-{...}.json``)."""
    fields = "".join(f"-{{parameters[{name}]}}" for name in names)
    if callable(target):
        items = ", ".join(f"ctx['parameters'][{name!r}]" for name in names)
        return f"a callable that puts {items} in the key it returns"
    head, slash, base = target.rpartition("/")
    depth, cut = 0, len(base)
    for position, char in enumerate(base):  # the first "." outside a {field} starts the suffix
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "." and depth == 0 and position > 0:
            cut = position
            break
    suggestion = f"{head}{slash}{base[:cut]}{fields}{base[cut:]}"
    return f"target={suggestion!r}"


def _suggest_inputs_hash(target: str) -> str:
    """Suggest ``target`` keyed on all inputs (``a.json`` -> ``a-{inputs_hash}.json``)."""
    head, slash, base = target.rpartition("/")
    depth, cut = 0, len(base)
    for position, char in enumerate(base):  # the first "." outside a {field} starts the suffix
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "." and depth == 0 and position > 0:
            cut = position
            break
    suggestion = f"{head}{slash}{base[:cut]}-{{inputs_hash}}{base[cut:]}"
    return f"target={suggestion!r}"


def _emit(message: str) -> None:
    """Log ``message`` to the run's logger (or the module's) and issue the warning."""
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = _MODULE_LOGGER
    logger.warning(message)
    warnings.warn(message, AmbiguousTargetWarning, stacklevel=5)


def _warn(
    task_name: str, target: Target, differing: list[tuple[str, str, str]], token: str
) -> None:
    if not _RECORD.claim_warning(token):
        return
    names = [name for name, _, _ in differing]
    values = "; ".join(f"{name}={first} then {name}={now}" for name, first, now in differing)
    shown = getattr(target, "__qualname__", repr(target)) if callable(target) else repr(target)
    plural = "s" if len(names) > 1 else ""
    hint = ""
    if "inputs_hash" in TEMPLATE_NAMES:
        hint = (
            f" (or on all the inputs: {_suggest_inputs_hash(target)})"
            if not callable(target)
            else " (or on ctx['inputs_hash'], a hash of all the inputs)"
        )
    message = (
        f"the target {shown} of task {task_name!r} does not use the parameter{plural} "
        f"{', '.join(repr(n) for n in names)}, whose value differs between calls of one flow "
        f"run ({values}): those calls share one key, so the later ones return the value the "
        f"first one stored. Key the target on it: {_suggest(target, names)}{hint}"
    )
    _emit(message)


def check_calls(
    token: str,
    task: Any,
    task_name: str,
    target: Target,
    keys: TargetKeys,
    calls: Iterable[Mapping[str, Any]],
) -> None:
    """Compare the calls made where the task is called (``"static"`` targets only).

    ``task`` tells apart copies of one task (``with_options``) that render other keys.
    """
    if keys.kind != "static" or _RECORD.warned(token):
        return
    scope: str | None = None
    for index, parameters in enumerate(calls):
        names = [name for name in parameters if name not in keys.parameters]
        if not names:
            return
        if index == 0:
            scope = flow_run_scope()
        differing = _RECORD.differing(token, (scope, task), parameters, names)
        if differing:
            _warn(task_name, target, differing, token)
            return


def check_rendered(
    token: str,
    task_name: str,
    target: Callable[..., Any],
    scope: str | None,
    key: str,
    parameters: Mapping[str, Any],
) -> None:
    """Compare the calls of one flow run that rendered ``key`` from a callable target."""
    if not parameters or _RECORD.warned(token):
        return
    differing = _RECORD.differing(token, (scope, key), parameters, list(parameters))
    if differing:
        _warn(task_name, target, differing, token)


def check_collisions(
    token: str,
    task_name: str,
    target: str,
    scope: str | None,
    key: str,
    parameters: Mapping[str, Any],
) -> None:
    """Compare the calls of one flow run whose template rendered ``key`` from its parameters.

    ``parameters``: the values of the parameters the template uses. Different values that
    render one key (a format that rounds or cuts them, ``1`` and ``"1"``) are warned about as
    a target that does not use a parameter is.
    """
    if not parameters or _RECORD.warned(token):
        return
    differing = _RECORD.differing(token, ("rendered", scope, key), parameters, list(parameters))
    if not differing or not _RECORD.claim_warning(token):
        return
    values = "; ".join(f"{name}={first} then {name}={now}" for name, first, now in differing)
    message = (
        f"the target {target!r} of task {task_name!r} renders the key {key!r} for different "
        f"values of {', '.join(repr(name) for name, _, _ in differing)} in one flow run "
        f"({values}): those calls share one key, so the later ones return the value the first "
        "one stored. Render the values apart (no format that rounds or cuts them, and one type "
        f"per parameter), or key on all the inputs: {_suggest_inputs_hash(target)}"
    )
    _emit(message)
