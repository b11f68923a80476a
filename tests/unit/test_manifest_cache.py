"""The manifest cache: a package with unchanged files loads without importing its modules."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flamingock_async import PipelineValidationError, Stage, _manifest
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


def test_cache_invalid_recovery_ignored(make_package: MakePackage, cache_dir: Path) -> None:
    package = three_changes(make_package)
    load_pipeline(package, cache_dir=cache_dir)
    [path] = list(cache_dir.iterdir())
    document = json.loads(path.read_text())
    document["stages"][0]["groups"][0]["changes"][0][4] = "SOMETIMES"
    path.write_text(json.dumps(document))
    forget(package)

    pipeline = load_pipeline(package, cache_dir=cache_dir)

    assert f"{package}.a" in sys.modules
    assert ids(pipeline) == ["in-a", "in-b", "in-c"]


def test_cached_planning_builds_no_descriptor(
    make_package: MakePackage, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = three_changes(make_package)
    first = load_pipeline(package, cache_dir=cache_dir)
    forget(package)

    def no_build(stage: Any) -> Any:
        raise AssertionError("a start with nothing pending built a change descriptor")

    monkeypatch.setattr(_manifest, "_stage_from_json", no_build)
    cached = load_pipeline(package, cache_dir=cache_dir)

    assert cached.planning_keys() == first.planning_keys()
    assert len(cached) == 3
    monkeypatch.undo()
    assert ids(cached) == ["in-a", "in-b", "in-c"]
    assert cached.get("in-b") == first.get("in-b")


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


# -- pipeline files ------------------------------------------------------------------------------

# Prints which of the watched modules a load imported, in a fresh interpreter: the test process
# has imported PyYAML, pydantic and the change modules already.
LOAD_SCRIPT = """
import json, sys
from flamingock_async._discovery import load_pipeline

path, cache_dir, load_ids, watched = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
before = set(sys.modules)
pipeline = load_pipeline(path, cache_dir=cache_dir)
loaded = sorted(pipeline.load(load_ids)) if load_ids else []
imported = sorted(
    name for name in set(sys.modules) - before if name.split(".")[0] in watched
)
print(json.dumps({
    "kind": type(pipeline).__name__,
    "ids": [change.id for change in pipeline],
    "loaded": loaded,
    "imported": imported,
}))
"""

SQL_CHANGE = """
      - template: sql
        id: {change_id}
        order: "{order}"
        author: team
        apply: CREATE TABLE {table} (x INTEGER)
