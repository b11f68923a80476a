"""Bad input: each gets one clear line on standard error, exit code 2, and no store change."""

from __future__ import annotations

import pytest

from .helpers import Workspace, snapshot

BAD_URLS = [
    ("sqlite://host/app.db", "a host 'host' is not allowed"),
    ("sqlite:///", "the database path is missing"),
    ("sqlite:///missing-folder/app.db", "does not exist"),
    ("nosuch://somewhere/x", "Unsupported store URL 'nosuch://somewhere/x'"),
    ("app.db", "Unsupported store URL 'app.db'"),
    ("https://[unclosed/x", "Invalid store URL 'https://[unclosed/x': Invalid IPv6 URL"),
]

STORE_COMMANDS = [
    ("run", "--changes", "{basic}"),
    ("plan", "--changes", "{basic}"),
    ("status",),
    ("history",),
    ("lock", "show"),
    ("lock", "release", "--force"),
    ("mark", "create-items", "--as", "applied"),
    ("rollback", "--to", "create-items", "--yes", "--changes", "{basic}"),
    ("wait", "--timeout", "0", "--changes", "{basic}"),
    ("validate", "--changes", "{basic}"),
]

IMPORT_FAILS = """
import no_such_dependency_xyz
"""


@pytest.fixture
def applied(workspace: Workspace, basic: str) -> list[str] | None:
    """Apply the basic pipeline and return the store's content afterwards."""
    result = workspace.invoke("run", "--store", workspace.store, "--changes", basic)
    assert result.exit_code == 0, result.output
    return snapshot(workspace.store_file)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize(("url", "expected"), BAD_URLS)
def test_malformed_store_url(workspace: Workspace, basic: str, url: str, expected: str) -> None:
    result = workspace.invoke("run", "--store", url, "--changes", basic)

    assert result.exit_code == 2
    assert expected in error_line(result.stderr)
    assert list(workspace.path.glob("*.db")) == []


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_rejects_bad_url(
    workspace: Workspace, basic: str, command: tuple[str, ...]
) -> None:
    args = [part.format(basic=basic) for part in command]

    result = workspace.invoke(*args, "--store", "sqlite://host/app.db")

    assert result.exit_code == 2
    assert "sqlite://host/app.db" in error_line(result.stderr)


def test_missing_pipeline_file(workspace: Workspace, applied: list[str] | None, basic: str) -> None:
    result = workspace.invoke("run", "--store", workspace.store, "--changes", "missing.yaml")

    assert result.exit_code == 2
    line = error_line(result.stderr)
    assert "missing.yaml" in line
    assert "not found" in line
    assert snapshot(workspace.store_file) == applied


def test_unknown_changes_module(
    workspace: Workspace, applied: list[str] | None, basic: str
) -> None:
    result = workspace.invoke("run", "--store", workspace.store, "--changes", "no_such_pkg_xyz")

    assert result.exit_code == 2
    line = error_line(result.stderr)
    assert "'no_such_pkg_xyz'" in line
    assert "sys.path" in line
    assert snapshot(workspace.store_file) == applied


def test_changes_module_failing_import(
    workspace: Workspace, applied: list[str] | None, basic: str
) -> None:
    package = workspace.package(IMPORT_FAILS)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 2
    assert "no_such_dependency_xyz" in result.stderr
    assert f"{package}.changes" in result.stderr
    assert snapshot(workspace.store_file) == applied


def test_failing_import_on_empty_store(workspace: Workspace) -> None:
    package = workspace.package(IMPORT_FAILS)

    result = workspace.invoke("run", "--store", workspace.store, "--changes", package)

    assert result.exit_code == 2
    assert not workspace.store_file.exists()


def test_mark_unknown_id_on_empty_store(workspace: Workspace) -> None:
    result = workspace.invoke("mark", "ghost", "--as", "applied", "--store", workspace.store)

    assert result.exit_code == 2
    assert "'ghost'" in error_line(result.stderr)
    assert not workspace.store_file.exists()


def test_missing_store_option(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke("run", "--changes", basic)

    assert result.exit_code == 2
    assert "FLAMINGOCK_STORE" in result.stderr


def test_missing_changes_option(workspace: Workspace) -> None:
    result = workspace.invoke("run", "--store", workspace.store)

    assert result.exit_code == 2
    assert "FLAMINGOCK_CHANGES" in result.stderr
    assert not workspace.store_file.exists()


def test_lease_below_minimum(workspace: Workspace, basic: str) -> None:
    result = workspace.invoke(
        "run", "--store", workspace.store, "--changes", basic, "--lock-lease", "0.1"
    )

    assert result.exit_code == 2
    assert "--lock-lease" in result.stderr
    assert not workspace.store_file.exists()


def test_unknown_command(workspace: Workspace) -> None:
    result = workspace.invoke("migrate")

    assert result.exit_code == 2
    assert "No such command 'migrate'" in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "nosuch://admin:s3cret-pw@127.0.0.1/x",
        "https://admin:s3cret-pw@127.0.0.1:1/?environment=e&service=s",
        "mongodb://admin:s3cret-pw@127.0.0.1:1/db?bogus=1",
        "https://admin:s3cret-pw@[unclosed/x",
    ],
)
def test_password_never_printed(workspace: Workspace, url: str) -> None:
    text = workspace.invoke("history", "--store", url)
    json_run = workspace.invoke("run", "--json", "--store", url, "--changes", "x")

    assert text.exit_code == 2
    assert "s3cret-pw" not in text.output
    assert "s3cret-pw" not in json_run.output


def test_log_lines_are_redacted(workspace: Workspace) -> None:
    """A log record that quotes the store password is printed without it under -v."""
    package = workspace.package(
        """
        import logging

        from flamingock_async import change_unit


        @change_unit(id="log-url", order="0001", author="tests")
        class LogUrl:
            async def execute(self) -> None:
                logging.getLogger("flamingock_async.example").info("talking to s3cret-pw")
        """
    )

    result = workspace.invoke(
        "run", "-v", "--store", "memory://admin:s3cret-pw@log-test", "--changes", package
    )

    assert result.exit_code == 0, result.output
    assert "talking to ***" in result.stderr
    assert "s3cret-pw" not in result.output
