"""The countries example started again with nothing new: the manifest cache of its pipeline
file keeps PyYAML, pydantic, pycountry and the idle change modules out of the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPOSITORY

PIPELINE = "examples/countries/pipeline.yaml"

# Runs the command line in this interpreter and prints the watched modules it imported.
REPORTING_CLI = """
import atexit, json, sys

def report():
    watched = ("yaml", "pydantic", "pycountry", "examples")
    names = sorted(name for name in sys.modules if name.split(".")[0] in watched)
    print("IMPORTED " + json.dumps(names), file=sys.stderr)

atexit.register(report)
from flamingock_async.cli import main
sys.argv[0] = "flamingock"
main()
"""


def run_example(store: str, cache_dir: Path) -> tuple[dict[str, object], list[str]]:
    """Run `flamingock run --json` on the example; return the report and imported modules."""
    env = {
        **os.environ,
        "FLAMINGOCK_STORE": store,
        "FLAMINGOCK_CHANGES": PIPELINE,
        "FLAMINGOCK_CACHE_DIR": str(cache_dir),
    }
    result = subprocess.run(
        [sys.executable, "-c", REPORTING_CLI, "run", "--json"],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("IMPORTED ")]
    return json.loads(result.stdout), json.loads(line.removeprefix("IMPORTED "))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, object], list[str]]]:
    """Run the example twice on a new store, with its own cache directory."""
    folder = tmp_path_factory.mktemp("countries-cache")
    store = f"sqlite:///{folder / 'app.db'}"
    return [run_example(store, folder / "cache") for _ in range(2)]


def test_first_run_loads_everything(runs: list[tuple[dict[str, object], list[str]]]) -> None:
    report, modules = runs[0]

    assert len(report["applied"]) == 9  # type: ignore[arg-type]
    assert "yaml" in modules
    assert "pycountry" in modules


def test_second_run_applies_run_always(runs: list[tuple[dict[str, object], list[str]]]) -> None:
    report, _ = runs[1]

    assert report["applied"] == ["refresh-statistics"]


def test_second_run_imports_one_module(runs: list[tuple[dict[str, object], list[str]]]) -> None:
    """Only the module of refresh-statistics is imported: it is a class, not a template."""
    _, modules = runs[1]

    assert "examples.countries.changes.search" in modules
    assert "examples.countries.changes.catalog" not in modules
    assert "pycountry" not in modules
    assert "yaml" not in modules
    assert "pydantic" not in modules
