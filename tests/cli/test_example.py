"""The countries example pipeline, end to end through the real `flamingock` command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .helpers import FLAMINGOCK, REPOSITORY, table_rows

PIPELINE = "examples/countries/pipeline.yaml"
ALL_CHANGES = [
    "create-catalog-schema",
    "import-countries",
    "import-subdivisions",
    "import-currencies-and-languages",
    "add-subdivision-counts",
    "add-search-names",
    "index-search-names",
    "export-countries-snapshot",
    "refresh-statistics",
]


def flamingock(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed entry point from the repository root, as the README does."""
    env = {**os.environ, "FLAMINGOCK_STORE": store, "FLAMINGOCK_CHANGES": PIPELINE}
    return subprocess.run(
        [FLAMINGOCK, *args],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, object]]:
    """Apply the example once; return the database, its URL and the run's JSON report."""
    database = tmp_path_factory.mktemp("countries") / "app.db"
    store = f"sqlite:///{database}"
    result = flamingock(store, "run", "--json")
    assert result.returncode == 0, result.stderr
    return database, store, json.loads(result.stdout)


def test_first_run_applies_every_change(example: tuple[Path, str, dict[str, object]]) -> None:
    _, _, report = example

    assert report["applied"] == ALL_CHANGES


def test_imports_real_data(example: tuple[Path, str, dict[str, object]]) -> None:
    database, _, _ = example

    countries = table_rows(database, "SELECT count(*) FROM countries")[0][0]
    subdivisions = table_rows(database, "SELECT count(*) FROM subdivisions")[0][0]
    languages = table_rows(database, "SELECT count(*) FROM languages")[0][0]

    assert isinstance(countries, int)
    assert countries > 240
    assert isinstance(subdivisions, int)
    assert subdivisions > 4000
    assert isinstance(languages, int)
    assert languages > 7000


def test_backfills_derived_columns(example: tuple[Path, str, dict[str, object]]) -> None:
    database, _, _ = example

    search = table_rows(database, "SELECT search_name FROM countries WHERE alpha_2 = 'CI'")
    count = table_rows(database, "SELECT subdivision_count FROM countries WHERE alpha_2 = 'US'")
    empty = table_rows(database, "SELECT count(*) FROM subdivisions WHERE search_name IS NULL")

    assert search == [("cote d ivoire",)]
    assert (
        count[0][0]
        == table_rows(database, "SELECT count(*) FROM subdivisions WHERE country_code = 'US'")[0][0]
    )
    assert empty == [(0,)]


def test_creates_indexes(example: tuple[Path, str, dict[str, object]]) -> None:
    database, _, _ = example

    rows = table_rows(database, "SELECT name FROM sqlite_master WHERE type = 'index'")
    names = {str(row[0]) for row in rows}

    assert {"countries_search_name", "subdivisions_search_name"} <= names


def test_writes_snapshot_file(example: tuple[Path, str, dict[str, object]]) -> None:
    database, _, _ = example

    snapshot = json.loads((database.parent / "countries-snapshot.json").read_text("utf-8"))

    assert (
        len(snapshot["countries"]) == table_rows(database, "SELECT count(*) FROM countries")[0][0]
    )


def test_second_run_applies_only_run_always(
    example: tuple[Path, str, dict[str, object]],
) -> None:
    _, store, _ = example

    result = flamingock(store, "run", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["applied"] == ["refresh-statistics"]
    assert len(report["skipped"]) == 8


def test_status_after_runs(example: tuple[Path, str, dict[str, object]]) -> None:
    _, store, _ = example

    result = flamingock(store, "status", "--json")

    data = json.loads(result.stdout)
    assert [change["id"] for change in data["changes"]] == ALL_CHANGES
    assert {change["state"] for change in data["changes"]} == {"APPLIED"}


def test_history_of_non_transactional_change(
    example: tuple[Path, str, dict[str, object]],
) -> None:
    _, store, _ = example

    result = flamingock(store, "history", "export-countries-snapshot", "--json")

    entries = json.loads(result.stdout)["entries"]
    assert [entry["state"] for entry in entries][:2] == ["STARTED", "APPLIED"]
    assert entries[1]["metadata"]["file"] == "countries-snapshot.json"


def test_validate_example(example: tuple[Path, str, dict[str, object]]) -> None:
    _, store, _ = example

    result = flamingock(store, "validate", "--json")

    data = json.loads(result.stdout)
    assert data["count"] == 9
    assert [stage["name"] for stage in data["stages"]] == ["catalog", "search"]


def test_example_rollback_and_reapply(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'app.db'}"
    flamingock(store, "run")

    undone = flamingock(store, "rollback", "--to", "add-search-names", "--yes", "--json")
    snapshot_gone = not (tmp_path / "countries-snapshot.json").exists()
    indexes = table_rows(
        tmp_path / "app.db",
        "SELECT count(*) FROM sqlite_master WHERE name = 'countries_search_name'",
    )
    again = flamingock(store, "run", "--json")

    assert undone.returncode == 0, undone.stderr
    assert json.loads(undone.stdout)["rolled_back"] == [
        "refresh-statistics",
        "export-countries-snapshot",
        "index-search-names",
    ]
    assert snapshot_gone
    assert indexes == [(0,)]
    assert json.loads(again.stdout)["applied"] == [
        "index-search-names",
        "export-countries-snapshot",
        "refresh-statistics",
    ]
    assert (tmp_path / "countries-snapshot.json").exists()
