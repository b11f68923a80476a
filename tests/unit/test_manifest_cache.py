"""The manifest cache: a package with unchanged files loads without importing its modules."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flamingock_async import PipelineValidationError, _manifest
from flamingock_async._changes import Pipeline
from flamingock_async._discovery import StaleManifestError, load_pipeline

MakePackage = Callable[[dict[str, str]], str]


def change_source(change_id: str, order: str, *, extra: str = "", header: str = "") -> str:
    return header + textwrap.dedent(
        f"""
        from flamingock_async import change_unit

        @change_unit(id={change_id}, order={order!r}, author="team"{extra})
        class Change:
            async def execute(self) -> None:
                pass
        """
    )


@pytest.fixture
def package_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


@pytest.fixture
def make_package(package_root: Path) -> Iterator[MakePackage]:
    """Write a package of change modules and return its name."""
    names: list[str] = []

    def make(files: dict[str, str]) -> str:
        name = f"cached_{uuid.uuid4().hex[:10]}"
        names.append(name)
        root = package_root / name
        root.mkdir()
        (root / "__init__.py").write_text("")
        for relative, source in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(source)
        importlib.invalidate_caches()
        return name

    yield make
    forget(*names)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def forget(*packages: str) -> None:
    """Remove the packages from sys.modules, as in a fresh process."""
    for module in list(sys.modules):
        if module.split(".")[0] in packages:
            del sys.modules[module]
    importlib.invalidate_caches()


def imported(package: str) -> list[str]:
    return sorted(module for module in sys.modules if module.split(".")[0] == package)


def ids(pipeline: Pipeline) -> list[str]:
    return [change.id for change in pipeline]


def three_changes(make_package: MakePackage) -> str:
    return make_package(
        {
            "a.py": change_source('"in-a"', "1"),
            "b.py": change_source('"in-b"', "2", extra=", run_always=True"),
            "sub/c.py": change_source('"in-c"', "3"),
        }
    )


# -- hits ----------------------------------------------------------------------------------------


def test_first_load_writes_cache(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)

    load_pipeline(package, cache_dir=cache_dir)

    files = list(cache_dir.iterdir())
    assert len(files) == 1
    assert files[0].name.startswith(f"flamingock-manifest.{package}.")
    assert json.loads(files[0].read_text())["format"] == _manifest.FORMAT


def test_cached_load_imports_nothing(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    first = load_pipeline(package, cache_dir=cache_dir)
    forget(package)

    second = load_pipeline(package, cache_dir=cache_dir)

    assert imported(package) == []
    assert list(second) == list(first)
    assert [stage.name for stage in second.stages] == ["default"]


def test_cached_load_imports_only_needed(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    pipeline = load_pipeline(package, cache_dir=cache_dir)

    loaded = pipeline.load(["in-c"])

    assert imported(package) == [package, f"{package}.sub", f"{package}.sub.c"]
    assert loaded["in-c"].descriptor == pipeline.get("in-c")
    assert type(loaded["in-c"].new_instance()).__module__ == f"{package}.sub.c"


def test_cached_load_unknown_id(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)

    pipeline = load_pipeline(package, cache_dir=cache_dir)

    with pytest.raises(PipelineValidationError, match="'absent'"):
        pipeline.load(["absent"])


def test_default_cache_in_pycache(make_package: MakePackage, package_root: Path) -> None:
    package = three_changes(make_package)

    load_pipeline(package)

    cached = list((package_root / package / "__pycache__").glob("flamingock-manifest.*.json"))
    assert len(cached) == 1


def test_cache_dir_from_environment(
    make_package: MakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = three_changes(make_package)
    directory = tmp_path / "from-env"
    monkeypatch.setenv("FLAMINGOCK_CACHE_DIR", str(directory))

    load_pipeline(package)

    assert len(list(directory.glob("flamingock-manifest.*.json"))) == 1


def test_single_module_is_cached(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(f"{package}.b", cache_dir=cache_dir)
    forget(package)

    pipeline = load_pipeline(f"{package}.b", cache_dir=cache_dir)

    assert ids(pipeline) == ["in-b"]
    assert imported(package) == []


def test_no_cache_when_disabled(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)

    load_pipeline(package, cache_dir=cache_dir, use_cache=False)

    assert not cache_dir.exists()


# -- invalidation --------------------------------------------------------------------------------


def test_changed_file_invalidates(
    make_package: MakePackage, package_root: Path, cache_dir: Path
) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    (package_root / package / "a.py").write_text(change_source('"in-a"', "0004"))

    pipeline = load_pipeline(package, cache_dir=cache_dir)

    assert ids(pipeline) == ["in-b", "in-c", "in-a"]
    assert f"{package}.a" in sys.modules


def test_added_file_invalidates(
    make_package: MakePackage, package_root: Path, cache_dir: Path
) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    (package_root / package / "sub" / "d.py").write_text(change_source('"in-d"', "4"))

    assert ids(load_pipeline(package, cache_dir=cache_dir)) == ["in-a", "in-b", "in-c", "in-d"]


def test_removed_file_invalidates(
    make_package: MakePackage, package_root: Path, cache_dir: Path
) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    (package_root / package / "a.py").unlink()

    assert ids(load_pipeline(package, cache_dir=cache_dir)) == ["in-b", "in-c"]


def test_library_version_invalidates(
    make_package: MakePackage, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    monkeypatch.setattr(_manifest, "__version__", "99.0.0")

    load_pipeline(package, cache_dir=cache_dir)

    assert f"{package}.a" in sys.modules


def test_corrupt_cache_is_rewritten(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    [path] = list(cache_dir.iterdir())
    path.write_text('{"signature": ')
    forget(package)

    pipeline = load_pipeline(package, cache_dir=cache_dir)

    assert ids(pipeline) == ["in-a", "in-b", "in-c"]
    assert json.loads(path.read_text())["format"] == _manifest.FORMAT


def test_wrong_shape_cache_is_ignored(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    [path] = list(cache_dir.iterdir())
    document = json.loads(path.read_text())
    document["stages"] = [{"name": "default", "groups": [{"module": "x"}]}]
    path.write_text(json.dumps(document))
    forget(package)

    assert ids(load_pipeline(package, cache_dir=cache_dir)) == ["in-a", "in-b", "in-c"]


def test_unwritable_cache_dir_is_skipped(
    make_package: MakePackage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    package = three_changes(make_package)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    caplog.set_level(logging.DEBUG, logger="flamingock_async._manifest")

    pipeline = load_pipeline(package, cache_dir=blocker / "cache")

    assert ids(pipeline) == ["in-a", "in-b", "in-c"]
    assert "Not caching the change manifest" in caplog.text
    assert list(tmp_path.glob("**/.manifest-*.tmp")) == []


def test_invalid_pipeline_is_not_cached(make_package: MakePackage, cache_dir: Path) -> None:
    package = make_package({"a.py": change_source('"bad id"', "1")})

    with pytest.raises(PipelineValidationError):
        load_pipeline(package, cache_dir=cache_dir)

    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


# -- full validation on load ---------------------------------------------------------------------


def test_cached_change_validated_on_load(
    make_package: MakePackage, package_root: Path, cache_dir: Path
) -> None:
    """An edit that keeps size and mtime is still caught when the change is about to run."""
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    path = package_root / package / "b.py"
    status = path.stat()
    path.write_text(path.read_text().replace("async def execute(", "def execute      ("))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    for compiled in path.parent.glob("__pycache__/b.*.pyc"):
        compiled.unlink()  # Python would reuse it, because it checks the same size and mtime
    pipeline = load_pipeline(package, cache_dir=cache_dir)
    assert imported(package) == []

    with pytest.raises(PipelineValidationError) as caught:
        pipeline.load(["in-b"])

    assert "declares execute without async" in str(caught.value)
    assert f"{package}.b:Change" in str(caught.value)


def test_stale_metadata_reloads_pipeline(
    make_package: MakePackage, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change whose id comes from outside its files is noticed when it is loaded."""
    monkeypatch.setenv("FLAMINGOCK_TEST_CHANGE_ID", "first-name")
    source = change_source('os.environ["FLAMINGOCK_TEST_CHANGE_ID"]', "1", header="import os\n")
    package = make_package({"a.py": source})
    load_pipeline(package, cache_dir=cache_dir)
    forget(package)
    monkeypatch.setenv("FLAMINGOCK_TEST_CHANGE_ID", "second-name")
    pipeline = load_pipeline(package, cache_dir=cache_dir)
    assert ids(pipeline) == ["first-name"]

    with pytest.raises(StaleManifestError, match="plan the run again"):
        pipeline.load(["first-name"])

    assert ids(pipeline) == ["second-name"]
    assert list(pipeline.load(["second-name"])) == ["second-name"]
    forget(package)
    assert ids(load_pipeline(package, cache_dir=cache_dir)) == ["second-name"]
    assert imported(package) == []
