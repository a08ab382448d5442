"""Prefect 3 integration: tasks whose values are cached in a :class:`~xpersist_sql.CacheStore`.

This subpackage is the only part of xpersist_sql that imports prefect.

>>> from xpersist_sql.prefect import XpersistResult, xpersist_task  # doctest: +SKIP
"""

try:
    import prefect  # noqa: F401
except ImportError as exc:  # the [prefect] extra is not installed
    raise ImportError(
        "xpersist_sql.prefect needs Prefect 3, which is not installed: "
        "pip install 'xpersist_sql[prefect]'"
    ) from exc

from ._ambiguity import AmbiguousTargetWarning
from ._context import TEMPLATE_NAMES, RunContext, TargetTemplateError, render_target
from ._lock_manager import StoreLockManager
from ._result import XpersistResult
from ._task import CACHED_STATE_NAME, REFRESH_ENV, XpersistTask, refresh_requested, xpersist_task

__all__ = [
    "CACHED_STATE_NAME",
    "REFRESH_ENV",
    "TEMPLATE_NAMES",
    "AmbiguousTargetWarning",
    "RunContext",
    "StoreLockManager",
    "TargetTemplateError",
    "XpersistResult",
    "XpersistTask",
    "refresh_requested",
    "render_target",
    "xpersist_task",
]
