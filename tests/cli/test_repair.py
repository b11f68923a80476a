"""Operator commands: `mark`, `rollback --to` and `wait`."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

from .helpers import Workspace, snapshot, table_rows

UNKNOWN_OUTCOME = '''
import os

from flamingock_async import change_unit


@change_unit(id="create-items", order="0001", author="tests")
class CreateItems:
    async def execute(self, connection) -> None:
        await connection.execute("CREATE TABLE items (name TEXT)")


@change_unit(id="notify-partners", order="0002", author="tests", transactional=False)
class NotifyPartners:
    """Fails while the file `broken` exists, with no rollback: the outcome is unknown."""

    async def execute(self) -> None:
        if os.path.exists("broken"):
            raise RuntimeError("partner API timed out")


@change_unit(id="insert-kiwi", order="0003", author="tests")
class InsertKiwi:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('kiwi')")
'''

WITHOUT_ROLLBACK = """
from flamingock_async import change_unit


@change_unit(id="create-items", order="0001", author="tests")
class CreateItems:
    async def execute(self, connection) -> None:
        await connection.execute("CREATE TABLE items (name TEXT)")


@change_unit(id="insert-lime", order="0002", author="tests")
class InsertLime:
    async def execute(self, connection) -> None:
        await connection.execute("INSERT INTO items VALUES ('lime')")
