"""Validation of change units and pipelines: every problem, named with its class, module and fix."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flamingock_async import PipelineValidationError, Recovery, Stage, change_unit
from flamingock_async._discovery import load_pipeline

MakePackage = Callable[[dict[str, str]], str]


def change_source(
    name: str = "Change",
    *,
    change_id: str = "a-change",
    order: str = '"0001"',
    arguments: str = "",
    body: str = "    async def execute(self) -> None:\n        pass\n",
) -> str:
    header = f'@change_unit(id={change_id!r}, order={order}, author="team"{arguments})\n'
    return (
        "from flamingock_async import Recovery, change_unit\n\n"
        + header
        + (f"class {name}:\n{body}")
    )


@pytest.fixture
def make_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePackage]:
    """Write a package of change modules under tmp_path and return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(files: dict[str, str]) -> str:
        name = f"invalid_{uuid.uuid4().hex[:10]}"
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


def problems_of(changes: object, **options: object) -> list[str]:
    with pytest.raises(PipelineValidationError) as caught:
        load_pipeline(changes, use_cache=False, **options)  # type: ignore[arg-type]
    return caught.value.problems


def only_problem(changes: object) -> str:
    problems = problems_of(changes)
    assert len(problems) == 1, problems
    return problems[0]


def class_with(name: str = "Change", **arguments: object) -> type:
    values: dict[str, object] = {"id": "a-change", "order": "0001", "author": "team"}
    values.update(arguments)

    async def execute(self: object) -> None:
        pass

    cls = type(name, (), {"execute": execute, "__module__": __name__})
    return change_unit(**values)(cls)  # type: ignore[arg-type]


# -- duplicates ----------------------------------------------------------------------------------


def test_duplicate_id_names_both_classes(make_package: MakePackage) -> None:
    package = make_package(
        {
            "alpha.py": change_source("AddIndex", order='"0001"').replace('"team"', '"alice"'),
            "beta.py": change_source("AddUser", order='"0002"').replace('"team"', '"bob"'),
        }
    )

    problem = only_problem(package)

    assert "'a-change'" in problem
    assert f"{package}.alpha:AddIndex" in problem
    assert f"{package}.beta:AddUser" in problem
    assert "alpha.py" in problem
    assert "beta.py" in problem
    assert "'alice'" in problem
    assert "'bob'" in problem
    assert "unique id" in problem


def test_duplicate_id_across_stages() -> None:
    first = class_with("First", order="0001")
    second = class_with("Second", order="0002")

    problem = only_problem([Stage("one", [first]), Stage("two", [second])])

    assert "declared 2 times" in problem
    assert f"{__name__}:First" in problem
    assert f"{__name__}:Second" in problem


def test_duplicate_order_names_both(make_package: MakePackage) -> None:
    package = make_package(
        {
            "alpha.py": change_source("Padded", change_id="padded", order='"01"'),
            "beta.py": change_source("Plain", change_id="plain", order='"1"'),
        }
    )

    problem = only_problem(package)

    assert f"{package}.alpha:Padded" in problem
    assert f"{package}.beta:Plain" in problem
    assert "'01'" in problem
    assert "'1'" in problem
    assert "distinct order" in problem


def test_same_order_in_two_stages_allowed() -> None:
    first = class_with("First", id="first")
    second = class_with("Second", id="second")

    pipeline = load_pipeline([Stage("one", [first]), Stage("two", [second])])

    assert len(pipeline) == 2


def test_class_listed_twice() -> None:
    cls = class_with()

    problem = only_problem([Stage("one", [cls]), Stage("two", [cls])])

    assert "listed more than once" in problem
    assert f"{__name__}:Change" in problem


def test_duplicate_stage_name() -> None:
    problems = problems_of(
        [Stage("same", [class_with("A", id="a")]), Stage("same", [class_with("B", id="b")])]
    )

    assert any("declared twice" in problem for problem in problems)


# -- the decorator's arguments -------------------------------------------------------------------


def test_int_order_hints_quoting() -> None:
    problem = only_problem([class_with(order=3)])

    assert "order 3, an int" in problem
    assert '"0003"' in problem
    assert f"{__name__}:Change" in problem


@pytest.mark.parametrize("order", ["1a", "1..2", "", "-1", " 1", "1.", "v2", "1,5"])
def test_bad_order_string(order: str) -> None:
    problem = only_problem([class_with(order=order)])

    assert f"invalid order {order!r}" in problem
    assert '"2.10"' in problem


