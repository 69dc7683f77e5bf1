"""What the installed package declares: its version, from one source, and the dependencies that keep imports quiet."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import profiler

tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def test_version_is_the_package_metadata():
    assert profiler.__version__ == importlib.metadata.version("hookprof") == PYPROJECT["version"]


NOT_INSTALLED = """\
import importlib.metadata


def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)


importlib.metadata.version = missing
import profiler

print(profiler.__version__)
"""


def test_version_when_not_installed():
    run = subprocess.run([sys.executable, "-c", NOT_INSTALLED], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "0+unknown\n"


def test_numpy_is_a_dependency():
    """Without numpy, importing torch warns "Failed to initialize NumPy" on every command."""
    assert "numpy" in {Requirement(dependency).name for dependency in PYPROJECT["dependencies"]}