"""


def blocked_store(workspace: Workspace) -> str:
    """Return a package whose second change is FAILED with an unknown outcome."""
    package = workspace.package(UNKNOWN_OUTCOME)
    (workspace.path / "broken").touch()
    workspace.invoke("run", "--store", workspace.store, "--changes", package)
    (workspace.path / "broken").unlink()
    return package


def items(workspace: Workspace) -> list[str]:
    rows = table_rows(workspace.store_file, "SELECT name FROM items ORDER BY name")
    return [str(row[0]) for row in rows]


# -- mark ----------------------------------------------------------------------------------


def test_mark_applied_unblocks_run(workspace: Workspace) -> None:
    package = blocked_store(workspace)

    blocked = workspace.invoke("run", "--store", workspace.store, "--changes", package)
    marked = workspace.invoke(
        "mark", "notify-partners", "--as", "applied", "--store", workspace.store
    )
    resumed = workspace.invoke("run", "--json", "--store", workspace.store, "--changes", package)

    assert blocked.exit_code == 3
    assert marked.exit_code == 0, marked.output
    assert "Marked change 'notify-partners' as MANUAL_MARKED_AS_APPLIED." in marked.stdout
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["applied"] == ["insert-kiwi"]


def test_mark_rolled_back_reapplies(workspace: Workspace) -> None:
    package = blocked_store(workspace)

    marked = workspace.invoke(
        "mark",
        "notify-partners",
        "--as",
        "rolled-back",
        "--json",
        "--store",
        workspace.store,
        "--changes",
        package,
    )
    resumed = workspace.invoke("run", "--json", "--store", workspace.store, "--changes", package)

    assert marked.exit_code == 0, marked.output
    assert json.loads(marked.stdout)["state"] == "MANUAL_MARKED_AS_ROLLED_BACK"
    assert json.loads(resumed.stdout)["applied"] == ["notify-partners", "insert-kiwi"]


def test_mark_applied_as_applied_exits_2(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "mark", "insert-pear", "--as", "applied", "--store", workspace.store, "--changes", basic
    )

    assert result.exit_code == 2
    assert "already APPLIED" in result.stderr
    assert "--as rolled-back" in result.stderr
    assert snapshot(workspace.store_file) == before


def test_mark_applied_rolled_back_warns(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "mark", "insert-pear", "--as", "rolled-back", "--store", workspace.store,
        "--changes", basic,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "applies 'insert-pear' again" in result.stderr


def test_mark_corrupt_history_writes_nothing(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    with closing(sqlite3.connect(workspace.store_file)) as store, store:
        store.execute(
            "UPDATE flamingock_audit SET metadata = '{not json' WHERE change_id = 'insert-pear'"
        )
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "mark", "insert-pear", "--as", "rolled-back", "--store", workspace.store,
        "--changes", basic,
    )  # fmt: skip

    assert result.exit_code == 1
    assert "repair or delete that row" in result.stderr
    assert snapshot(workspace.store_file) == before


def test_status_names_lock_holder(workspace: Workspace) -> None:
    package = blocked_store(workspace)
    with closing(sqlite3.connect(workspace.store_file)) as store, store:
        store.execute("UPDATE flamingock_lock SET owner = 'other-runner', host = 'pod-7', pid = 42")

    text = workspace.invoke("status", "--store", workspace.store, "--changes", package)
    data = json.loads(
        workspace.invoke(
            "status", "--json", "--store", workspace.store, "--changes", package
        ).stdout
    )

    assert text.exit_code == 0, text.output
    assert "other-runner on host pod-7 pid 42" in text.stdout
    assert "flamingock lock show" in text.stdout
    assert data["lock"]["held"] is True
    assert data["lock"]["record"]["owner"] == "other-runner"


def test_mark_unknown_id_exits_2(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "mark", "no-such-change", "--as", "applied", "--store", workspace.store
    )

    assert result.exit_code == 2
    assert "'no-such-change'" in result.stderr
    assert "flamingock status" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(workspace.store_file) == before


def test_mark_unknown_id_json_names_it(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "mark", "no-such-change", "--as", "applied", "--json", "--store", workspace.store
    )

    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["change_id"] == "no-such-change"


def test_mark_bad_state_exits_2(workspace: Workspace) -> None:
    result = workspace.invoke("mark", "x", "--as", "done", "--store", workspace.store)

    assert result.exit_code == 2
    assert "'done'" in result.stderr
    assert not workspace.store_file.exists()


# -- rollback ------------------------------------------------------------------------------


def test_rollback_to_undoes_later_changes(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "rollback", "--to", "create-items", "--yes", "--store", workspace.store, "--changes", basic
    )

    assert result.exit_code == 0, result.output
    assert "Rolled back 2 changes: insert-pear, insert-apple." in result.stdout
    assert items(workspace) == []


def test_rollback_then_run_reapplies(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    workspace.invoke(
        "rollback", "--to", "insert-apple", "-y", "--store", workspace.store, "--changes", basic
    )

    result = workspace.invoke("run", "--json", "--store", workspace.store, "--changes", basic)

    assert json.loads(result.stdout)["applied"] == ["insert-pear"]
    assert items(workspace) == ["apple", "pear"]


def test_rollback_asks_first(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    declined = workspace.invoke(
        "rollback", "--to", "create-items", "--store", workspace.store, "--changes", basic,
        input="n\n",
    )  # fmt: skip

    assert declined.exit_code == 1
    assert "insert-pear, insert-apple" in declined.stderr
    assert "Nothing was rolled back" in declined.stderr
    assert snapshot(workspace.store_file) == before


def test_rollback_unanswered_changes_nothing(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "rollback", "--to", "create-items", "--store", workspace.store, "--changes", basic,
        input="",
    )  # fmt: skip

    assert result.exit_code == 1
    assert "Nothing was rolled back" in result.stderr
    assert snapshot(workspace.store_file) == before


def test_rollback_declined_json_error(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "rollback", "--to", "create-items", "--json", "--store", workspace.store,
        "--changes", basic, input="n\n",
    )  # fmt: skip

    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["rolled_back"] == []
    assert data["error"]["exit_code"] == 1
    assert "Nothing was rolled back" in data["error"]["message"]
    assert snapshot(workspace.store_file) == before


def test_rollback_confirmed(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "rollback", "--to", "insert-apple", "--store", workspace.store, "--changes", basic,
        input="y\n",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert items(workspace) == ["apple"]


def test_rollback_json_shape(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "rollback", "--to", "insert-apple", "--yes", "--json",
        "--store", workspace.store, "--changes", basic,
    )  # fmt: skip

    assert json.loads(result.stdout) == {"rolled_back": ["insert-pear"]}


def test_rollback_nothing_to_undo(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "rollback", "--to", "insert-pear", "--store", workspace.store, "--changes", basic
    )

    assert result.exit_code == 0, result.output
    assert "Nothing to roll back: no change after 'insert-pear' is applied." in result.stdout


def test_rollback_unknown_target_exits_2(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "rollback", "--to", "no-such-change", "--yes", "--store", workspace.store,
        "--changes", basic,
    )  # fmt: skip

    assert result.exit_code == 2
    assert "'no-such-change'" in result.stderr
    assert snapshot(workspace.store_file) == before


def test_rollback_without_method_exits_2(workspace: Workspace) -> None:
    package = workspace.package(WITHOUT_ROLLBACK)
    workspace.invoke("run", "--store", workspace.store, "--changes", package)
    before = snapshot(workspace.store_file)

    result = workspace.invoke(
        "rollback", "--to", "create-items", "--yes", "--store", workspace.store,
        "--changes", package,
    )  # fmt: skip

    assert result.exit_code == 2
    assert "'insert-lime'" in result.stderr
    assert "has no rollback" in result.stderr
    assert _audit(before) == _audit(snapshot(workspace.store_file))


def _audit(dump: list[str] | None) -> list[str]:
    return [line for line in dump or [] if "flamingock_audit" in line]


# -- wait ----------------------------------------------------------------------------------


def test_wait_succeeds_when_applied(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)

    result = workspace.invoke(
        "wait", "--timeout", "5", "--store", workspace.store, "--changes", basic
    )

    assert result.exit_code == 0, result.output
    assert "All changes are applied" in result.stdout


def test_wait_times_out_exits_5(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "wait", "--timeout", "0.2", "--interval", "0.05", "--store", workspace.store,
        "--changes", basic,
    )  # fmt: skip

    assert result.exit_code == 5
    assert "timed out after 0.2 s with 3 changes not applied" in result.stderr
    assert "create-items" in result.stderr
    assert not workspace.store_file.exists()


def test_wait_json_shape(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "wait", "--json", "--timeout", "0", "--store", workspace.store, "--changes", basic
    )

    assert result.exit_code == 5
    data = json.loads(result.stdout)
    assert data["done"] is False
    assert data["pending"] == ["create-items", "insert-apple", "insert-pear"]
    assert data["error"]["type"] == "WaitTimedOut"
    assert data["error"]["exit_code"] == 5


def test_wait_stops_at_blocked_change(workspace: Workspace) -> None:
    package = blocked_store(workspace)

    result = workspace.invoke(
        "wait", "--json", "--timeout", "60", "--store", workspace.store, "--changes", package
    )

    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["blocked"] == ["notify-partners"]
    assert data["waited"] < 5
    assert data["error"]["change_id"] == "notify-partners"
    assert "flamingock mark notify-partners" in result.stderr


def test_wait_counts_run_always_as_applied(workspace: Workspace) -> None:
    package = workspace.package(
        """
        from flamingock_async import change_unit


        @change_unit(id="refresh", order="0001", author="tests", run_always=True)
        class Refresh:
            async def execute(self) -> None: ...
        """
    )
    workspace.invoke("run", "--store", workspace.store, "--changes", package)

    result = workspace.invoke(
        "wait", "--timeout", "1", "--json", "--store", workspace.store, "--changes", package
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["done"] is True


def test_wait_takes_no_lock(workspace: Workspace, basic: str) -> None:
    workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    before = snapshot(workspace.store_file)

    workspace.invoke("wait", "--timeout", "1", "--store", workspace.store, "--changes", basic)

    assert snapshot(workspace.store_file) == before
