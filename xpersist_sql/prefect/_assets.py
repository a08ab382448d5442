"""Report stored results to Prefect: asset events and a link artifact on the task run.

Prefect 3's public asset API declares asset keys before a task runs: ``@materialize(*assets)``
and ``MaterializingTask(assets=...)`` / ``.with_options(assets=...)`` take them when the task is
declared or submitted, and ``add_asset_metadata`` refuses a key that was not declared. The key
of an xpersist task's result is its payload URL, known only once the target has been rendered
inside the task run. So the result is reported with two other public APIs:

- :func:`prefect.events.emit_event`, with the events Prefect's engine emits for a
  ``@materialize`` task (documented in Prefect's event reference, "Asset events"):
  ``prefect.asset.referenced`` for each upstream asset and
  ``prefect.asset.materialization.succeeded`` for the stored payload, whose related resources
  are the upstream assets (role ``asset``) and ``xpersist_sql`` (role
  ``asset-materialized-by``); Prefect adds the task run and flow run, as for its own events.
  Prefect Cloud draws its asset graph from these events; a self-hosted server keeps them in its
  event feed.
- :func:`prefect.artifacts.create_link_artifact` on the task run: a link to the payload URL
  (a local path as a ``file://`` URL),
  keyed by the store key, whose description names the key, the serializer and the parents.
  This is what the open-source UI shows on the task run (its Artifacts tab).

Reporting never fails a task: a failure is logged as a warning.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

from prefect.artifacts import create_link_artifact
from prefect.assets import Asset
from prefect.context import FlowRunContext
from prefect.events import emit_event

from ._lineage import Parent

__all__ = [
    "MATERIALIZATION_EVENT",
    "MATERIALIZED_BY",
    "REFERENCE_EVENT",
    "asset_key",
    "file_url",
    "link_artifact_key",
    "report_hit",
    "report_write",
]

#: The event Prefect emits when a materializing task succeeds.
MATERIALIZATION_EVENT = "prefect.asset.materialization.succeeded"
#: The event Prefect emits for each upstream asset of a materialization.
REFERENCE_EVENT = "prefect.asset.referenced"
#: The ``asset-materialized-by`` related resource of the events.
MATERIALIZED_BY = "xpersist_sql"
_SCHEME = re.compile(r"^[a-z0-9]+://")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def file_url(url: str) -> str:
    """Return ``url`` as a URL: a local path becomes ``file:///...`` (not percent-encoded).

    Examples
    --------
    >>> file_url("/tmp/cache/bar.zarr")
    'file:///tmp/cache/bar.zarr'
    >>> file_url("s3://bucket/cache/bar.zarr")
    's3://bucket/cache/bar.zarr'
    """
    if _SCHEME.match(url):
        return url
    path = url.replace("\\", "/")
    if not PurePosixPath(path).is_absolute():
        path = "/" + path  # a Windows drive path: file:///C:/...
    return f"file://{path}"


@functools.lru_cache(maxsize=4096)
def asset_key(url: str) -> str | None:
    """Return the Prefect asset key of a payload URL, or ``None`` when Prefect refuses it.

    A URL with a scheme (``s3://bucket/cache/bar.zarr``) is the key; a local path becomes a
    ``file://`` URL (``file:///tmp/cache/bar.zarr``, not percent-encoded: Prefect refuses
    ``%``). Prefect's rules: a lowercase scheme, at most 512 characters, no spaces, no
    ``# ? & % " ' < > [ ] { } | ^``, backslashes or backquotes.

    Examples
    --------
    >>> asset_key("/tmp/cache/bar.zarr")
    'file:///tmp/cache/bar.zarr'
    >>> asset_key("s3://bucket/cache/bar.zarr")
    's3://bucket/cache/bar.zarr'
    >>> asset_key("/tmp/my cache/bar.zarr") is None
    True
    """
    try:
        return str(Asset(key=file_url(url)).key)
    except ValueError:
        return None


def link_artifact_key(store_path: str, key: str) -> str:
    """Return the Prefect artifact key of a stored result (lowercase letters, digits, dashes).

    The same store key gives the same artifact key, so Prefect's UI lists the versions of one
    result together; a short hash of the store and key keeps two keys that slug alike apart.

    Examples
    --------
    >>> link_artifact_key("/tmp/cache", "regrid/Europe_2.zarr")  # doctest: +ELLIPSIS
    'xpersist-regrid-europe-2-zarr-...'
    """
    slug = _NOT_SLUG.sub("-", key.lower()).strip("-")[:60].strip("-") or "result"
    digest = hashlib.sha256(f"{store_path}\0{key}".encode()).hexdigest()[:8]
    return f"xpersist-{slug}-{digest}"


def _propagate(task_run_id: str | None, key: str | None) -> None:
    """Make the asset an upstream asset of Prefect's own materializing tasks downstream."""
    flow_ctx = FlowRunContext.get()
    if flow_ctx is None or task_run_id is None or key is None:
        return
    flow_ctx.task_run_assets[UUID(task_run_id)] = {_asset(key)}


