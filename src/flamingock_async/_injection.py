"""Dependency injection into `execute` and `rollback`: by type annotation, then by name.

A parameter annotated with a class receives the one candidate object whose type is exactly
that class, or else the one candidate that is an instance of it. Two different candidates
for one annotation are an error, unless one of them is also the object provided under the
parameter's name, which then wins. A parameter that no candidate type fills receives the
object provided under its name. Parameters with a default may stay unfilled.

String annotations (`from __future__ import annotations`) are resolved with
`typing.get_type_hints`. A hint that cannot be resolved, typically a name imported only
under `TYPE_CHECKING`, is retried against the modules already imported (so
`"aiosqlite.Connection"` resolves once aiosqlite is loaded); until then the parameter is
filled by name only.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from ._errors import PipelineValidationError

__all__ = ["check_injectable", "resolve_arguments", "takes_arguments"]

_ABSENT = object()
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_]\w*)(?=\.)")


class _Parameter(NamedTuple):
    name: str
    classes: tuple[type, ...] | None
    """Classes the annotation accepts; None when it names no usable class."""
    hint: str | None
    """A string annotation that could not be resolved yet."""
    required: bool
    positional_only: bool


_analyses: weakref.WeakKeyDictionary[Callable[..., Any], tuple[_Parameter, ...]] = (
    weakref.WeakKeyDictionary()
)


def check_injectable(
    function: Callable[..., Any], *, names: Mapping[str, type], where: str
) -> list[str]:
    """Return the problems that would stop `function`'s parameters from being injected.

    `names` maps the name of each dependency that will be offered to its type. A required
    parameter can be filled when its annotation accepts one of those types or when its name
    is one of those names. `where` starts each message, for example `"Change 'x' (pkg.mod:Cls)"`.
    """
    parameters = _parameters(function)
    if not parameters:
        return []
    problems: list[str] = []
    label = _function_label(function)
    provided_types = tuple(names.values())

    for parameter in parameters:
        if parameter.positional_only:
            problems.append(
                f"{where}: parameter {parameter.name!r} of {label} is positional-only, so it "
                "cannot be injected; remove the '/' from the signature."
            )
            continue

        if not parameter.required:
            continue

        classes = _current_classes(parameter, function)
        if classes is not None and any(_is_subclass(t, classes) for t in provided_types):
            continue
        if parameter.name in names:
            continue

        problems.append(
            f"{where}: parameter {parameter.name!r} of {label} cannot be injected, because no "
            f"dependency {_wanted(parameter.name, classes)} is provided; pass one in "
            "dependencies= or give the parameter a default value."
        )

    return problems


def takes_arguments(function: Callable[..., Any]) -> bool:
    """Return whether `function` has a parameter that injection could fill."""
    return bool(_parameters(function))


def resolve_arguments(
    function: Callable[..., Any],
    *,
    named: Mapping[str, object],
    typed: Sequence[object],
    where: str | None = None,
) -> dict[str, object]:
    """Return the keyword arguments for calling `function`, chosen from the candidates.

    `typed` objects are matched to annotations, `named` objects to parameter names.
    Raises `PipelineValidationError` when two different `typed` objects fit one annotation
    and the parameter's name selects neither, or when a required parameter stays unfilled.
    `where` names the change in that message.
    """
    label = f"{where}: {_function_label(function)}" if where else _function_label(function)
    arguments: dict[str, object] = {}

    for parameter in _parameters(function):
        classes = _current_classes(parameter, function)
        if classes is not None:
            matches = _matching(classes, typed)
            if len(matches) > 1 and any(m is named.get(parameter.name, _ABSENT) for m in matches):
                matches = [named[parameter.name]]
            if len(matches) > 1:
                raise PipelineValidationError(
                    f"{label} parameter {parameter.name!r} is annotated "
                    f"{_class_names(classes)}, which {_both(matches[0], matches[1])} match; "
                    "pass only one of them, or annotate the parameter with a more specific type."
                )
            if matches:
                arguments[parameter.name] = matches[0]
                continue

        if parameter.name in named:
            arguments[parameter.name] = named[parameter.name]
        elif parameter.required:
            raise PipelineValidationError(
                f"{label} parameter {parameter.name!r} received no value, because no "
                f"dependency {_wanted(parameter.name, classes)} is provided; pass one in "
                "dependencies= or give the parameter a default value."
            )

    return arguments


# -- signature analysis, cached per function -----------------------------------------------


def _parameters(function: Callable[..., Any]) -> tuple[_Parameter, ...]:
    """Return the injectable parameters of `function`, without `self` of a method."""
    target = getattr(function, "__func__", function)
    if _takes_only_self(target, bound=target is not function):
        return ()
    analysis = _analyses.get(target)
    if analysis is None:
        analysis = _analyse(target)
        _analyses[target] = analysis

    bound = target is not function
    if analysis and (bound or analysis[0].name == "self"):
        return analysis[1:]
    return analysis


def _takes_only_self(function: object, *, bound: bool) -> bool:
    """Return True for a plain `def method(self)`, the usual change method, read cheaply."""
    if type(function) is not types.FunctionType or function.__dict__:
        return False  # a wrapper's `__wrapped__` or `__signature__` lives in its __dict__
    code = function.__code__
    return code.co_argcount + code.co_kwonlyargcount == 1 and (
        bound or code.co_varnames[0] == "self"
    )


def _analyse(function: Callable[..., Any]) -> tuple[_Parameter, ...]:
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    parameters: list[_Parameter] = []

    for position, (name, annotation, required, positional_only) in enumerate(
        _declared_parameters(function)
    ):
        # String annotations are resolved one by one, and only for parameters that can be
        # injected: `self` and the return annotation are never resolved.
        if isinstance(annotation, str) and not (position == 0 and name == "self"):
            annotation = _evaluate(annotation, namespace)
        hint = annotation if isinstance(annotation, str) else None
        parameters.append(
            _Parameter(
                name=name,
                classes=None if hint is not None else _classes_of(annotation),
                hint=hint,
                required=required,
                positional_only=positional_only,
            )
        )

    return tuple(parameters)


def _declared_parameters(function: Callable[..., Any]) -> list[tuple[str, object, bool, bool]]:
    """Return (name, annotation, required, positional-only) of each named parameter.

    A plain function is read from its code object, which is several times faster than
    `inspect.signature` and matters when a pipeline has thousands of changes. Anything
    else (a wrapped function, a callable object, a `__signature__` override) goes through
    `inspect.signature`.
    """
    if (
        isinstance(function, types.FunctionType)
        and "__wrapped__" not in function.__dict__
        and "__signature__" not in function.__dict__
    ):
        return _code_parameters(function)
    empty = inspect.Parameter.empty
    return [
        (
            parameter.name,
            parameter.annotation,
            parameter.default is empty,
            parameter.kind is parameter.POSITIONAL_ONLY,
        )
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]


def _code_parameters(function: types.FunctionType) -> list[tuple[str, object, bool, bool]]:
    code = function.__code__
    annotations = function.__annotations__
    positional_count = code.co_argcount
    names = code.co_varnames[: positional_count + code.co_kwonlyargcount]
    first_default = positional_count - len(function.__defaults__ or ())
    keyword_defaults = function.__kwdefaults__ or {}
    return [
        (
            name,
            annotations.get(name, inspect.Parameter.empty),
            index < first_default if index < positional_count else name not in keyword_defaults,
            index < code.co_posonlyargcount,
        )
        for index, name in enumerate(names)
    ]


def _evaluate(hint: str, namespace: Mapping[str, Any]) -> object:
    """Return the object `hint` names in `namespace`, or `hint` itself when it names none."""
    holder = types.SimpleNamespace(__annotations__={"value": hint})
    try:
        return typing.get_type_hints(holder, globalns=dict(namespace))["value"]
    except Exception:  # an unresolvable hint means injection by name
        return hint


def _current_classes(
    parameter: _Parameter, function: Callable[..., Any]
) -> tuple[type, ...] | None:
    """Return the parameter's classes, retrying a string hint against imported modules."""
    if parameter.hint is None:
        return parameter.classes

    target = getattr(function, "__func__", function)
    namespace = dict(getattr(target, "__globals__", {}))
    for module_name in _IDENTIFIER.findall(parameter.hint):
        if module_name not in namespace and module_name in sys.modules:
            namespace[module_name] = sys.modules[module_name]

    resolved = _evaluate(parameter.hint, namespace)
    return None if isinstance(resolved, str) else _classes_of(resolved)


