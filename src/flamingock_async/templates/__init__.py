"""Template changes: changes declared as data in a pipeline file instead of as classes.

A pipeline file entry such as

```yaml
- template: sql
  id: create-users
  order: "0001"
  author: platform
  transactional: true            # optional, as for @change_unit
  recovery: MANUAL_INTERVENTION  # optional
  run_always: false              # optional
  description: ...               # optional
  apply: CREATE TABLE users (id INTEGER PRIMARY KEY)
  rollback: DROP TABLE users
```

names a template. The loader checks the common fields (`id`, `order`, `author`,
`transactional`, `recovery`, `run_always`, `description`) like those of `@change_unit`, and
hands every other key to the template.

Writing a template
------------------

Subclass `ChangeTemplate`:

- `config_model` (class attribute): a pydantic 2 model of the template's own fields only,
  preferably with `model_config = ConfigDict(extra="forbid")` so that a misspelled key is an
  error. The loader calls `validate_config(fields)`, which by default is
  `config_model.model_validate(fields)`. Each error of a `pydantic.ValidationError`, and a
  `ValueError` or `TypeError` raised there, becomes one validation problem that names the
  change, the file, the line and the field.
- `__init__(self, config, descriptor)`: keep the validated config and the change's
  `ChangeDescriptor`. It must be cheap and must not connect anywhere, because the loader
  creates one instance to validate it and the runner creates a fresh one for each run.
- `async def execute(self, ...)`: does the work. Its parameters, after `self`, are injected
  like those of any change unit: by type annotation first, then by name (user dependencies,
  the driver's target dependencies, `context`, and for a transactional change the driver's
  transaction handle). Import a store library only inside functions or under
  `TYPE_CHECKING`: a string annotation such as `"aiosqlite.Connection"` resolves once that
  module has been imported anywhere, and until then the parameter is filled by name.
- `async def rollback(self, ...)`: undoes `execute`, injected the same way. Override
  `has_rollback()` to return whether this configured change can roll back (for example only
  when the file gave a `rollback` field); the default is whether the subclass defines
  `rollback`.

Registering a template
----------------------

Templates are found by name, in this order: `register_template(name, cls)` calls; the
built-in modules (`sql`, `mongodb`, `dynamodb`), each of which defines its class as the
module attribute `TEMPLATE`; then the entry-point group `flamingock_async.templates`, whose
entries name a `ChangeTemplate` subclass, for example in a plug-in's `pyproject.toml`:

```toml
[project.entry-points."flamingock_async.templates"]
redis = "my_plugin.templates:RedisTemplate"
```

Nothing is imported until a pipeline file names the template.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .._errors import PipelineValidationError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .._changes import ChangeDescriptor

__all__ = [
    "ChangeTemplate",
    "register_template",
    "get_template",
    "template_names",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "flamingock_async.templates"

_BUILT_IN = {
    "sql": "flamingock_async.templates.sql",
    "mongodb": "flamingock_async.templates.mongodb",
    "dynamodb": "flamingock_async.templates.dynamodb",
}
_registered: dict[str, type[ChangeTemplate]] = {}


class ChangeTemplate:
    """Base class of templates; see the module documentation for the contract."""

    config_model: ClassVar[type[BaseModel]]
    """The pydantic model of the template's own fields in a pipeline file entry."""

    def __init__(self, config: Any, descriptor: ChangeDescriptor) -> None:
        self.config = config
        self.descriptor = descriptor

    @classmethod
    def validate_config(cls, fields: Mapping[str, Any]) -> Any:
        """Validate the template's fields of one entry and return the config object."""
        return cls.config_model.model_validate(dict(fields))

    def has_rollback(self) -> bool:
        """Return whether this change can be rolled back."""
        return callable(getattr(type(self), "rollback", None))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.descriptor.id!r})"


def register_template(name: str, cls: type[ChangeTemplate]) -> None:
    """Make `cls` the template used for `template: name` entries, replacing any other."""
    if not isinstance(cls, type) or not issubclass(cls, ChangeTemplate):
        raise TypeError(
            f"Template {name!r} must be a ChangeTemplate subclass, not {cls!r}; subclass "
            "flamingock_async.templates.ChangeTemplate."
        )
    _registered[name] = cls


def get_template(name: str) -> type[ChangeTemplate]:
    """Return the template class for `name`, importing its module on first use.

    Raises `LookupError` when no template of that name is registered, built in or installed,
    and `PipelineValidationError` when its module fails to import or names no template.
    """
    if name in _registered:
        return _registered[name]

    if name in _BUILT_IN:
        template = _from_module(name, _BUILT_IN[name])
    else:
        template = _from_entry_points(name)

    _registered[name] = template
    return template


def template_names() -> list[str]:
    """Return the names of every template known without importing any of them."""
    from importlib.metadata import entry_points

    installed = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(_registered) | set(_BUILT_IN) | installed)


def _from_module(name: str, module_name: str) -> type[ChangeTemplate]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PipelineValidationError(
            f"Template {name!r} cannot be loaded, because importing {module_name} failed "
            f"({type(error).__name__}: {error}); install what the message names."
        ) from error
    return _checked(name, getattr(module, "TEMPLATE", None), module_name)


def _from_entry_points(name: str) -> type[ChangeTemplate]:
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                loaded = entry.load()
            except Exception as error:
                raise PipelineValidationError(
                    f"Template {name!r} from entry point {entry.value} failed to load "
                    f"({type(error).__name__}: {error}); fix or reinstall the package "
                    "that provides it."
                ) from error
            return _checked(name, loaded, entry.value)

    known = ", ".join(template_names())
    raise LookupError(
        f"Unknown template {name!r}; use one of {known}, or register it with "
        "register_template() or the flamingock_async.templates entry-point group."
    )


def _checked(name: str, candidate: object, origin: str) -> type[ChangeTemplate]:
    if isinstance(candidate, type) and issubclass(candidate, ChangeTemplate):
        return candidate
    raise PipelineValidationError(
        f"Template {name!r} from {origin} is {candidate!r}, not a ChangeTemplate subclass; "
        "define the class as TEMPLATE (or as the entry point) subclassing ChangeTemplate."
    )
