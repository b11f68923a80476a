"""Fixtures of the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import BASIC_CHANGES, Workspace


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FLAMINGOCK_STORE", raising=False)
    monkeypatch.delenv("FLAMINGOCK_CHANGES", raising=False)
    return Workspace(tmp_path)


@pytest.fixture
def basic(workspace: Workspace) -> str:
    """The name of a package with three changes that each have a rollback."""
    return workspace.package(BASIC_CHANGES)