def _classes_of(annotation: object) -> tuple[type, ...] | None:
    """Return the classes an annotation accepts, or None when it names no usable class."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return None

    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _classes_of(supertype)

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _classes_of(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        members: list[type] = []
        for argument in typing.get_args(annotation):
            if argument is type(None):
                continue
            classes = _classes_of(argument)
            if classes is None:
                return None
            members.extend(classes)
        return tuple(members) or None
    if origin is not None:
        return (origin,) if isinstance(origin, type) else None

    return (annotation,) if isinstance(annotation, type) else None


# -- matching ------------------------------------------------------------------------------


def _matching(classes: tuple[type, ...], candidates: Sequence[object]) -> list[object]:
    exact = _distinct([c for c in candidates if type(c) in classes])
    if exact:
        return exact
    return _distinct([c for c in candidates if _is_instance(c, classes)])


def _distinct(objects: list[object]) -> list[object]:
    """Drop repeated objects; the same object offered twice is not ambiguous."""
    seen: set[int] = set()
    unique: list[object] = []
    for candidate in objects:
        if id(candidate) not in seen:
            seen.add(id(candidate))
            unique.append(candidate)
    return unique


def _is_instance(candidate: object, classes: tuple[type, ...]) -> bool:
    try:
        return isinstance(candidate, classes)
    except TypeError:  # a Protocol that is not runtime-checkable
        return False


def _is_subclass(provided: type, classes: tuple[type, ...]) -> bool:
    try:
        return issubclass(provided, classes)
    except TypeError:
        return False


# -- messages ------------------------------------------------------------------------------


def _function_label(function: Callable[..., Any]) -> str:
    target = getattr(function, "__func__", function)
    return f"{getattr(target, '__qualname__', repr(target))}()"


def _class_names(classes: tuple[type, ...]) -> str:
    return " | ".join(getattr(c, "__qualname__", repr(c)) for c in classes)


def _wanted(name: str, classes: tuple[type, ...] | None) -> str:
    if classes is None:
        return f"named {name!r}"
    return f"of type {_class_names(classes)} or named {name!r}"


def _both(first: object, second: object) -> str:
    """Name two candidates by type only, because a repr may contain credentials."""
    first_type, second_type = type(first).__qualname__, type(second).__qualname__
    if first_type == second_type:
        return f"two different {first_type} objects"
    return f"both a {first_type} object and a {second_type} object"
