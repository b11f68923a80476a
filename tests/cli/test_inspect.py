"""Read-only commands: `status`, `history`, `validate` and `lock show`, in text and JSON."""

from __future__ import annotations

import json

import anyio

from flamingock_async import LockSettings
from flamingock_async._lock import LockManager
from flamingock_async.drivers.sqlite import SQLiteDriver

from .helpers import Workspace, snapshot

RENAMED_PIPELINE = """
from flamingock_async import change_unit


@change_unit(id="create-items", order="0001", author="tests")
class CreateItems:
    async def execute(self, connection) -> None:
        await connection.execute("CREATE TABLE IF NOT EXISTS items (name TEXT)")


@change_unit(id="insert-fig", order="0002", author="tests", run_always=True)
class InsertFig:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('fig')")
"""

DUPLICATE_IDS = """
from flamingock_async import change_unit


@change_unit(id="same", order="0001", author="alice")
class First:
    async def execute(self) -> None: ...


@change_unit(id="same", order="0002", author="bob")
class Second:
    async def execute(self) -> None: ...
"""

NEEDS_SERVICE = """
from flamingock_async import change_unit


@change_unit(id="call-service", order="0001", author="tests")
class CallService:
    async def execute(self, payment_gateway) -> None: ...
"""


def hold_lock(workspace: Workspace, key: str = "flamingock") -> None:
    async def take() -> None:
        driver = SQLiteDriver(workspace.store_file)
        await driver.setup()
        await LockManager(driver, LockSettings(key=key, lease=600)).acquire()
        await driver.aclose()

    anyio.run(take)


# -- status --------------------------------------------------------------------------------


