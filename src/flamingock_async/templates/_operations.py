"""Parsing shared by templates whose `apply` and `rollback` are lists of named operations.

In a pipeline file such an operation is written as a mapping with one key, the operation's
name, whose value contains its fields: `{create_index: {collection: users, keys: {email: 1}}}`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeVar

__all__ = ["Undoable", "tag_operations", "undo_operations"]


class Undoable(Protocol):
    def inverse(self) -> Undoable | None: ...


U = TypeVar("U", bound=Undoable)


def tag_operations(
    value: object, names: Sequence[str], shorthand: Mapping[str, str]
) -> list[dict[str, object]] | None:
    """Turn a list of `{name: fields}` mappings into `{op: name, **fields}` for validation.

    `shorthand` maps an operation name to the field that a bare string stands for, so that
    `{drop_collection: users}` means `{drop_collection: {collection: users}}`. Raises
    `ValueError`, which pydantic reports with the field's location.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("give a list of operations")  # noqa: TRY004
    return [_tag_operation(item, names, shorthand) for item in value]


def _tag_operation(
    item: object, names: Sequence[str], shorthand: Mapping[str, str]
) -> dict[str, object]:
    if not isinstance(item, Mapping) or len(item) != 1:
        raise ValueError(
            f"each operation must be a mapping with one key, one of {', '.join(names)}; "
            f"got {item!r}"
        )
    [(name, fields)] = item.items()
    if name not in names:
        raise ValueError(f"unknown operation {name!r}; use one of {', '.join(names)}")
    if isinstance(fields, str) and name in shorthand:
        fields = {shorthand[name]: fields}
    if not isinstance(fields, Mapping):
        raise ValueError(f"the fields of {name!r} must be a mapping, got {fields!r}")  # noqa: TRY004
    return {"op": name, **fields}


def undo_operations(apply: Sequence[U], rollback: Collection[U] | None) -> tuple[U, ...] | None:
    """Return the operations that undo `apply`, or None when some cannot be undone.

    An explicit `rollback` list wins; otherwise each operation's inverse, newest first.
    """
    if rollback is not None:
        return tuple(rollback)
    inverses = [operation.inverse() for operation in reversed(apply)]
    if any(inverse is None for inverse in inverses):
        return None
    return tuple(inverse for inverse in inverses if inverse is not None)  # type: ignore[misc]