@functools.lru_cache(maxsize=4096)
def _asset(key: str) -> Asset:
    """Return the Prefect asset of a key (validated once: a hit reports it on every call)."""
    return Asset(key=key)


def _description(key: str, store_path: str, serializer: str, parents: Sequence[Parent]) -> str:
    lines = [
        f"Stored by xpersist_sql under the key `{key}` of the store `{store_path}`, "
        f"serializer `{serializer}`."
    ]
    if parents:
        lines.append("")
        lines.append("Computed from:")
        lines.extend(f"- `{parent.identity.key}`" for parent in parents)
    return "\n".join(lines)


def report_write(
    *,
    url: str,
    key: str,
    store_path: str,
    serializer: str,
    parents: Sequence[Parent],
    task_run_id: str | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Report a result a task run has just stored: asset events and a link artifact.

    Never raises: a failure is logged as a warning.
    """
    try:
        own = asset_key(url)
        upstream = [key for key in (asset_key(p.url) for p in parents if p.url) if key]
        if own is not None:
            related: list[dict[str, str]] = [
                {"prefect.resource.id": parent, "prefect.resource.role": "asset"}
                for parent in upstream
            ]
            related.append(
                {
                    "prefect.resource.id": MATERIALIZED_BY,
                    "prefect.resource.role": "asset-materialized-by",
                }
            )
            for parent in upstream:
                emit_event(event=REFERENCE_EVENT, resource={"prefect.resource.id": parent})
            payload: dict[str, Any] = {
                "key": key,
                "store": store_path,
                "serializer": serializer,
                "parents": [parent.identity.key for parent in parents],
            }
            emit_event(
                event=MATERIALIZATION_EVENT,
                resource={"prefect.resource.id": own, "prefect.resource.name": key},
                related=related,
                payload=payload,
            )
            _propagate(task_run_id, own)
        if task_run_id is not None:
            create_link_artifact(
                link=file_url(url),
                link_text=key,
                key=link_artifact_key(store_path, key),
                description=_description(key, store_path, serializer, parents),
                _sync=True,  # type: ignore[call-arg]
            )
    except Exception as exc:
        logger.warning(
            "could not report the stored result %r to Prefect (asset event and link "
            "artifact); the task is not affected: %s: %s",
            key,
            type(exc).__name__,
            exc,
        )


def report_hit(
    *,
    url: str,
    key: str,
    task_run_id: str | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Make a loaded result an upstream asset of Prefect materializing tasks downstream.

    A hit materializes nothing, so no event is emitted (as Prefect does for its own ``Cached``
    task runs). Never raises.
    """
    try:
        _propagate(task_run_id, asset_key(url))
    except Exception as exc:
        logger.warning(
            "could not report the loaded result %r to Prefect; the task is not affected: %s",
            key,
            exc,
        )
