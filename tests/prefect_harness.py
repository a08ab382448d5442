"""A temporary Prefect server for the whole test session, isolated from the host.

The server starts when the first test needs it, with a generous start limit (180 s; a loaded
machine has needed over 30 s); a start that fails anyway fails that one test, and the next test
that needs the server starts it again.

Loaded as a pytest plugin by ``tests/conftest.py`` so that both the Prefect tests and the
documentation pages that run flows use it. The Prefect home is a temporary directory,
``PREFECT_API_URL`` from the developer's environment is ignored, analytics are off, and the
flow-run heartbeat (about 1 s of teardown per sync flow run) is unset.
"""

from __future__ import annotations

import contextlib
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


#: Seconds a start of the temporary server may take: a loaded machine has needed over 30 s.
SERVER_STARTUP_TIMEOUT = float(os.environ.get("XPERSIST_SQL_TEST_PREFECT_STARTUP_TIMEOUT", "180"))


class PrefectServer:
    """The session's temporary Prefect server, started on first need.

    A start that fails (a timeout on a loaded machine) fails the test that asked for it; the next
    test that needs the server tries again, so one slow start never takes the session down.
    """

    def __init__(self, home: Path, startup_timeout: float = SERVER_STARTUP_TIMEOUT) -> None:
        self.home = home
        self.startup_timeout = startup_timeout
        self.url: str | None = None
        self._stack = contextlib.ExitStack()
        self.failed_starts = 0

    def ensure(self) -> str:
        """Return the API URL, starting the server if it is not running."""
        if self.url is not None:
            return self.url
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                temporary_settings(
                    updates={
                        PREFECT_HOME: str(self.home),
                        PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(self.home / "storage"),
                        PREFECT_SERVER_ANALYTICS_ENABLED: False,
                        # no ~1 s heartbeat teardown per flow run
                        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                    },
                    restore_defaults={PREFECT_API_URL},
                )
            )
            stack.enter_context(prefect_test_harness(server_startup_timeout=self.startup_timeout))
        except BaseException:
            stack.close()
            self.failed_starts += 1
            raise
        self._stack = stack
        self.url = str(PREFECT_API_URL.value())
        return self.url

    def close(self) -> None:
        """Stop the server (if it was started)."""
        self._stack.close()
        self.url = None


@pytest.fixture(scope="session")
def prefect_server_manager(prefect_home: Path) -> Iterator[PrefectServer]:
    """The session's :class:`PrefectServer` (not started until a test needs it)."""
    server = PrefectServer(prefect_home)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def prefect_server(prefect_server_manager: PrefectServer) -> str:
    """The API URL of the session's temporary Prefect server, started on first use."""
    return prefect_server_manager.ensure()
