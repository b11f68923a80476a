"""Checks of change units and of the pipeline as a whole, run before any store is touched.

Every check returns its problems as sentences instead of raising, so that one
`PipelineValidationError` can list every problem of every change at once.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._changes import ChangeDescriptor, ChangeUnitSpec, Recovery, StagePlan

__all__ = [
    "ID_PATTERN",
    "ORDER_PATTERN",
    "order_key",
    "check_spec",
    "check_methods",
    "has_valid_methods",
    "check_stages",
    "make_name",
]

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ORDER_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def order_key(order: str) -> tuple[int, ...]:
    """Return the sort key of a valid order: its dot-separated parts as numbers."""
    if "." not in order:
        return (int(order),)  # the usual order, in a third of the time of splitting it
    return tuple(map(int, order.split(".")))


def check_spec(
    spec: ChangeUnitSpec,
    *,
    stage: str,
    source: str,
    file: str | None,
    location: str,
    template: str | None = None,
) -> tuple[ChangeDescriptor | None, list[str]]:
    """Check the `@change_unit` arguments of one change and build its descriptor.

    `location` names where the change is declared, for messages. The descriptor is None when
    the id or the order is invalid. With other problems it is still returned, so that
    duplicate ids and orders are reported in the same run, but it must not be loaded.
    """
    if _is_valid(spec):
        # The common case, checked without composing any message.
        descriptor = ChangeDescriptor(
            id=spec.id,
            order=spec.order,
            author=spec.author,
            stage=stage,
            transactional=spec.transactional,
            recovery=spec.recovery,
            run_always=spec.run_always,
            source=source,
            file=file,
            description=spec.description,
            template=template,
        )
        return descriptor, []

    change_id = spec.id if isinstance(spec.id, str) and ID_PATTERN.fullmatch(spec.id) else None
    name = make_name(spec.id, location)

    problems = [
        *_check_id(spec.id, location),
        *_check_order(spec.order, name),
        *_check_author(spec.author, name),
        *_check_flag("transactional", spec.transactional, name),
        *_check_flag("run_always", spec.run_always, name),
        *_check_description(spec.description, name),
    ]
    recovery = _recovery(spec.recovery)
    if recovery is None:
        problems.append(
            f"{name} has an invalid recovery {spec.recovery!r}; use "
            "Recovery.MANUAL_INTERVENTION or Recovery.ALWAYS_RETRY."
        )

    if change_id is None or _check_order(spec.order, name):
        return None, problems

    descriptor = ChangeDescriptor(
        id=change_id,
        order=spec.order,
        author=spec.author,
        stage=stage,
        transactional=spec.transactional,
        recovery=recovery or Recovery.MANUAL_INTERVENTION,
        run_always=spec.run_always,
        source=source,
        file=file,
        description=spec.description,
        template=template,
    )
    return descriptor, problems


def _is_valid(spec: ChangeUnitSpec) -> bool:
    """Return True when `check_spec` would find no problem in `spec`."""
    change_id, order, author = spec.id, spec.order, spec.author
    return (
        type(change_id) is str
        and ID_PATTERN.fullmatch(change_id) is not None
        and type(order) is str
        and ORDER_PATTERN.fullmatch(order) is not None
        and type(author) is str
        and bool(author.strip())
        and type(spec.transactional) is bool
        and type(spec.run_always) is bool
        and type(spec.description) is str
        and isinstance(spec.recovery, Recovery)
    )


def check_methods(
    cls: type,
    *,
    name: str,
    dependency_names: Mapping[str, type] | None = None,
    needs_no_arguments: bool = True,
) -> list[str]:
    """Check that `cls` has `async def execute`, an async `rollback` if any, and can be built.

    `name` starts each message, for example `"Change 'x' (pkg.mod:Cls in /app/mod.py)"`.
    When `dependency_names` is given, every required parameter of `execute` and `rollback`
    must be fillable from it (see `check_injectable`).
    """
    problems: list[str] = []
    execute = getattr(cls, "execute", None)
    rollback = getattr(cls, "rollback", None)

    if execute is None:
        problems.append(f"{name} has no execute method; add `async def execute(self, ...)`.")
    else:
        problems += _check_coroutine("execute", execute, name)
    if rollback is not None:
        problems += _check_coroutine("rollback", rollback, name)
    if needs_no_arguments:
        problems += _check_constructor(cls, name)

    if dependency_names is not None:
        from ._injection import check_injectable  # not needed by a start that loads no class

        for method in (execute, rollback):
            if method is not None and inspect.iscoroutinefunction(method):
                problems += check_injectable(method, names=dependency_names, where=name)

    return problems


def has_valid_methods(cls: type) -> bool:
    """Return True when `check_methods(cls, ...)` without dependency names finds nothing.

    It recognises the usual change class (plain `async def` methods, no `__init__`) without
    `inspect`; False means only that the full check must run.
    """
    plain: Any = cls
    rollback = getattr(cls, "rollback", None)
    return (
        _is_plain_coroutine_function(getattr(cls, "execute", None))
        and (rollback is None or _is_plain_coroutine_function(rollback))
        and plain.__init__ is object.__init__
        and plain.__new__ is object.__new__
    )


def _is_plain_coroutine_function(function: object) -> bool:
    return type(function) is types.FunctionType and bool(
        function.__code__.co_flags & inspect.CO_COROUTINE
    )


def check_stages(stages: Sequence[StagePlan], *, origin: str) -> list[str]:
    """Check the whole pipeline: not empty, unique ids, and unique orders within a stage."""
    changes = [change for stage in stages for change in stage.changes]
    if not changes:
        return [
            f"The pipeline given by {origin} contains no change units; decorate the classes "
            "with @change_unit, or check that the package or file names the right changes."
        ]

    problems = _check_duplicate_ids(changes)
    for stage in stages:
        problems += _check_duplicate_orders(stage)
    return problems


# -- the decorator's arguments -------------------------------------------------------------


def _check_id(value: Any, location: str) -> list[str]:
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return []
    return [
        f"The change unit {location} has an invalid id {value!r}; use 1 to 128 letters, "
        "digits, '.', '_', ':' or '-', starting with a letter or a digit."
    ]


def _check_order(value: Any, name: str) -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        example = f"{value:04d}" if value >= 0 else "0001"
        return [
            f"{name} has order {value!r}, an int; quote it as a string of digits such as "
            f'"{example}", so that leading zeros and dotted parts keep their meaning.'
        ]
    if isinstance(value, str) and ORDER_PATTERN.fullmatch(value):
        return []
    return [
        f"{name} has an invalid order {value!r}; use a string of digits, optionally in "
        'dot-separated parts, such as "0003" or "2.10".'
    ]


def _check_author(value: Any, name: str) -> list[str]:
    if isinstance(value, str) and value.strip():
        return []
    return [f"{name} has an empty author; set author to the team or person who owns the change."]


def _check_flag(field: str, value: Any, name: str) -> list[str]:
    if isinstance(value, bool):
        return []
    return [f"{name} has {field}={value!r}, which is not a bool; set it to True or False."]


def _check_description(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return []
    return [f"{name} has description={value!r}, which is not a string; pass a string."]


def _recovery(value: Any) -> Recovery | None:
    if isinstance(value, Recovery):
        return value
    if isinstance(value, str):
        try:
            return Recovery(value.upper())
        except ValueError:
            return None
    return None


# -- the class -----------------------------------------------------------------------------


def _check_coroutine(method: str, function: object, name: str) -> list[str]:
    if not callable(function):
        return [
            f"{name} has a {method} attribute that is not a method; define `async def {method}`."
        ]
    if inspect.iscoroutinefunction(function):
        return []
    return [
        f"{name} declares {method} without async; declare it as `async def {method}(self, ...)`."
    ]


def _check_constructor(cls: type, name: str) -> list[str]:
    plain: Any = cls
    if plain.__init__ is object.__init__ and plain.__new__ is object.__new__:
        # No arguments, and inspect.signature would parse object's text signature per class.
        return []
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return []

    required = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    if not required:
        return []
    return [
        f"{name} cannot be created without arguments, because __init__ requires "
        f"{', '.join(required)}; receive dependencies as parameters of execute instead."
    ]


# -- the pipeline --------------------------------------------------------------------------


def _check_duplicate_ids(changes: Iterable[ChangeDescriptor]) -> list[str]:
    by_id: dict[str, list[ChangeDescriptor]] = {}
    for change in changes:
        by_id.setdefault(change.id, []).append(change)

    problems = []
    for change_id, declared in by_id.items():
        if len(declared) > 1:
            places = _join(f"{c.where} by author {c.author!r}" for c in declared)
            problems.append(
                f"Change id {change_id!r} is declared {len(declared)} times, in {places}; "
                "give each change a unique id."
            )
    return problems


def _check_duplicate_orders(stage: StagePlan) -> list[str]:
    by_order: dict[tuple[int, ...], list[ChangeDescriptor]] = {}
    for change in stage.changes:
        by_order.setdefault(order_key(change.order), []).append(change)

    problems = []
    for declared in by_order.values():
        if len(declared) > 1:
            places = _join(f"{c.id!r} in {c.where} with order {c.order!r}" for c in declared)
            problems.append(
                f"Changes {places} share one position in stage {stage.name!r}, because orders "
                "compare part by part as numbers; give each change a distinct order."
            )
    return problems


def _join(items: Iterable[str]) -> str:
    texts = list(items)
    return ", ".join(texts[:-1]) + " and " + texts[-1] if len(texts) > 1 else "".join(texts)


def make_name(change_id: object, location: str) -> str:
    """Return the subject of a message about one change, for example `Change 'x' (pkg.m:C)`."""
    if isinstance(change_id, str) and ID_PATTERN.fullmatch(change_id):
        return f"Change {change_id!r} ({location})"
    return f"The change unit {location}"
