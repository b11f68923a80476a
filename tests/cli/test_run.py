"""`flamingock run` and `flamingock plan`: applying, reporting, exit codes and JSON."""

from __future__ import annotations

import json

import anyio

from flamingock_async import LockSettings
from flamingock_async._lock import LockManager
from flamingock_async.drivers.sqlite import SQLiteDriver

from .helpers import Workspace, snapshot, table_rows

FAILING_ONCE = '''
import os

from flamingock_async import change_unit


@change_unit(id="export-file", order="0001", author="tests", transactional=False)
class ExportFile:
    """Fails while the file `broken` exists; its rollback removes the partial export."""

    async def execute(self) -> None:
        with open("export.txt", "w") as stream:
            stream.write("partial")
        if os.path.exists("broken"):
            raise RuntimeError("the export target is broken")

    async def rollback(self) -> None:
        os.remove("export.txt")
'''

NO_ROLLBACK = """
from flamingock_async import change_unit


@change_unit(id="send-email", order="0001", author="tests", transactional=False)
class SendEmail:
    async def execute(self) -> None:
        raise RuntimeError("mail server refused")
"""


def test_run_applies_pending_changes(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Applied 3 changes" in result.stdout
    rows = table_rows(workspace.store_file, "SELECT name FROM items ORDER BY name")
    assert rows == [("apple",), ("pear",)]


def test_run_twice_applies_nothing(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Nothing to apply: all 3 changes are applied." in result.stdout
    assert snapshot(workspace.store_file) == before


def test_run_json_shape(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "--json", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["applied"] == ["create-items", "insert-apple", "insert-pear"]
    assert data["skipped"] == []
    assert data["failed"] is None
    assert data["error"] is None
    assert data["lock_acquired"] is True
    assert data["not_run"] is False
    assert isinstance(data["execution_id"], str)
    assert isinstance(data["duration"], float)


def test_run_reads_environment(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", FLAMINGOCK_STORE=workspace.store, FLAMINGOCK_CHANGES=basic)

    assert result.exit_code == 0, result.output
    assert "Applied 3 changes" in result.stdout


def test_options_override_environment(workspace: Workspace, basic: str) -> None:
    other = workspace.path / "other.db"
    result = workspace.invoke(
        "run",
        "--store",
        f"sqlite:///{other}",
        FLAMINGOCK_STORE=workspace.store,
        FLAMINGOCK_CHANGES=basic,
    )

    assert result.exit_code == 0, result.output
    assert other.exists()
    assert not workspace.store_file.exists()


def test_run_relative_sqlite_url(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "--store", "sqlite:///relative.db", "--changes", basic)

    assert result.exit_code == 0, result.output
    assert (workspace.path / "relative.db").exists()


def test_failed_change_without_rollback_exits_3(workspace: Workspace) -> None:
    package = workspace.package(NO_ROLLBACK)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 3
    assert "send-email" in result.stderr
    assert "mail server refused" in result.stderr
    assert "flamingock mark send-email" in result.stderr
    assert result.stderr.startswith("Error: ")


TRANSACTIONAL_FAILURE = """
from flamingock_async import change_unit


@change_unit(id="add-column", order="0001", author="tests")
class AddColumn:
    async def execute(self, connection) -> None:
        raise RuntimeError("constraint failed")
"""


def test_failed_transactional_change_exits_1(workspace: Workspace) -> None:
    package = workspace.package(TRANSACTIONAL_FAILURE)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 1
    assert "add-column" in result.stderr
    assert "constraint failed" in result.stderr


def test_run_failure_json_shape(workspace: Workspace) -> None:
    package = workspace.package(NO_ROLLBACK)

    result = workspace.invoke("run", "--json", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["failed"] == "send-email"
    assert data["applied"] == []
    assert data["lock_acquired"] is True
    assert data["error"]["type"] == "ChangeExecutionError"
    assert data["error"]["change_id"] == "send-email"
    assert data["error"]["exit_code"] == 3
    assert "mail server refused" in data["error"]["message"]


def test_run_manual_intervention_exits_3(workspace: Workspace) -> None:
    package = workspace.package(NO_ROLLBACK)
    workspace.invoke("run", "--store", workspace.store, "--changes", package)
    before = snapshot(workspace.store_file)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 3
    assert "flamingock mark send-email" in result.stderr
    # The second run only took and released the lock; the audit log is unchanged.
    assert _audit_rows(before) == _audit_rows(snapshot(workspace.store_file))


def _audit_rows(dump: list[str] | None) -> list[str]:
    return [line for line in dump or [] if "flamingock_audit" in line]


def test_run_lock_not_acquired_exits_4(workspace: Workspace, basic: str) -> None:
    async def hold_lock() -> None:
        driver = SQLiteDriver(workspace.store_file)
        await driver.setup()
        await LockManager(driver, LockSettings(lease=600)).acquire()
        await driver.aclose()

    anyio.run(hold_lock)

    result = workspace.invoke(
        "run", "--store", workspace.store, "--changes", basic, "--lock-wait-timeout", "0"
    )

    assert result.exit_code == 4
    assert "Could not acquire the lock 'flamingock'" in result.stderr
    assert table_rows(workspace.store_file, "SELECT count(*) FROM flamingock_audit") == [(0,)]


def test_run_lock_key_option(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "run", "--store", workspace.store, "--changes", basic, "--lock-key", "billing"
    )

    assert result.exit_code == 0, result.output
    keys = table_rows(workspace.store_file, "SELECT key FROM flamingock_lock")
    assert keys == [("billing",)]


def test_history_keeps_failed_then_fixed(workspace: Workspace) -> None:
    """A change fails, its rollback runs, the cause is fixed; the log keeps both attempts."""
    package = workspace.package(FAILING_ONCE)
    (workspace.path / "broken").touch()
    failed = workspace.invoke("run", "--store", workspace.store, "--changes", package)
    (workspace.path / "broken").unlink()

    fixed = workspace.invoke("run", "--store", workspace.store, "--changes", package)
    history = workspace.invoke("history", "export-file", "--json", "--store", workspace.store)

    assert failed.exit_code == 1
    assert fixed.exit_code == 0, fixed.output
    states = [entry["state"] for entry in json.loads(history.stdout)["entries"]]
    assert states == ["STARTED", "FAILED", "ROLLED_BACK", "STARTED", "APPLIED"]
    assert (workspace.path / "export.txt").read_text() == "partial"


def test_history_text_shows_error(workspace: Workspace) -> None:
    package = workspace.package(FAILING_ONCE)
    (workspace.path / "broken").touch()
    workspace.invoke("run", "--store", workspace.store, "--changes", package)

    result = workspace.invoke("history", "--store", workspace.store)

    assert result.exit_code == 0, result.output
    assert "RuntimeError: the export target is broken" in result.stdout
    assert "ROLLED_BACK" in result.stdout


def test_verbose_logs_each_change(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "-v", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Applied change insert-pear" in result.stderr


def test_progress_bar_when_asked(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "--progress", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Applied 3 changes" in result.stdout


def test_plan_lists_pending(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("plan", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "insert-apple" in result.stdout
    assert "3 to apply, 0 need manual intervention, 0 to skip." in result.stdout


def test_plan_writes_nothing(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    extra = workspace.package(BASIC_PLUS)
    before = snapshot(workspace.store_file)

    result = workspace.invoke("plan", "--json", "--store", workspace.store, "--changes", extra)

    assert result.exit_code == 0, result.output
    assert snapshot(workspace.store_file) == before


BASIC_PLUS = """
from flamingock_async import change_unit


@change_unit(id="create-items", order="0001", author="tests")
class CreateItems:
    async def execute(self, connection) -> None:
        await connection.execute("CREATE TABLE items (name TEXT)")


@change_unit(id="insert-plum", order="0002", author="tests")
class InsertPlum:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('plum')")
"""


def test_plan_json_shape(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    extra = workspace.package(BASIC_PLUS)

    result = workspace.invoke("plan", "--json", "--store", workspace.store, "--changes", extra)

    data = json.loads(result.stdout)
    assert data["pending"] == 1
    assert data["blocked"] == 0
    first, second = data["changes"]
    assert first["id"] == "create-items"
    assert first["action"] == "SKIP"
    assert first["state"] == "APPLIED"
    assert second["id"] == "insert-plum"
    assert second["action"] == "APPLY"
    assert second["state"] is None
    assert set(first) >= {"stage", "order", "author", "transactional", "run_always"}


def test_plan_nothing_pending(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke("plan", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Nothing to apply: all 3 changes are applied." in result.stdout


def test_changes_given_as_path(workspace: Workspace, basic: str) -> None:
    as_folder = workspace.invoke("plan", "--json", "--store", workspace.store, "--changes", basic)
    as_file = workspace.invoke(
        "plan", "--json", "--store", workspace.store, "--changes", f"{basic}/changes.py"
    )
    as_slash = workspace.invoke(
        "plan", "--json", "--store", workspace.store, "--changes", f"./{basic}/"
    )

    assert as_file.exit_code == 0, as_file.output
    assert as_slash.exit_code == 0, as_slash.output
    assert json.loads(as_file.stdout) == json.loads(as_folder.stdout)
    assert json.loads(as_slash.stdout) == json.loads(as_folder.stdout)


def test_changes_path_outside_cwd(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "run", "--store", workspace.store, "--changes", str(workspace.path.parent)
    )

    assert result.exit_code == 2
    assert "outside the current directory" in result.stderr
    assert not workspace.store_file.exists()


def test_history_keeps_failed_transactional_attempt(workspace: Workspace) -> None:
    """A transactional change that failed is aborted, applied by the next run, and both show."""
    package = workspace.package(
        """
        import os

        from flamingock_async import change_unit


        @change_unit(id="create-orders", order="0001", author="tests")
        class CreateOrders:
            async def execute(self, connection) -> None:
                await connection.execute("CREATE TABLE orders (id INTEGER)")
                if os.path.exists("broken"):
                    raise RuntimeError("disk quota exceeded")
        """
    )
    (workspace.path / "broken").touch()
    failed = workspace.invoke("run", "--store", workspace.store, "--changes", package)
    tables_after_failure = table_rows(
        workspace.store_file, "SELECT count(*) FROM sqlite_master WHERE name = 'orders'"
    )
    (workspace.path / "broken").unlink()

    fixed = workspace.invoke("run", "--store", workspace.store, "--changes", package)
    history = workspace.invoke("history", "--json", "--store", workspace.store)

    assert failed.exit_code == 1
    assert tables_after_failure == [(0,)]
    assert fixed.exit_code == 0, fixed.output
    states = [entry["state"] for entry in json.loads(history.stdout)["entries"]]
    assert states == ["FAILED", "APPLIED"]


def test_group_verbose_option(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("-v", "run", "--store", workspace.store, "--changes", basic)

    assert result.exit_code == 0, result.output
    assert "Applied change create-items" in result.stderr


def test_lock_options_from_environment(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "run",
        "--store",
        workspace.store,
        "--changes",
        basic,
        FLAMINGOCK_LOCK_KEY="billing",
        FLAMINGOCK_LOCK_LEASE="12.5",
        FLAMINGOCK_LOCK_WAIT_TIMEOUT="3",
    )

    assert result.exit_code == 0, result.output
    rows = table_rows(workspace.store_file, "SELECT key, lease_ms FROM flamingock_lock")
    assert rows == [("billing", 12500)]