def test_status_with_pipeline(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("status", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "insert-pear" in result.stdout
    assert "3 applied, 0 to apply at the next run, 0 need manual intervention." in result.stdout


def test_status_json_shape(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    changed = workspace.package(RENAMED_PIPELINE)

    result = workspace.invoke("status", "--json", "--store", workspace.store, "--changes", changed)

    data = json.loads(result.stdout)
    assert data["store"] == workspace.store
    assert data["pending"] == 1
    assert [change["id"] for change in data["changes"]] == ["create-items", "insert-fig"]
    assert data["changes"][0]["state"] == "APPLIED"
    assert data["changes"][1]["action"] == "APPLY"
    assert {entry["id"] for entry in data["not_in_pipeline"]} == {"insert-apple", "insert-pear"}


def test_status_without_pipeline(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("status", "--json", "--store", workspace.store)

    data = json.loads(result.stdout)
    assert [change["id"] for change in data["changes"]] == [
        "create-items",
        "insert-apple",
        "insert-pear",
    ]
    assert {change["state"] for change in data["changes"]} == {"APPLIED"}


def test_status_of_empty_store(workspace: Workspace) -> None:
    result = workspace.invoke("status", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert "No change has been audited yet." in result.stdout
    assert not workspace.store_file.exists()


def test_status_shows_run_always(workspace: Workspace) -> None:
    package = workspace.package(RENAMED_PIPELINE)
    workspace.invoke("run", "--store", workspace.store, "--changes", package)

    result = workspace.invoke("status", "--store", workspace.store, "--changes", package)

    assert "apply (run_always)" in result.stdout


# -- history -------------------------------------------------------------------------------


def test_history_lists_every_entry(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("history", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert len(lines) == 4
    assert "create-items" in lines[1]


def test_history_of_one_change(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("history", "insert-apple", "--json", "--store", workspace.store)

    entries = json.loads(result.stdout)["entries"]
    assert [entry["change_id"] for entry in entries] == ["insert-apple"]


def test_history_json_fields(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("history", "--json", "--store", workspace.store)

    entry = json.loads(result.stdout)["entries"][0]
    expected = {
        "entry_id",
        "execution_id",
        "stage",
        "change_id",
        "author",
        "order",
        "state",
        "lock_epoch",
        "created_at_ms",
        "duration_ms",
        "host",
        "pid",
        "error_type",
        "error_message",
        "library_version",
        "metadata",
    }
    assert expected <= set(entry)


def test_history_of_unknown_change(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("history", "no-such-change", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert "No audit entries for change 'no-such-change'." in result.stdout


# -- validate ------------------------------------------------------------------------------


def test_validate_valid_pipeline(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("validate", "--changes", basic)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Valid: 3 changes in 1 stage: default (3)."


def test_validate_json_shape(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("validate", "--json", "--changes", basic)

    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["count"] == 3
    assert data["stages"][0]["name"] == "default"
    assert [change["id"] for change in data["stages"][0]["changes"]] == [
        "create-items",
        "insert-apple",
        "insert-pear",
    ]


def test_validate_duplicate_ids_exits_2(workspace: Workspace) -> None:
    package = workspace.package(DUPLICATE_IDS)

    result = workspace.invoke("validate", "--changes", package)

    assert result.exit_code == 2
    assert "'same'" in result.stderr
    assert "First" in result.stderr
    assert "Second" in result.stderr


def test_validate_json_invalid_pipeline(workspace: Workspace) -> None:
    package = workspace.package(DUPLICATE_IDS)

    result = workspace.invoke("validate", "--json", "--changes", package)

    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert len(data["problems"]) == 1
    assert "'same'" in data["problems"][0]
    assert data["error"] == {
        "type": "PipelineValidationError",
        "message": data["problems"][0],
        "change_id": None,
        "exit_code": 2,
    }
    assert "'same'" in result.stderr


def test_validate_json_unimportable_module(workspace: Workspace) -> None:
    result = workspace.invoke("validate", "--json", "--changes", "no_such_changes_module")

    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False
    assert "no_such_changes_module" in data["problems"][0]


def test_validate_does_not_touch_store(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("validate", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert not workspace.store_file.exists()


def test_validate_checks_injection_with_store(workspace: Workspace) -> None:
    package = workspace.package(NEEDS_SERVICE)

    without_store = workspace.invoke("validate", "--changes", package)
    with_store = workspace.invoke("validate", "--store", workspace.store, "--changes", package)

    assert without_store.exit_code == 0, without_store.output
    assert "pass --store" in without_store.stderr
    assert with_store.exit_code == 2
    assert "'payment_gateway'" in with_store.stderr
    assert not workspace.store_file.exists()


# -- lock show -----------------------------------------------------------------------------


def test_lock_show_never_taken(workspace: Workspace) -> None:
    result = workspace.invoke("lock", "show", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Lock 'flamingock': never taken."


def test_lock_show_free_after_run(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("lock", "show", "--json", "--store", workspace.store)

    data = json.loads(result.stdout)
    assert data["key"] == "flamingock"
    assert data["held"] is False
    assert data["record"]["owner"] is None
    assert data["record"]["epoch"] == 1


def test_lock_show_held(workspace: Workspace) -> None:
    hold_lock(workspace)

    result = workspace.invoke("lock", "show", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert "Lock 'flamingock': held" in result.stdout
    assert "epoch      1" in result.stdout


def test_lock_show_other_key(workspace: Workspace) -> None:
    hold_lock(workspace, key="billing")

    default = workspace.invoke("lock", "show", "--json", "--store", workspace.store)
    billing = workspace.invoke(
        "lock", "show", "--json", "--lock-key", "billing", "--store", workspace.store
    )

    assert json.loads(default.stdout)["held"] is False
    assert json.loads(billing.stdout)["held"] is True


# -- lock release --------------------------------------------------------------------------


def test_lock_release_needs_force(workspace: Workspace) -> None:
    hold_lock(workspace)
    before = snapshot(workspace.store_file)

    result = workspace.invoke("lock", "release", "--store", workspace.store)

    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert snapshot(workspace.store_file) == before


def test_lock_release_force_frees_lock(workspace: Workspace, basic: str) -> None:
    hold_lock(workspace)

    released = workspace.invoke("lock", "release", "--force", "--store", workspace.store)
    shown = workspace.invoke("lock", "show", "--json", "--store", workspace.store)
    run = workspace.invoke(
        "run", "--store", workspace.store, "--changes", basic, "--lock-wait-timeout", "0"
    )

    assert released.exit_code == 0, released.output
    assert "Released lock 'flamingock'" in released.stdout
    assert json.loads(shown.stdout)["held"] is False
    assert run.exit_code == 0, run.output


def test_lock_release_when_free(workspace: Workspace) -> None:
    result = workspace.invoke("lock", "release", "--force", "--json", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"key": "flamingock", "released": False, "previous": None}


# -- serve ---------------------------------------------------------------------------------


def test_serve_group_is_mounted(workspace: Workspace) -> None:
    listed = workspace.invoke("--help")
    serve = workspace.invoke("serve", "--help")

    assert "  serve" in listed.stdout
    assert serve.exit_code == 0, serve.output
    assert "--port" in serve.stdout


def test_json_error_object_on_failure(workspace: Workspace) -> None:
    result = workspace.invoke("history", "--json", "--store", "sqlite:///missing-folder/x.db")

    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConfigurationError"
    assert error["exit_code"] == 2
    assert "missing-folder" in error["message"]
    assert error["message"] in result.stderr