@pytest.mark.parametrize("order", ["0", "0003", "2.10", "1.2.3"])
def test_good_order_string(order: str) -> None:
    assert len(load_pipeline([class_with(order=order)])) == 1


@pytest.mark.parametrize("change_id", ["bad id", "-leading", "", "a" * 129, "café", "a/b"])
def test_invalid_id(change_id: str) -> None:
    problem = only_problem([class_with(id=change_id)])

    assert f"invalid id {change_id!r}" in problem
    assert f"{__name__}:Change" in problem
    assert "1 to 128 letters" in problem


def test_non_string_id() -> None:
    assert "invalid id 7" in only_problem([class_with(id=7)])


@pytest.mark.parametrize("change_id", ["a", "A.b_c:d-1", "9" * 128])
def test_valid_id(change_id: str) -> None:
    assert load_pipeline([class_with(id=change_id)]).get(change_id) is not None


@pytest.mark.parametrize("author", ["", "   ", None])
def test_empty_author(author: object) -> None:
    problem = only_problem([class_with(author=author)])

    assert "empty author" in problem
    assert "'a-change'" in problem


@pytest.mark.parametrize("field", ["transactional", "run_always"])
def test_non_bool_flag(field: str) -> None:
    problem = only_problem([class_with(**{field: "yes"})])

    assert f"{field}='yes'" in problem
    assert "True or False" in problem


def test_bad_recovery() -> None:
    problem = only_problem([class_with(recovery="sometimes")])

    assert "invalid recovery 'sometimes'" in problem
    assert "Recovery.ALWAYS_RETRY" in problem


def test_recovery_by_name_accepted() -> None:
    pipeline = load_pipeline([class_with(recovery="ALWAYS_RETRY")])

    assert pipeline.get("a-change").recovery is Recovery.ALWAYS_RETRY  # type: ignore[union-attr]


# -- the class ---------------------------------------------------------------------------------


def test_missing_execute(make_package: MakePackage) -> None:
    package = make_package({"m.py": change_source("NoExecute", body="    pass\n")})

    problem = only_problem(package)

    assert f"{package}.m:NoExecute" in problem
    assert "m.py" in problem
    assert "has no execute method" in problem
    assert "async def execute" in problem


def test_sync_execute(make_package: MakePackage) -> None:
    body = "    def execute(self) -> None:\n        pass\n"
    package = make_package({"m.py": change_source("Sync", body=body)})

    problem = only_problem(package)

    assert f"{package}.m:Sync" in problem
    assert "declares execute without async" in problem
    assert "async def execute" in problem


def test_sync_rollback(make_package: MakePackage) -> None:
    body = (
        "    async def execute(self) -> None:\n        pass\n"
        "    def rollback(self) -> None:\n        pass\n"
    )
    package = make_package({"m.py": change_source("SyncRollback", body=body)})

    problem = only_problem(package)

    assert f"{package}.m:SyncRollback" in problem
    assert "declares rollback without async" in problem


def test_constructor_with_arguments(make_package: MakePackage) -> None:
    body = (
        "    def __init__(self, db):\n        self.db = db\n"
        "    async def execute(self) -> None:\n        pass\n"
    )
    package = make_package({"m.py": change_source("NeedsDb", body=body)})

    problem = only_problem(package)

    assert "__init__ requires db" in problem
    assert "parameters of execute" in problem


def test_undecorated_class_rejected() -> None:
    class Plain:
        async def execute(self) -> None:
            pass

    problem = only_problem([Plain])

    assert "is not a change unit" in problem
    assert "@change_unit" in problem


def test_non_class_entry_rejected() -> None:
    assert "neither a class nor a module name" in only_problem([42])


# -- modules -----------------------------------------------------------------------------------


def test_import_error_names_module(make_package: MakePackage) -> None:
    package = make_package({"broken.py": "import no_such_library_here\n"})

    problem = only_problem(package)

    assert f"Module {package}.broken" in problem
    assert "broken.py" in problem
    assert "ModuleNotFoundError" in problem
    assert "no_such_library_here" in problem
    assert "so that it imports" in problem


def test_syntax_error_names_line(make_package: MakePackage) -> None:
    package = make_package({"broken.py": "x = 1\ndef (:\n"})

    problem = only_problem(package)

    assert "SyntaxError" in problem
    assert "line 2" in problem


