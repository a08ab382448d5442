"""The test session's Prefect server: a start that times out fails one test, not the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prefect_harness import PrefectServer


def test_a_start_that_times_out_fails_once_and_the_next_start_works(tmp_path: Path) -> None:
    server = PrefectServer(tmp_path / "prefect-home", startup_timeout=0.1)
    try:
        with pytest.raises(Exception, match=r"(?i)timed out|timeout"):
            server.ensure()  # what a slow start on a loaded machine looks like
        assert server.url is None and server.failed_starts == 1
        server.startup_timeout = 180
        url = server.ensure()  # the next test that needs the server starts it again
        assert url.startswith("http://127.0.0.1:")
        assert server.ensure() == url  # and then reuses it
    finally:
        server.close()
    assert server.url is None