"""


class FilePipeline:
    """A pipeline file naming a package (module entry), a module (class entry) and SQL."""

    def __init__(self, root: Path, package: str, extra: str) -> None:
        self.root = root
        self.package = package
        self.extra = extra
        self.path = root / "pipeline.yaml"
        self.write()

    def write(self, more: str = "") -> None:
        self.path.write_text(
            "stages:\n"
            "  - name: first\n"
            "    changes:\n"
            f"      - module: {self.package}\n"
            + SQL_CHANGE.format(change_id="make-t", order="4", table="t")
            + more
            + "  - name: second\n"
            "    changes:\n"
            f"      - class: {self.extra}:Change\n"
        )

    def subprocess_load(self, cache_dir: Path, load_ids: list[str] | None = None) -> Any:
        watched = ["yaml", "pydantic", self.package, self.extra]
        result = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(self.path), str(cache_dir),
             json.dumps(load_ids or []), *watched],
            env={**os.environ, "PYTHONPATH": str(self.root)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def pipeline_file(make_package: MakePackage, package_root: Path) -> Iterator[FilePipeline]:
    package = three_changes(make_package)
    extra = f"extra_{uuid.uuid4().hex[:10]}"
    (package_root / f"{extra}.py").write_text(change_source('"in-extra"', "1"))
    yield FilePipeline(package_root, package, extra)
    forget(extra)


FILE_IDS = ["in-a", "in-b", "in-c", "make-t", "in-extra"]


def test_file_second_load_imports_nothing(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    first = pipeline_file.subprocess_load(cache_dir)

    second = pipeline_file.subprocess_load(cache_dir)

    assert first["kind"] == "Pipeline"
    assert "yaml" in first["imported"]
    assert second["kind"] == "_ManifestPipeline"
    assert second["ids"] == FILE_IDS
    assert second["imported"] == []


def test_file_load_imports_only_module(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    pipeline_file.subprocess_load(cache_dir)

    second = pipeline_file.subprocess_load(cache_dir, ["in-c"])

    package = pipeline_file.package
    assert second["loaded"] == ["in-c"]
    assert second["imported"] == [package, f"{package}.sub", f"{package}.sub.c"]


def test_file_load_class_entry(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    pipeline_file.subprocess_load(cache_dir)

    second = pipeline_file.subprocess_load(cache_dir, ["in-extra"])

    assert second["loaded"] == ["in-extra"]
    assert second["imported"] == [pipeline_file.extra]


def test_file_load_template_reads_file(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    pipeline_file.subprocess_load(cache_dir)

    second = pipeline_file.subprocess_load(cache_dir, ["make-t"])

    assert second["loaded"] == ["make-t"]
    assert "yaml" in second["imported"]
    assert "pydantic" in second["imported"]
    assert pipeline_file.package not in second["imported"]
    assert pipeline_file.extra not in second["imported"]


def test_file_cached_matches_first(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    first = load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    forget(pipeline_file.package, pipeline_file.extra)

    second = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    assert type(second) is not Pipeline
    assert list(second) == list(first)
    assert [stage.name for stage in second.stages] == ["first", "second"]
    assert imported(pipeline_file.package) == []


def test_file_loads_all_from_cache(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    forget(pipeline_file.package, pipeline_file.extra)
    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    loaded = pipeline.load(FILE_IDS)

    assert sorted(loaded) == sorted(FILE_IDS)
    assert all(loaded[change.id].descriptor == change for change in pipeline)
    assert repr(loaded["make-t"].new_instance()) == "SqlTemplate('make-t')"


def test_file_edit_invalidates(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    forget(pipeline_file.package, pipeline_file.extra)
    pipeline_file.write(SQL_CHANGE.format(change_id="make-u", order="5", table="u"))

    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    assert ids(pipeline) == ["in-a", "in-b", "in-c", "make-t", "make-u", "in-extra"]
    assert type(pipeline) is Pipeline


def test_file_module_edit_invalidates(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    forget(pipeline_file.package, pipeline_file.extra)
    module = pipeline_file.root / pipeline_file.package / "a.py"
    module.write_text(change_source('"in-a"', "0005"))

    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    assert ids(pipeline) == ["in-b", "in-c", "make-t", "in-a", "in-extra"]
    assert type(pipeline) is Pipeline


def test_file_class_edit_invalidates(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    forget(pipeline_file.package, pipeline_file.extra)
    module = pipeline_file.root / f"{pipeline_file.extra}.py"
    module.write_text(change_source('"in-extra-renamed"', "1"))

    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    assert ids(pipeline)[-1] == "in-extra-renamed"
    assert type(pipeline) is Pipeline


def edit_in_place(path: Path, old: str, new: str) -> None:
    """Replace text by text of the same length and keep the modification time."""
    status = path.stat()
    text = path.read_text()
    assert len(old) == len(new)
    assert old in text
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_file_template_fields_validated(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    """A pending template change is validated by its template even on a cache hit."""
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    edit_in_place(pipeline_file.path, "apply: CREATE", "aplly: CREATE")
    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    assert type(pipeline) is not Pipeline

    with pytest.raises(PipelineValidationError) as caught:
        pipeline.load(["make-t"])

    message = str(caught.value)
    assert "invalid field 'aplly' for the 'sql' template" in message
    assert "lacks the field 'apply', which the 'sql' template requires" in message
    assert f"{pipeline_file.path}, line" in message


def test_file_template_stale_reloads(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir)
    edit_in_place(pipeline_file.path, 'order: "4"', 'order: "6"')
    pipeline = load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    with pytest.raises(StaleManifestError, match="'make-t'"):
        pipeline.load(["make-t"])

    assert ids(pipeline) == ["in-a", "in-b", "in-c", "make-t", "in-extra"]
    changed = pipeline.get("make-t")
    assert changed is not None
    assert changed.order == "6"
    assert list(pipeline.load(["make-t"])) == ["make-t"]


def test_file_classes_checked_one_by_one(package_root: Path, cache_dir: Path) -> None:
    """Two classes of one module in two stages load separately without a false mismatch."""
    module = f"pair_{uuid.uuid4().hex[:10]}"
    (package_root / f"{module}.py").write_text(
        change_source('"first-class"', "1")
        + change_source('"second-class"', "2").replace("class Change", "class Other")
    )
    path = package_root / "pair.yaml"
    path.write_text(
        "stages:\n"
        f"  - {{name: one, changes: [{{class: '{module}:Change'}}]}}\n"
        f"  - {{name: two, changes: [{{class: '{module}:Other'}}]}}\n"
    )
    load_pipeline(path, cache_dir=cache_dir)
    forget(module)
    pipeline = load_pipeline(path, cache_dir=cache_dir)

    loaded = pipeline.load(["second-class"])

    assert list(loaded) == ["second-class"]
    assert loaded["second-class"].descriptor.stage == "two"
    forget(module)


def test_file_cache_next_to_file(
    pipeline_file: FilePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAMINGOCK_CACHE_DIR", raising=False)

    load_pipeline(pipeline_file.path)

    cached = list((pipeline_file.root / "__pycache__").glob("flamingock-manifest.*.json"))
    assert [path.name.split(".")[1:3] for path in cached] == [["pipeline", "yaml"]]


def test_file_unwritable_cache_skipped(
    pipeline_file: FilePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAMINGOCK_CACHE_DIR", raising=False)
    (pipeline_file.root / "__pycache__").write_text("")  # a file where the directory would go

    first = load_pipeline(pipeline_file.path)
    second = load_pipeline(pipeline_file.path)

    assert ids(first) == FILE_IDS
    assert type(second) is Pipeline


def test_file_without_cache(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    load_pipeline(pipeline_file.path, cache_dir=cache_dir, use_cache=False)

    assert not cache_dir.exists()


def test_invalid_file_is_not_cached(pipeline_file: FilePipeline, cache_dir: Path) -> None:
    pipeline_file.write(SQL_CHANGE.format(change_id="make-t", order="5", table="u"))

    with pytest.raises(PipelineValidationError):
        load_pipeline(pipeline_file.path, cache_dir=cache_dir)

    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


# -- stages of package names ---------------------------------------------------------------------


def test_stage_names_cached(make_package: MakePackage, cache_dir: Path) -> None:
    first_package = three_changes(make_package)
    second_package = make_package({"d.py": change_source('"in-d"', "1")})
    stages = [Stage("one", [first_package]), Stage("two", f"{second_package}.d")]
    first = load_pipeline(stages, cache_dir=cache_dir)
    forget(first_package, second_package)

    second = load_pipeline(stages, cache_dir=cache_dir)

    assert type(second) is not Pipeline
    assert list(second) == list(first)
    assert imported(first_package) == []
    assert imported(second_package) == []
    assert list(second.load(["in-d"])) == ["in-d"]
    assert imported(first_package) == []
    assert imported(second_package) == [second_package, f"{second_package}.d"]


def test_stage_names_edit_invalidates(
    make_package: MakePackage, package_root: Path, cache_dir: Path
) -> None:
    package = three_changes(make_package)
    stages = [Stage("one", [f"{package}.a", f"{package}.b"]), Stage("two", f"{package}.sub")]
    load_pipeline(stages, cache_dir=cache_dir)
    forget(package)
    (package_root / package / "sub" / "d.py").write_text(change_source('"in-d"', "4"))

    pipeline = load_pipeline(stages, cache_dir=cache_dir)

    assert ids(pipeline) == ["in-a", "in-b", "in-c", "in-d"]
    assert type(pipeline) is Pipeline
