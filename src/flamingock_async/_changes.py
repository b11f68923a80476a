"""Change units: the decorator, their metadata, stages and the loaded pipeline."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "Recovery",
    "ChangeUnitSpec",
    "change_unit",
    "ChangeDescriptor",
    "LoadedChange",
    "Stage",
    "StagePlan",
    "Pipeline",
    "ChangeKey",
    "DEFAULT_STAGE",
    "CHANGE_ATTRIBUTE",
]

CHANGE_ATTRIBUTE = "__flamingock_change__"
DEFAULT_STAGE = "default"

C = TypeVar("C", bound=type)


class Recovery(str, enum.Enum):
    """The next run's choice for a change whose outcome is unknown.

    `MANUAL_INTERVENTION` stops the run until an operator runs `flamingock mark`.
    `ALWAYS_RETRY` applies the change again, so it must be idempotent.
    """

    MANUAL_INTERVENTION = "MANUAL_INTERVENTION"
    ALWAYS_RETRY = "ALWAYS_RETRY"


# The internal records below are NamedTuples rather than frozen dataclasses: a start imports
# this module, and Python 3.11 takes about seven times longer to create a frozen dataclass.
class ChangeUnitSpec(NamedTuple):
    """The arguments given to `@change_unit`, as written; validated when the pipeline loads."""

    id: Any
    order: Any
    author: Any
    transactional: Any = True
    recovery: Any = Recovery.MANUAL_INTERVENTION
    run_always: Any = False
    description: Any = ""


def change_unit(
    *,
    id: str,
    order: str,
    author: str,
    transactional: bool = True,
    recovery: Recovery = Recovery.MANUAL_INTERVENTION,
    run_always: bool = False,
    description: str = "",
) -> Callable[[C], C]:
    """Declare a class with `async def execute(...)` as a change unit.

    `order` is a string of digits, optionally in dot-separated parts (`"0003"`, `"2.10"`),
    compared part by part as numbers. A `transactional` change runs inside a store
    transaction together with its audit entry where the driver supports it. `run_always`
    applies the change on every run. The arguments are checked when the pipeline is loaded,
    so that every problem in every change is reported at once.
    """
    spec = ChangeUnitSpec(id, order, author, transactional, recovery, run_always, description)

    def decorate(cls: C) -> C:
        setattr(cls, CHANGE_ATTRIBUTE, spec)
        return cls

    return decorate


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeDescriptor:
    """A validated change as planning uses it: metadata only, nothing imported.

    `source` is `module:QualName` for a class, or `path#id` for a template change in a
    pipeline file; `file` is the file that declares it.
    """

    id: str
    order: str
    author: str
    stage: str
    transactional: bool
    recovery: Recovery
    run_always: bool
    source: str
    file: str | None = None
    description: str = ""
    template: str | None = None

    @property
    def where(self) -> str:
        """Return where the change is declared, for messages."""
        if self.file and self.template is None:  # a template change's source names its file
            return f"{self.source} ({self.file})"
        return self.source

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["recovery"] = self.recovery.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeDescriptor:
        values = dict(data)
        values["recovery"] = Recovery(values["recovery"])
        return cls(**values)


class LoadedChange(NamedTuple):
    """A change ready to run: its descriptor and the bound coroutine functions.

    `new_instance()` creates a fresh instance of the change class for each run;
    `execute` and `rollback` are looked up on it by name.
    """

    descriptor: ChangeDescriptor
    new_instance: Callable[[], Any]
    has_rollback: bool


class Stage:
    """An ordered group of change units, given by classes or by package and module names."""

    def __init__(self, name: str, changes: str | Sequence[type | str]) -> None:
        self.name = name
        self.changes: tuple[type | str, ...] = (
            (changes,) if isinstance(changes, str) else tuple(changes)
        )

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, {list(self.changes)!r})"


class StagePlan(NamedTuple):
    """A validated stage: its name and its changes in execution order."""

    name: str
    changes: tuple[ChangeDescriptor, ...]


class ChangeKey(NamedTuple):
    """The fields of a change that planning reads: id, `run_always` and recovery."""

    id: str
    run_always: bool
    recovery: Recovery


class Pipeline:
    """The validated, ordered stages of a run, loaded lazily.

    `loader` imports the given change ids and returns them ready to run; a pipeline built
    from a cached manifest imports nothing until a change is pending. A subclass may pass
    None for `stages`, which `_build_stages()` then builds on first use, and None for
    `loader`, overriding `load()` instead.
    """

    def __init__(
        self,
        stages: Sequence[StagePlan] | None,
        loader: Callable[[Sequence[str]], Mapping[str, LoadedChange]] | None,
    ) -> None:
        self._loader = loader
        self._stages = None if stages is None else tuple(stages)
        self._by_id: dict[str, ChangeDescriptor] | None = None

    @property
    def stages(self) -> tuple[StagePlan, ...]:
        if self._stages is None:
            self._stages = tuple(self._build_stages())
        return self._stages

    def _build_stages(self) -> Sequence[StagePlan]:
        """Build the stages that a subclass left to build on first use."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[ChangeDescriptor]:
        for stage in self.stages:
            yield from stage.changes

    def __len__(self) -> int:
        return len(self._index())

    def get(self, change_id: str) -> ChangeDescriptor | None:
        return self._index().get(change_id)

    def _index(self) -> dict[str, ChangeDescriptor]:
        if self._by_id is None:
            self._by_id = {change.id: change for change in self}
        return self._by_id

    def planning_keys(self) -> list[ChangeKey]:
        """Return what planning reads of each change, in execution order."""
        return [ChangeKey(change.id, change.run_always, change.recovery) for change in self]

    def load(self, change_ids: Sequence[str]) -> Mapping[str, LoadedChange]:
        """Import and fully validate the given changes; raises `PipelineValidationError`."""
        if self._loader is None:
            raise NotImplementedError("a pipeline built without a loader overrides load()")
        return self._loader(change_ids)
