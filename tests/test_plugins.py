"""Serializer plugins installed as a user installs them: a distribution built and pip-installed.

A tiny plugin project (``pyproject.toml`` + a package) declares three serializers in the
``xpersist_sql.serializers`` entry-point group, one of them broken. It is built into a wheel and
installed with pip into a throwaway venv that sees this environment's packages (a path entry)
and this repository (a path entry): there, the broken plugin is reported, the others load and
``"auto"`` picks the one declaring the value's type.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "xpt-plugins"
version = "1.2.3"

[project.entry-points."xpersist_sql.serializers"]
"xpt.broken" = "xpt_plugins.broken:Serializer"
"xpt.upper" = "xpt_plugins.good:Upper"
"xpt.temperature" = "xpt_plugins.good:TemperatureText"

[tool.hatch.build.targets.wheel]
packages = ["xpt_plugins"]
"""

GOOD = """
from xpersist_sql.serializers import Serializer


class Temperature(float):
    pass


class Upper(Serializer):
    def dump(self, value, fs, path, **kwargs):
        with fs.open(path, "w") as f:
            f.write(value.upper())

    def load(self, fs, path, **kwargs):
        with fs.open(path, "r") as f:
            return f.read()


class TemperatureText(Serializer):
    handles = ("xpt_plugins.good.Temperature",)

    def dump(self, value, fs, path, **kwargs):
        with fs.open(path, "w") as f:
            f.write(repr(float(value)))

    def load(self, fs, path, **kwargs):
        with fs.open(path, "r") as f:
            return Temperature(f.read())
"""

BROKEN = """
import xpt_a_library_that_is_not_installed  # noqa: F401
"""

SCRIPT = """
import json, sys, warnings

warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from xpersist_sql import CacheStore, available_serializers
    names = available_serializers()

from xpt_plugins.good import Temperature

store = CacheStore(sys.argv[1])
auto = store.put("t.txt", Temperature(21.5)).serializer
upper = store.put("u.txt", "shout", serializer="xpt.upper").serializer
print(json.dumps({
    "names": names,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "auto": auto,
    "upper": upper,
    "values": [store.get("t.txt"), store.get("u.txt")],
    "type": type(store.get("t.txt")).__name__,
}))
"""


def _site_packages(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.mark.slow
def test_an_installed_plugin_distribution(tmp_path: Path) -> None:
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("building the plugin needs hatchling (the test extra)")
    project = tmp_path / "plugin"
    (project / "xpt_plugins").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (project / "xpt_plugins" / "__init__.py").write_text("")
    (project / "xpt_plugins" / "good.py").write_text(GOOD)
    (project / "xpt_plugins" / "broken.py").write_text(BROKEN)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(wheels), str(project)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("xpt_plugins-1.2.3-*.whl")

    # a throwaway venv: this environment's packages and the repository as path entries (the
    # editable install's own .pth is not processed there), the plugin installed by pip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _site_packages(python)
    deps = [path for path in sys.path if path.endswith("site-packages")]
    Path(site, "_deps.pth").write_text("\n".join([str(ROOT), *deps]) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        check=True,
    )  # fmt: skip
    assert importlib.util.find_spec("xpt_plugins") is None  # only the throwaway venv has it

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XPERSIST_SQL"))}
    done = subprocess.run(
        [str(python), "-c", SCRIPT, str(tmp_path / "store")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert {"xpt.upper", "xpt.temperature", "json", "xarray.zarr"} <= set(result["names"])
    assert "xpt.broken" not in result["names"]
    (warning,) = [w for w in result["warnings"] if "xpt.broken" in w]
    assert warning.startswith("SerializerPluginWarning: ")
    assert "'xpt_plugins.broken:Serializer'" in warning
    assert re.search(r"\(distribution xpt[-_]plugins 1\.2\.3\)", warning), warning
    assert "ModuleNotFoundError: No module named 'xpt_a_library_that_is_not_installed'" in warning
    assert result["auto"] == "xpt.temperature"
    assert result["upper"] == "xpt.upper"
    assert result["values"] == [21.5, "SHOUT"]
    assert result["type"] == "Temperature"
