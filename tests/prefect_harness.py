"""A temporary Prefect server for the whole test session, isolated from the host.

Loaded as a pytest plugin by ``tests/conftest.py`` so that both the Prefect tests and the
documentation pages that run flows use it. The Prefect home is a temporary directory,
``PREFECT_API_URL`` from the developer's environment is ignored, analytics are off, and the
flow-run heartbeat (about 1 s of teardown per sync flow run) is unset.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="xpersist-sql-prefect-home-")
# Before prefect is imported: its settings are read from the environment.
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILES_PATH"):
    os.environ.pop(_name, None)
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# Task runs called outside a flow log locally only; do not warn about it.
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.pop("XPERSIST_SQL_REFRESH", None)

from prefect.settings import (  # noqa: E402
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_HOME,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness  # noqa: E402


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    """The temporary ``PREFECT_HOME`` of the session."""
    return Path(_HOME)


@pytest.fixture(scope="session")
def prefect_server(prefect_home: Path) -> Iterator[str]:
    """A temporary Prefect server (``prefect_test_harness``); yields its API URL."""
    settings = temporary_settings(
        updates={
            PREFECT_HOME: str(prefect_home),
            PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(prefect_home / "storage"),
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,  # no ~1 s heartbeat teardown per flow run
        },
        restore_defaults={PREFECT_API_URL},
    )
    with settings, prefect_test_harness():
        yield str(PREFECT_API_URL.value())
