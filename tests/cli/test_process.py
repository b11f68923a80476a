"""The installed `flamingock` entry point, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .helpers import FLAMINGOCK, Workspace

HEAVY_LIBRARIES = {
    "pydantic",
    "yaml",
    "rich",
    "pymongo",
    "aioboto3",
    "botocore",
    "httpx",
    "fastapi",
    "starlette",
}

IMPORTS_AFTER_RUN = """
import json, sys
from flamingock_async.cli import cli

try:
    cli(sys.argv[1:], prog_name="flamingock")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def flamingock(workspace: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLAMINGOCK, *args],
        cwd=workspace.path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_documents_exit_codes(workspace: Workspace) -> None:
    result = flamingock(workspace, "--help")

    assert result.returncode == 0
    for line in ("0  done", "2  bad usage", "3  manual intervention", "4  lock not acquired"):
        assert line in result.stdout
    for command in ("run", "plan", "status", "history", "validate", "lock", "mark", "wait"):
        assert f"  {command}" in result.stdout


def test_version(workspace: Workspace) -> None:
    result = flamingock(workspace, "--version")

    assert result.returncode == 0
    assert result.stdout.startswith("flamingock, version ")


def test_process_run_and_exit_codes(workspace: Workspace, basic: str) -> None:
    env = {"FLAMINGOCK_STORE": workspace.store, "FLAMINGOCK_CHANGES": basic}

    applied = flamingock(workspace, "run", **env)
    bad = flamingock(workspace, "run", "--store", "sqlite://host/x.db", "--changes", basic)
    unknown = flamingock(workspace, "mark", "ghost", "--as", "applied", **env)

    assert applied.returncode == 0, applied.stderr
    assert "Applied 3 changes" in applied.stdout
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert unknown.returncode == 2


def test_run_with_nothing_pending_stays_light(workspace: Workspace, basic: str) -> None:
    """A run that finds nothing pending imports no change module and no optional library."""
    args = ["run", "--store", workspace.store, "--changes", basic]
    flamingock(workspace, *args)

    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER_RUN, *args],
        cwd=workspace.path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    report = json.loads(result.stdout.splitlines()[-1])
    top_level = {name.split(".")[0] for name in report["modules"]}
    assert report["code"] == 0
    assert top_level & HEAVY_LIBRARIES == set()
    assert f"{basic}.changes" not in report["modules"]
    assert "flamingock_async.backend" not in report["modules"]


def test_wait_returns_once_another_process_applied(workspace: Workspace, basic: str) -> None:
    """An init container waits while the migration job, another process, applies the changes."""
    env = {**os.environ, "FLAMINGOCK_STORE": workspace.store, "FLAMINGOCK_CHANGES": basic}
    waiter = subprocess.Popen(
        [FLAMINGOCK, "wait", "--timeout", "60", "--interval", "0.1", "--json"],
        cwd=workspace.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        still_waiting = waiter.poll() is None
        applied = flamingock(
            workspace, "run", FLAMINGOCK_STORE=workspace.store, FLAMINGOCK_CHANGES=basic
        )
        stdout, stderr = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()

    assert still_waiting
    assert applied.returncode == 0, applied.stderr
    assert waiter.returncode == 0, stderr
    assert json.loads(stdout)["done"] is True


def test_process_lock_not_acquired(workspace: Workspace, basic: str) -> None:
    """A second process gives up with exit code 4 while the first holds the lock."""
    slow = workspace.package(
        """
        import anyio
        from flamingock_async import change_unit


        @change_unit(id="slow", order="0001", author="tests", transactional=False)
        class Slow:
            async def execute(self) -> None:
                with open("started", "w"):
                    pass
                while not __import__("os").path.exists("finish"):
                    await anyio.sleep(0.05)
        """
    )
    env = {**os.environ, "FLAMINGOCK_STORE": workspace.store, "FLAMINGOCK_CHANGES": slow}
    holder = subprocess.Popen(
        [FLAMINGOCK, "run"],
        cwd=workspace.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_file(workspace.path / "started", holder)
        second = flamingock(workspace, "run", "--lock-wait-timeout", "0.5", **env)
        (workspace.path / "finish").touch()
        holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()

    assert second.returncode == 4
    assert "lock show" in second.stderr or "lock release" in second.stderr
    assert holder.returncode == 0


def _wait_for_file(path: Path, process: subprocess.Popen[str]) -> None:
    """Block until `path` exists; fail if `process` ends first."""
    import time

    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the process ended early: {process.communicate()}")
        time.sleep(0.05)


def test_sigterm_audits_and_releases(workspace: Workspace) -> None:
    """SIGTERM during a change: its rollback runs, the log says so, and the lock is free."""
    slow = workspace.package(
        """
        import os

        import anyio
        from flamingock_async import change_unit


        @change_unit(id="slow", order="0001", author="tests", transactional=False)
        class Slow:
            async def execute(self) -> None:
                with open("started", "w"):
                    pass
                await anyio.sleep(60)

            async def rollback(self) -> None:
                os.remove("started")
        """
    )
    env = {**os.environ, "FLAMINGOCK_STORE": workspace.store, "FLAMINGOCK_CHANGES": slow}
    process = subprocess.Popen(
        [FLAMINGOCK, "run"],
        cwd=workspace.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_file(workspace.path / "started", process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    history = flamingock(workspace, "history", "--json", **env)
    lock = flamingock(workspace, "lock", "show", "--json", **env)
    assert process.returncode == 1
    assert "stopped by SIGTERM" in stderr
    states = [entry["state"] for entry in json.loads(history.stdout)["entries"]]
    assert states == ["STARTED", "FAILED", "ROLLED_BACK"]
    assert json.loads(lock.stdout)["held"] is False
    assert not (workspace.path / "started").exists()
