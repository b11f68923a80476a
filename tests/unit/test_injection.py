"""Injection of dependencies into change methods: by type annotation, then by name."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Protocol

import pytest

from flamingock_async import PipelineValidationError, _injection
from flamingock_async._injection import check_injectable, resolve_arguments


class Database:
    pass


class ReplicaDatabase(Database):
    pass


class Cache:
    pass


class Named(Protocol):
    name: str


class Change:
    async def execute(self, db: Database, cache: Cache, label: str = "x") -> None:
        pass


# -- resolve_arguments -----------------------------------------------------------------------------


def test_resolves_by_exact_type() -> None:
    db, cache = Database(), Cache()

    arguments = resolve_arguments(Change().execute, named={}, typed=[cache, db])

    assert arguments == {"db": db, "cache": cache}


def test_resolves_by_subclass() -> None:
    replica, cache = ReplicaDatabase(), Cache()

    arguments = resolve_arguments(Change().execute, named={}, typed=[replica, cache])

    assert arguments["db"] is replica


def test_exact_type_beats_subclass() -> None:
    db, replica, cache = Database(), ReplicaDatabase(), Cache()

    arguments = resolve_arguments(Change().execute, named={}, typed=[replica, db, cache])

    assert arguments["db"] is db


def test_two_candidates_rejected() -> None:
    with pytest.raises(PipelineValidationError) as caught:
        resolve_arguments(Change().execute, named={}, typed=[Database(), Database(), Cache()])

    message = str(caught.value)
    assert "'db'" in message
    assert "two different Database objects" in message
    assert "Change.execute()" in message


def test_two_candidate_types_named() -> None:
    def execute(value: Database | Cache) -> None:
        pass

    with pytest.raises(PipelineValidationError) as caught:
        resolve_arguments(execute, named={}, typed=[Database(), Cache()])

    assert "both a Database object and a Cache object" in str(caught.value)


def test_same_object_twice_is_fine() -> None:
    db, cache = Database(), Cache()

    arguments = resolve_arguments(Change().execute, named={}, typed=[db, cache, db])

    assert arguments["db"] is db


def test_name_breaks_type_tie() -> None:
    first, second, cache = Database(), Database(), Cache()

    arguments = resolve_arguments(
        Change().execute, named={"db": second}, typed=[first, second, cache]
    )

    assert arguments["db"] is second


def test_falls_back_to_name() -> None:
    db, cache = object(), Cache()

    arguments = resolve_arguments(Change().execute, named={"db": db}, typed=[cache])

    assert arguments["db"] is db


def test_type_wins_over_name() -> None:
    db, other, cache = Database(), Database(), Cache()

    arguments = resolve_arguments(Change().execute, named={"db": other}, typed=[db, cache])

    assert arguments["db"] is db


def test_default_left_out() -> None:
    arguments = resolve_arguments(Change().execute, named={}, typed=[Database(), Cache()])

    assert "label" not in arguments


def test_default_filled_by_name() -> None:
    arguments = resolve_arguments(
        Change().execute, named={"label": "given"}, typed=[Database(), Cache()]
    )

    assert arguments["label"] == "given"


def test_missing_required_rejected() -> None:
    with pytest.raises(PipelineValidationError) as caught:
        resolve_arguments(Change().execute, named={}, typed=[Database()], where="Change 'x'")

    message = str(caught.value)
    assert message.startswith("Change 'x'")
    assert "'cache'" in message
    assert "of type Cache or named 'cache'" in message
    assert "dependencies=" in message


def test_unbound_function_skips_self() -> None:
    db, cache = Database(), Cache()

    arguments = resolve_arguments(Change.execute, named={}, typed=[db, cache])

    assert arguments == {"db": db, "cache": cache}


def test_plain_function_keeps_first_parameter() -> None:
    def execute(db: Database) -> None:
        pass

    db = Database()

    assert resolve_arguments(execute, named={}, typed=[db]) == {"db": db}


def test_untyped_parameters_by_name() -> None:
    def execute(self: object, data: Any, session: object, extra) -> None:  # type: ignore[no-untyped-def]
        pass

    arguments = resolve_arguments(
        execute, named={"data": 1, "session": 2, "extra": 3}, typed=[Database()]
    )

    assert arguments == {"data": 1, "session": 2, "extra": 3}


def test_optional_annotation() -> None:
    def execute(db: Optional[Database], cache: Cache | None) -> None:  # noqa: UP045
        pass

    db, cache = Database(), Cache()

    assert resolve_arguments(execute, named={}, typed=[db, cache]) == {"db": db, "cache": cache}


def test_generic_annotation_uses_origin() -> None:
    def execute(items: list[int]) -> None:
        pass

    items = [1, 2]

    assert resolve_arguments(execute, named={}, typed=[items])["items"] is items


def test_non_runtime_protocol_by_name() -> None:
    def execute(thing: Named) -> None:
        pass

    thing = object()

    assert resolve_arguments(execute, named={"thing": thing}, typed=[Database()])["thing"] is thing


def test_variadic_parameters_ignored() -> None:
    def execute(db: Database, *args: Any, **kwargs: Any) -> None:
        pass

    db = Database()

    assert resolve_arguments(execute, named={"args": 1}, typed=[db]) == {"db": db}


# -- string annotations ------------------------------------------------------------------------


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write a module under tmp_path, import it and return it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(source: str, name: str | None = None) -> Any:
        name = name or f"injected_{uuid.uuid4().hex[:10]}"
        names.append(name)
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_future_annotations_resolved(make_module: Any) -> None:
    module = make_module(
        """
        from __future__ import annotations

        class Client:
            pass

        async def execute(client: Client) -> None:
            pass
        """
    )
    client = module.Client()

    assert resolve_arguments(module.execute, named={}, typed=[object(), client]) == {
        "client": client
    }


def test_unresolvable_hint_by_name(make_module: Any) -> None:
    module = make_module(
        """
        from __future__ import annotations

        class Client:
            pass

        async def execute(client: Client, db: NoSuchName) -> None:
            pass
        """
    )
    client, db = module.Client(), object()

    arguments = resolve_arguments(module.execute, named={"db": db}, typed=[client])

    assert arguments == {"client": client, "db": db}


def test_type_checking_hint_resolves_once_imported(make_module: Any) -> None:
    """A hint naming a module imported only for type checkers resolves once it is imported."""
    library = f"library_{uuid.uuid4().hex[:10]}"
    module = make_module(
        f"""
        from __future__ import annotations
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            import {library}

        async def execute(client: {library}.Client) -> None:
            pass
        """
    )
    with pytest.raises(PipelineValidationError, match="named 'client'"):
        resolve_arguments(module.execute, named={}, typed=[object()])

    imported = make_module("class Client:\n    pass\n", name=library)
    client = imported.Client()

    assert resolve_arguments(module.execute, named={}, typed=[client]) == {"client": client}


def test_signature_analysed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def execute(db: Database) -> None:
        pass

    calls: list[object] = []
    real = _injection._declared_parameters

    def counting(function: Any) -> list[tuple[str, object, bool, bool]]:
        calls.append(function)
        return real(function)

    monkeypatch.setattr(_injection, "_declared_parameters", counting)
    for _ in range(3):
        resolve_arguments(execute, named={}, typed=[Database()])
        check_injectable(execute, names={"db": Database}, where="Change 'x'")

    assert calls == [execute]


# -- check_injectable ------------------------------------------------------------------------------


def test_check_passes_by_type() -> None:
    problems = check_injectable(
        Change().execute, names={"database": ReplicaDatabase, "c": Cache}, where="Change 'x'"
    )

    assert problems == []


def test_check_passes_by_name() -> None:
    problems = check_injectable(
        Change().execute, names={"db": dict, "cache": dict}, where="Change 'x'"
    )

    assert problems == []


def test_check_names_missing_parameter() -> None:
    problems = check_injectable(
        Change().execute, names={"db": Database}, where="Change 'x' (pkg.mod:Change)"
    )

    assert len(problems) == 1
    assert problems[0].startswith("Change 'x' (pkg.mod:Change)")
    assert "parameter 'cache' of Change.execute()" in problems[0]
    assert "of type Cache or named 'cache'" in problems[0]
    assert "give the parameter a default value" in problems[0]


def test_check_ignores_defaults() -> None:
    def execute(db: Database, label: str = "x") -> None:
        pass

    assert check_injectable(execute, names={"db": Database}, where="Change 'x'") == []


def test_check_rejects_positional_only() -> None:
    def execute(db: Database, /) -> None:
        pass

    problems = check_injectable(execute, names={"db": Database}, where="Change 'x'")

    assert len(problems) == 1
    assert "positional-only" in problems[0]


def test_check_untyped_needs_name() -> None:
    def execute(data) -> None:  # type: ignore[no-untyped-def]
        pass

    problems = check_injectable(execute, names={"other": dict}, where="Change 'x'")

    assert len(problems) == 1
    assert "named 'data'" in problems[0]


def _by_signature(function: Any) -> list[tuple[str, object, bool, bool]]:
    return [
        (p.name, p.annotation, p.default is p.empty, p.kind is p.POSITIONAL_ONLY)
        for p in inspect.signature(function).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _shapes() -> list[Any]:
    def none() -> None:
        pass

    def positional(a: int, b: Database, c: str = "x") -> None:
        pass

    def positional_only(a: int, /, b: int = 1, *, c: int, d: int = 2) -> None:
        pass

    def variadic(self: object, *args: int, key: str, **kwargs: int) -> None:
        pass

    def defaults_only(a=1, b=2):  # type: ignore[no-untyped-def]
        pass

    async def method(self: object, db: Database, *, context: Any = None) -> None:
        pass

    return [none, positional, positional_only, variadic, defaults_only, method]


@pytest.mark.parametrize("function", _shapes(), ids=lambda function: function.__name__)
def test_code_parameters_match_signature(function: Any) -> None:
    assert _injection._declared_parameters(function) == _by_signature(function)


def test_wrapped_function_uses_signature() -> None:
    def inner(db: Database, *, flag: bool = False) -> None:
        pass

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        inner(*args, **kwargs)

    assert _injection._declared_parameters(wrapper) == _by_signature(inner)
