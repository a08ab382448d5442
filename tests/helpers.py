"""Small data builders and command-line runners shared by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

#: The environment variables that select the store and index of the command line.
CLI_ENV_VARS = ("XPERSIST_SQL_STORE", "XPERSIST_SQL_DATABASE_URL")


def make_dataset(n: int = 24, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "tas": (("time", "x"), rng.normal(size=(n, 5))),
            "pr": (("time",), rng.random(n)),
        },
        coords={"time": pd.date_range("2021-01-01", periods=n, freq="D"), "x": np.arange(5)},
        attrs={"title": "test data"},
    )


def make_frame(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"a": np.arange(n), "b": np.linspace(0, 1, n), "c": [f"s{i}" for i in range(n)]},
        index=pd.Index([f"r{i}" for i in range(n)], name="row"),
    )


def run_cli(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xpersist_sql ARGS`` (the ``xpersist-sql`` script with ``script``).

    The child process gets this environment without :data:`CLI_ENV_VARS`.
    """
    if script:
        program = [str(Path(sys.executable).with_name("xpersist-sql"))]
    else:
        program = [sys.executable, "-m", "xpersist_sql"]
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV_VARS}
    return subprocess.run(
        [*program, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def install_wheel_in_fresh_venv(wheel: Path, venv: Path) -> tuple[Path, str]:
    """Install ``wheel`` alone into a new venv at ``venv``; return its python and site dir.

    The venv takes its dependencies from this environment through a path entry (not its
    ``.pth`` files, so the editable install of the repository stays invisible there).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [path for path in sys.path if path.endswith("site-packages")]
    Path(site, "_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--force-reinstall", "--no-index", str(wheel)],
        check=True,
    )  # fmt: skip
    return python, site


def run_until_killed(
    ctx: Any,
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    kills_itself: bool,
    delay: float = 0,
    timeout: float = 120,
) -> float:
    """Run ``target(*args, ready)`` in a child process and end it with SIGKILL.

    ``target`` sends ``"go"`` on the pipe end ``ready`` when it starts (and ``"done"`` if it
    finishes its work). Unless it ``kills_itself`` (at an injected step), it is killed
    ``delay`` seconds after it started. Returns the seconds from its start to its end.
    """
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, sender))
    proc.start()
    sender.close()
    assert receiver.poll(timeout), "the writer did not start"
    assert receiver.recv() == "go"
    start = time.perf_counter()
    if not kills_itself:
        if receiver.poll(delay):
            receiver.recv()  # it finished before the kill
        proc.kill()
    proc.join(timeout)
    receiver.close()
    assert proc.exitcode == -signal.SIGKILL
    return time.perf_counter() - start