def test_import_error_keeps_other_problems(make_package: MakePackage) -> None:
    package = make_package(
        {
            "broken.py": "raise RuntimeError('boom')\n",
            "sync.py": change_source(body="    def execute(self):\n        pass\n"),
        }
    )

    problems = problems_of(package)

    assert len(problems) == 2
    assert any("RuntimeError: boom" in problem for problem in problems)
    assert any("without async" in problem for problem in problems)


@pytest.mark.parametrize("name", ["no_such_package_xyz", "no_such_package_xyz.changes"])
def test_missing_module_name(name: str) -> None:
    problem = only_problem(name)

    assert f"{name!r}" in problem
    assert "was not found" in problem
    assert "sys.path" in problem


def test_missing_submodule_name(make_package: MakePackage) -> None:
    package = make_package({"a.py": change_source()})

    problem = only_problem(f"{package}.missing")

    assert "was not found" in problem


def test_empty_package(make_package: MakePackage) -> None:
    package = make_package({"notes.py": "VALUE = 1\n"})

    problem = only_problem(package)

    assert "contains no change units" in problem
    assert package in problem


def test_empty_list() -> None:
    assert "contains no change units" in only_problem([])


def test_empty_stage_among_others() -> None:
    problem = only_problem([Stage("full", [class_with()]), Stage("empty", [])])

    assert "Stage 'empty' contains no change units" in problem


def test_duplicates_reported_with_other_problems() -> None:
    first = class_with("First", id="same", order="0001")
    second = class_with("Second", id="same", order="0002", author="")

    problems = problems_of([first, second])

    assert len(problems) == 2
    assert any("empty author" in problem for problem in problems)
    assert any("declared 2 times" in problem for problem in problems)


def test_every_problem_reported_at_once() -> None:
    changes = [
        class_with("A", id="bad id"),
        class_with("B", id="b", order=1),
        class_with("C", id="c", order="0003", author=""),
        class_with("D", id="d", order="0004", transactional="no"),
    ]

    assert len(problems_of(changes)) == 4


# -- pipeline files and templates --------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  - name: one\n    changes: [\n  bad: : :\n")

    problem = only_problem(path)

    assert path in problem
    assert "line " in problem
    assert "not valid YAML" in problem


def test_yaml_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")

    assert "was not found" in only_problem(path)


def test_yaml_without_stages(tmp_path: Path) -> None:
    assert "no 'stages' list" in only_problem(write(tmp_path, "changes: []\n"))


def test_yaml_bad_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stages:
          - name: one
            changes:
              - module: a
                class: b:C
              - class: no_colon
              - just-a-string
        """,
    )

    problems = problems_of(path)

    assert any("exactly one of the keys" in problem for problem in problems)
    assert any("module:ClassName" in problem for problem in problems)
    assert any("'just-a-string'" in problem for problem in problems)


def test_yaml_class_not_found(make_package: MakePackage, tmp_path: Path) -> None:
    package = make_package({"m.py": change_source()})
    path = write(
        tmp_path, f"stages:\n  - name: s\n    changes:\n      - class: {package}.m:Absent\n"
    )

    problem = only_problem(path)

    assert "names nothing in module" in problem
    assert f"{package}.m" in problem


def test_unknown_template(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stages:
          - name: s
            changes:
              - template: no-such-template
                id: x
                order: "1"
                author: team
        """,
    )

    problem = only_problem(path)

    assert "Unknown template 'no-such-template'" in problem
    assert "'x'" in problem
    assert "line 5" in problem
    assert "sql" in problem
    assert "register_template" in problem


def test_template_schema_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stages:
          - name: s
            changes:
              - template: sql
                id: x
                order: "1"
                author: team
                aply: CREATE TABLE t (id INTEGER)
        """,
    )

    problems = problems_of(path)

    assert any("lacks the field 'apply', which the 'sql' template requires" in p for p in problems)
    assert any("invalid field 'aply'" in problem for problem in problems)
    assert all("'sql' template" in problem for problem in problems)
    assert all("line 5" in problem for problem in problems)


def test_template_common_fields_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stages:
          - name: s
            changes:
              - template: sql
                id: x
                order: 0003
                author: team
                apply: SELECT 1
        """,
    )

    problem = only_problem(path)

    assert "an int" in problem
    assert "quote it" in problem
    assert "line 5" in problem
