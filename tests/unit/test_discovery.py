"""Finding change units: package and module names, classes, stages and pipeline files."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flamingock_async import PipelineValidationError, Recovery, Stage, change_unit
from flamingock_async._discovery import load_pipeline

MakePackage = Callable[[dict[str, str]], str]


def change_source(change_id: str, order: str, *, name: str = "Change", extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        from flamingock_async import change_unit

        @change_unit(id={change_id!r}, order={order!r}, author="team"{extra})
        class {name}:
            async def execute(self) -> None:
                pass
        """
    )


@pytest.fixture
def make_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePackage]:
    """Write a package of change modules under tmp_path and return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(files: dict[str, str]) -> str:
        name = f"changes_{uuid.uuid4().hex[:10]}"
        names.append(name)
        root = tmp_path / name
        root.mkdir()
        (root / "__init__.py").write_text("")
        for relative, source in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        importlib.invalidate_caches()
        return name

    yield make
    for module in list(sys.modules):
        if module.split(".")[0] in names:
            del sys.modules[module]


def ids(pipeline: object) -> list[str]:
    return [change.id for change in pipeline]  # type: ignore[attr-defined]


# -- package and module names ----------------------------------------------------------------


def test_package_loads_every_module_recursively(make_package: MakePackage) -> None:
    package = make_package(
        {
            "c0002.py": change_source("second", "0002"),
            "sub/__init__.py": "",
            "sub/c0001.py": change_source("first", "0001"),
            "nested/deeper/c0003.py": change_source("third", "0003"),
        }
    )

    pipeline = load_pipeline(package, use_cache=False)

    assert ids(pipeline) == ["first", "second", "third"]
    assert [stage.name for stage in pipeline.stages] == ["default"]


def test_package_descriptor_names_class_and_file(make_package: MakePackage) -> None:
    package = make_package({"c1.py": change_source("one", "1", name="AddIndex")})

    change = next(iter(load_pipeline(package, use_cache=False)))

    assert change.source == f"{package}.c1:AddIndex"
    assert change.file is not None
    assert change.file.endswith("c1.py")
    assert change.stage == "default"
    assert change.recovery is Recovery.MANUAL_INTERVENTION
    assert change.transactional is True
    assert change.template is None


def test_module_name_loads_one_module(make_package: MakePackage) -> None:
    package = make_package({"a.py": change_source("in-a", "1"), "b.py": change_source("in-b", "2")})

    pipeline = load_pipeline(f"{package}.b", use_cache=False)

    assert ids(pipeline) == ["in-b"]


def test_package_init_changes_are_found(make_package: MakePackage) -> None:
    package = make_package({"sub/__init__.py": change_source("in-init", "1")})

    assert ids(load_pipeline(package, use_cache=False)) == ["in-init"]


def test_reexported_class_counts_once(make_package: MakePackage) -> None:
    package = make_package({"a.py": change_source("one", "1", name="One")})
    init = Path(sys.path[0]) / package / "__init__.py"
    init.write_text("from .a import One\n")

    assert ids(load_pipeline(package, use_cache=False)) == ["one"]


def test_subclass_of_change_is_not_a_change(make_package: MakePackage) -> None:
    source = change_source("base", "1", name="Base") + "\nclass Derived(Base):\n    pass\n"
    package = make_package({"a.py": source})

    assert ids(load_pipeline(package, use_cache=False)) == ["base"]


def test_dotted_orders_sort_numerically(make_package: MakePackage) -> None:
    package = make_package(
        {
            "a.py": change_source("ten", "2.10"),
            "b.py": change_source("nine", "2.9"),
            "c.py": change_source("one", "1"),
            "d.py": change_source("padded", "0003"),
        }
    )

    assert ids(load_pipeline(package, use_cache=False)) == ["one", "nine", "ten", "padded"]


# -- classes and stages --------------------------------------------------------------------------


@change_unit(id="class-b", order="0002", author="team")
class ClassB:
    async def execute(self) -> None:
        pass


@change_unit(id="class-a", order="0001", author="team", run_always=True)
class ClassA:
    async def execute(self) -> None:
        pass

    async def rollback(self) -> None:
        pass


def test_class_list_is_one_ordered_stage() -> None:
    pipeline = load_pipeline([ClassB, ClassA])

    assert [stage.name for stage in pipeline.stages] == ["default"]
    assert ids(pipeline) == ["class-a", "class-b"]


def test_single_class_is_accepted() -> None:
    assert ids(load_pipeline(ClassA)) == ["class-a"]


def test_loaded_change_builds_instances() -> None:
    loaded = load_pipeline([ClassA, ClassB]).load(["class-a", "class-b"])

    assert isinstance(loaded["class-a"].new_instance(), ClassA)
    assert loaded["class-a"].has_rollback is True
    assert loaded["class-b"].has_rollback is False
    assert loaded["class-a"].descriptor.run_always is True


def test_stages_keep_their_order(make_package: MakePackage) -> None:
    package = make_package({"c.py": change_source("from-package", "1")})

    pipeline = load_pipeline([Stage("later", [ClassB, ClassA]), Stage("packaged", package)])

    assert [stage.name for stage in pipeline.stages] == ["later", "packaged"]
    assert [c.id for c in pipeline.stages[0].changes] == ["class-a", "class-b"]
    assert [c.id for c in pipeline.stages[1].changes] == ["from-package"]
    assert pipeline.get("from-package") is not None
    assert pipeline.get("from-package").stage == "packaged"  # type: ignore[union-attr]


def test_mixed_stage_and_class_rejected() -> None:
    with pytest.raises(PipelineValidationError, match="mixes Stage objects"):
        load_pipeline([Stage("one", [ClassA]), ClassB])  # type: ignore[list-item]


def test_unsupported_changes_type_rejected() -> None:
    with pytest.raises(PipelineValidationError, match="is not a package name"):
        load_pipeline(42)  # type: ignore[arg-type]


def test_load_unknown_id_rejected() -> None:
    pipeline = load_pipeline([ClassA])

    with pytest.raises(PipelineValidationError, match="'missing'"):
        pipeline.load(["missing"])


# -- pipeline files ----------------------------------------------------------------------------


def test_pipeline_file_reads_every_entry_kind(make_package: MakePackage, tmp_path: Path) -> None:
    package = make_package(
        {
            "mod.py": change_source("from-module", "1"),
            "other.py": change_source("from-class", "1", name="Picked"),
        }
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            stages:
              - name: code
                changes:
                  - module: {package}.mod
              - name: picked
                changes:
                  - class: {package}.other:Picked
                  - template: sql
                    id: create-users
                    order: "2"
                    author: data
                    transactional: false
                    recovery: ALWAYS_RETRY
                    run_always: true
                    apply: CREATE TABLE users (id INTEGER)
            """
        )
    )

    pipeline = load_pipeline(str(path))

    assert [stage.name for stage in pipeline.stages] == ["code", "picked"]
    assert ids(pipeline) == ["from-module", "from-class", "create-users"]
    template = pipeline.get("create-users")
    assert template is not None
    assert template.template == "sql"
    assert template.transactional is False
    assert template.recovery is Recovery.ALWAYS_RETRY
    assert template.run_always is True
    assert template.file == str(path)


def test_pipeline_file_accepts_path_object(make_package: MakePackage, tmp_path: Path) -> None:
    package = make_package({"mod.py": change_source("one", "1")})
    path = tmp_path / "pipeline.yml"
    path.write_text(f"stages:\n  - name: s\n    changes:\n      - module: {package}\n")

    assert ids(load_pipeline(path)) == ["one"]


def test_import_stays_light() -> None:
    """Importing the loader must not pull in PyYAML or pydantic."""
    code = (
        "import sys, flamingock_async._discovery; "
        "print('yaml' in sys.modules, 'pydantic' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert output.split() == ["False", "False"]
