"""Loading the pipeline: finding change units, validating them, and the manifest cache.

`changes=` may be a package or module name, a list of classes or names, a list of `Stage`
objects, or the path of a pipeline file (YAML). Every problem of every change is collected
into one `PipelineValidationError` before any store is touched.

For a package or module name, the validated descriptors are cached (see `_manifest`), so
that a later start-up with unchanged files imports no change module at all. The pipeline's
`load(ids)` then imports only the modules that define the changes about to run, validates
them fully and compares them with the cache.

NOTE: the cache trusts that a change's `@change_unit` arguments depend only on the files of
its package. Arguments computed from outside values (environment variables, settings in
another package) are noticed only when that change's module is imported by `load(ids)`;
pass `use_cache=False` for such pipelines.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from . import _manifest
from ._changes import (
    CHANGE_ATTRIBUTE,
    DEFAULT_STAGE,
    ChangeDescriptor,
    ChangeUnitSpec,
    LoadedChange,
    Pipeline,
    Recovery,
    Stage,
    StagePlan,
)
from ._errors import PipelineValidationError
from ._validation import check_methods, check_spec, check_stages, make_name, order_key

if TYPE_CHECKING:
    from ._pipeline_file import FileItem
    from .templates import ChangeTemplate

__all__ = ["load_pipeline", "StaleManifestError", "ChangesArgument"]

logger = logging.getLogger(__name__)

ChangesArgument = Union[str, "os.PathLike[str]", type, Sequence[type | str | Stage]]

_TEMPLATE_COMMON_FIELDS = (
    "id",
    "order",
    "author",
    "transactional",
    "recovery",
    "run_always",
    "description",
)


class StaleManifestError(PipelineValidationError):
    """The manifest cache no longer matched the imported changes; the pipeline was reloaded.

    The pipeline object now contains the fresh stages, so a caller that planned with the old
    ones can plan again with the same pipeline.
    """


def load_pipeline(
    changes: ChangesArgument,
    *,
    template_names: Mapping[str, type[ChangeTemplate]] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> Pipeline:
    """Find, validate and order the change units given by `changes`.

    `template_names` maps template names to classes, taking precedence over the template
    registry. `cache_dir` (default: `$FLAMINGOCK_CACHE_DIR`, else the package's
    `__pycache__`) keeps the manifest cache of a package given by name; `use_cache=False`
    always imports every change module. Raises `PipelineValidationError` with every problem.
    """
    if isinstance(changes, os.PathLike) or (
        isinstance(changes, str) and changes.lower().endswith((".yaml", ".yml"))
    ):
        return _load_pipeline_file(os.fspath(changes), template_names)

    if isinstance(changes, str):
        if use_cache:
            cached = _load_package_with_cache(changes, cache_dir)
            if cached is not None:
                return cached
        return _build([_StageSource(DEFAULT_STAGE, (changes,))], origin=f"changes={changes!r}")

    return _build(_stage_sources(changes), origin="changes=")


# -- sources -------------------------------------------------------------------------------


class _StageSource(NamedTuple):
    name: str
    items: tuple[type | str, ...]


def _stage_sources(changes: object) -> list[_StageSource]:
    if isinstance(changes, type):
        return [_StageSource(DEFAULT_STAGE, (changes,))]
    if not isinstance(changes, (list, tuple)):
        raise PipelineValidationError(
            f"changes={changes!r} is not a package name, a pipeline file, a list of classes "
            "or a list of Stage objects; pass one of those."
        )

    stages = [item for item in changes if isinstance(item, Stage)]
    if not stages:
        return [_StageSource(DEFAULT_STAGE, tuple(changes))]
    if len(stages) != len(changes):
        raise PipelineValidationError(
            "changes= mixes Stage objects with other entries; put every class and module "
            "name inside a Stage, or pass no Stage at all."
        )
    return [_StageSource(stage.name, stage.changes) for stage in stages]


# -- building a pipeline by importing everything -------------------------------------------


class _Collected(NamedTuple):
    descriptor: ChangeDescriptor
    loaded: LoadedChange | None
    """None when the change has problems; its descriptor still takes part in duplicate checks."""


class _Collector:
    """Imports and validates change units stage by stage, keeping every problem."""

    def __init__(self, templates: Mapping[str, type[ChangeTemplate]] | None = None) -> None:
        self.templates = dict(templates or {})
        self.problems: list[str] = []
        self.stages: dict[str, list[_Collected]] = {}
        self._seen: dict[type, str] = {}
        self._checked_templates: set[type] = set()

    # -- entry points

    def add_stage(self, name: object) -> str | None:
        if not isinstance(name, str) or not name.strip():
            self.problems.append(f"A stage has the name {name!r}; give every stage a name.")
            return None
        if name in self.stages:
            self.problems.append(
                f"Stage {name!r} is declared twice; give each stage a distinct name."
            )
            return None
        self.stages[name] = []
        return name

    def add_item(self, item: object, stage: str) -> None:
        if isinstance(item, str):
            self.add_module_tree(item, stage)
        else:
            self.add_class(item, stage, origin=f"stage {stage!r}")

    def add_file_item(self, item: FileItem, stage: str, path: str) -> None:
        where = f"{path}, line {item.line}"
        if item.kind == "module":
            self.add_module_tree(item.value, stage, origin=where)
        elif item.kind == "class":
            self.add_class_by_name(item.value, stage, where)
        else:
            self.add_template(item, stage, path)

    # -- modules

    def add_module_tree(
        self, name: str, stage: str, *, origin: str | None = None
    ) -> list[_manifest.ScannedModule]:
        modules = self.find_modules(name, origin or f"stage {stage!r}")
        for module in modules:
            self.add_module(module.name, module.file, stage)
        return modules

    def find_modules(self, name: str, origin: str) -> list[_manifest.ScannedModule]:
        """Return the modules of a module or package name, without importing them."""
        location = _manifest.locate(name)
        if location is not None:
            return _manifest.scan(location)[0]

        import importlib.util

        not_found = (
            f"Module or package {name!r} given in {origin} was not found; check the name and "
            "that its parent directory is on sys.path."
        )
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            self.problems.append(not_found)
            return []
        except Exception as error:  # a parent package failed to import
            self.problems.append(_import_problem(name, None, error))
            return []
        if spec is None:
            self.problems.append(not_found)
            return []

        if spec.submodule_search_locations is None:
            return [_manifest.ScannedModule(name, spec.origin or "")]
        modules: list[_manifest.ScannedModule] = []
        for directory in spec.submodule_search_locations:
            package = _manifest.PackageLocation(name, directory, is_package=True)
            modules += _manifest.scan(package)[0]
        return modules or [_manifest.ScannedModule(name, spec.origin or "")]

    def add_module(self, name: str, file: str | None, stage: str) -> None:
        module = self.import_module(name, file)
        if module is not None:
            for cls in _change_classes(module):
                self.add_class(cls, stage, origin=name)

    def import_module(self, name: str, file: str | None) -> ModuleType | None:
        try:
            return importlib.import_module(name)
        except Exception as error:
            self.problems.append(_import_problem(name, file, error))
            return None

    # -- classes

    def add_class_by_name(self, reference: str, stage: str, where: str) -> None:
        module_name, _, qualname = reference.partition(":")
        if not self.find_modules(module_name, where):
            return
        module = self.import_module(module_name, None)
        if module is None:
            return

        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if not isinstance(target, type):
            self.problems.append(
                f"The class entry {reference!r} at {where} names nothing in module "
                f"{module_name} ({module.__file__}); check the class name."
            )
            return
        self.add_class(target, stage, origin=where)

    def add_class(self, cls: object, stage: str, *, origin: str) -> None:
        if not isinstance(cls, type):
            self.problems.append(
                f"The entry {cls!r} in {origin} is neither a class nor a module name; pass "
                "classes decorated with @change_unit or package and module names."
            )
            return

        source, file = _source_of(cls)
        location = f"{source} in {file}" if file else source
        spec = cls.__dict__.get(CHANGE_ATTRIBUTE)
        if not isinstance(spec, ChangeUnitSpec):
            self.problems.append(
                f"Class {location} given in {origin} is not a change unit; decorate it with "
                "@change_unit or remove it from the pipeline."
            )
            return
        if cls in self._seen:
            self.problems.append(
                f"Class {location} is listed more than once (in stages {self._seen[cls]!r} "
                f"and {stage!r}); list each change unit once."
            )
            return
        self._seen[cls] = stage

        descriptor, problems = check_spec(
            spec, stage=stage, source=source, file=file, location=location
        )
        problems += check_methods(cls, name=make_name(spec.id, location))
        self.problems += problems
        if descriptor is not None:
            has_rollback = callable(getattr(cls, "rollback", None))
            loaded = None if problems else LoadedChange(descriptor, cls, has_rollback)
            self.stages[stage].append(_Collected(descriptor, loaded))

    # -- templates

    def add_template(self, item: FileItem, stage: str, path: str) -> None:
        fields = dict(item.fields)
        common = {key: fields.pop(key) for key in _TEMPLATE_COMMON_FIELDS if key in fields}
        location = f"{path}, line {item.line}"
        spec = ChangeUnitSpec(
            id=common.get("id"),
            order=common.get("order"),
            author=common.get("author"),
            transactional=common.get("transactional", True),
            recovery=common.get("recovery", Recovery.MANUAL_INTERVENTION),
            run_always=common.get("run_always", False),
            description=common.get("description", ""),
        )
        name = make_name(spec.id, location)
        source = f"{path}#{spec.id}"
        descriptor, problems = check_spec(
            spec, stage=stage, source=source, file=path, location=location, template=item.value
        )
        self.problems += problems

        template = self.find_template(item.value, name)
        config = None
        if template is not None:
            config = self.template_config(template, fields, name, item.value)
        if descriptor is None:
            return
        if template is None or config is None or problems:
            self.stages[stage].append(_Collected(descriptor, None))
            return

        probe = template(config, descriptor)
        factory = functools.partial(template, config, descriptor)
        loaded = LoadedChange(descriptor, factory, probe.has_rollback())
        self.stages[stage].append(_Collected(descriptor, loaded))

    def find_template(self, template_name: str, name: str) -> type[ChangeTemplate] | None:
        template = self.templates.get(template_name)
        if template is None:
            from .templates import get_template

            try:
                template = get_template(template_name)
            except LookupError as error:
                self.problems.append(f"{name} uses an unknown template: {error}")
                return None
            except PipelineValidationError as error:
                self.problems += [f"{name}: {problem}" for problem in error.problems]
                return None

        if template not in self._checked_templates:
            self._checked_templates.add(template)
            location = f"{template.__module__}:{template.__qualname__}"
            problems = check_methods(
                template, name=f"Template {template_name!r} ({location})", needs_no_arguments=False
            )
            self.problems += problems
            if problems:
                return None
        return template

    def template_config(
        self, template: type[ChangeTemplate], fields: dict[str, Any], name: str, template_name: str
    ) -> Any:
        from pydantic import ValidationError

        try:
            return template.validate_config(fields)
        except ValidationError as error:
            for detail in error.errors():
                field = ".".join(str(part) for part in detail["loc"]) or "(entry)"
                self.problems.append(
                    f"{name} has an invalid field {field!r} for the {template_name!r} template: "
                    f"{detail['msg']}; fix it as that template expects."
                )
        except (ValueError, TypeError) as error:
            self.problems.append(
                f"{name} is invalid for the {template_name!r} template: {error}; fix the entry."
            )
        return None

    # -- result

    def stage_plans(self) -> list[StagePlan]:
        plans = []
        for name, collected in self.stages.items():
            ordered = sorted(
                collected, key=lambda c: (order_key(c.descriptor.order), c.descriptor.id)
            )
            plans.append(StagePlan(name, tuple(c.descriptor for c in ordered)))
        return plans

    def loaded(self) -> dict[str, LoadedChange]:
        return {
            c.descriptor.id: c.loaded
            for stage in self.stages.values()
            for c in stage
            if c.loaded is not None
        }

    def finish(self, origin: str) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
        """Return the ordered stages and loaded changes, or raise with every problem."""
        plans = self.stage_plans()
        problems = list(self.problems)
        if any(plan.changes for plan in plans) or not problems:
            problems += check_stages(plans, origin=origin)
        if not problems and len(plans) > 1:
            problems += [
                f"Stage {plan.name!r} contains no change units; add changes or remove the stage."
                for plan in plans
                if not plan.changes
            ]
        if problems:
            raise PipelineValidationError(problems)
        return plans, self.loaded()


def _build(sources: Iterable[_StageSource], *, origin: str) -> Pipeline:
    collector = _Collector()
    for source in sources:
        stage = collector.add_stage(source.name)
        if stage is not None:
            for item in source.items:
                collector.add_item(item, stage)
    stages, loaded = collector.finish(origin)
    return Pipeline(stages, _EagerLoader(loaded))


def _load_pipeline_file(
    path: str, templates: Mapping[str, type[ChangeTemplate]] | None
) -> Pipeline:
    from ._pipeline_file import parse_pipeline_file

    file_stages, problems = parse_pipeline_file(path)
    collector = _Collector(templates)
    collector.problems += problems
    for file_stage in file_stages:
        stage = collector.add_stage(file_stage.name)
        if stage is not None:
            for item in file_stage.items:
                collector.add_file_item(item, stage, path)

    if problems and not file_stages:
        raise PipelineValidationError(problems)
    stages, loaded = collector.finish(f"the pipeline file {path}")
    return Pipeline(stages, _EagerLoader(loaded))


class _EagerLoader:
    """Returns changes that were imported and validated when the pipeline was loaded."""

    def __init__(self, loaded: Mapping[str, LoadedChange]) -> None:
        self._loaded = dict(loaded)

    def __call__(self, change_ids: Sequence[str]) -> dict[str, LoadedChange]:
        unknown = [change_id for change_id in change_ids if change_id not in self._loaded]
        if unknown:
            raise PipelineValidationError(_unknown_ids(unknown))
        return {change_id: self._loaded[change_id] for change_id in change_ids}


# -- the manifest cache ----------------------------------------------------------------------


def _load_package_with_cache(
    name: str, cache_dir: str | os.PathLike[str] | None
) -> Pipeline | None:
    """Return the pipeline of package `name` from its cache, or build it and write the cache.

    Returns None when the package cannot be located without importing it.
    """
    location = _manifest.locate(name)
    if location is None:
        return None

    modules, signature = _manifest.scan(location)
    path = _manifest.cache_file(location, cache_dir)
    stages = _manifest.read(path, signature)
    if stages is not None:
        logger.debug(
            "Loaded %d change descriptors of %s from %s",
            sum(len(s.changes) for s in stages),
            name,
            path,
        )
        return _ManifestPipeline(stages, name=name, cache_dir=cache_dir)

    stages, loaded = _import_package(name, modules)
    _manifest.write(path, signature, stages)
    return Pipeline(stages, _EagerLoader(loaded))


def _import_package(
    name: str, modules: Sequence[_manifest.ScannedModule]
) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
    collector = _Collector()
    collector.add_stage(DEFAULT_STAGE)
    for module in modules:
        collector.add_module(module.name, module.file, DEFAULT_STAGE)
    return collector.finish(f"changes={name!r}")


class _ManifestPipeline(Pipeline):
    """A pipeline built from the manifest cache; `load(ids)` imports only what it needs."""

    def __init__(
        self,
        stages: Sequence[StagePlan],
        *,
        name: str,
        cache_dir: str | os.PathLike[str] | None,
    ) -> None:
        super().__init__(stages, self._load_from_manifest)
        self._name = name
        self._cache_dir = cache_dir
        self._by_module: dict[str, list[ChangeDescriptor]] | None = None

    def _load_from_manifest(self, change_ids: Sequence[str]) -> dict[str, LoadedChange]:
        unknown = [change_id for change_id in change_ids if self.get(change_id) is None]
        if unknown:
            raise PipelineValidationError(_unknown_ids(unknown))

        files = {_module_of(change): change.file for change in map(self._require, change_ids)}
        module_names = list(files)
        collector = _Collector()
        collector.add_stage(DEFAULT_STAGE)
        for module_name, file in files.items():
            collector.add_module(module_name, file, DEFAULT_STAGE)
        if collector.problems:
            raise PipelineValidationError(collector.problems)

        fresh = collector.loaded()
        stale = self._stale_change(module_names, fresh)
        if stale is not None:
            self._reload()
            raise StaleManifestError(
                f"Change {stale.id!r} ({stale.where}) no longer matches the manifest cache "
                "although its files are unchanged, probably because its @change_unit "
                "arguments come from outside the package; the pipeline was reloaded, so "
                "plan the run again."
            )
        return {change_id: fresh[change_id] for change_id in change_ids}

    def _require(self, change_id: str) -> ChangeDescriptor:
        descriptor = self.get(change_id)
        if descriptor is None:
            raise PipelineValidationError(_unknown_ids([change_id]))
        return descriptor

    def _stale_change(
        self, module_names: Sequence[str], fresh: Mapping[str, LoadedChange]
    ) -> ChangeDescriptor | None:
        """Return a cached change that the imported modules contradict, or None."""
        if self._by_module is None:
            self._by_module = {}
            for change in self:
                self._by_module.setdefault(_module_of(change), []).append(change)
        cached = [change for name in module_names for change in self._by_module.get(name, [])]
        imported = [change.descriptor for change in fresh.values()]
        for change in cached:
            if change != (fresh[change.id].descriptor if change.id in fresh else None):
                return change
        cached_ids = {change.id for change in cached}
        for descriptor in imported:
            if descriptor.id not in cached_ids:
                return descriptor
        return None

    def _reload(self) -> None:
        location = _manifest.locate(self._name)
        if location is None:
            raise PipelineValidationError(
                f"Package {self._name!r} can no longer be found; check that it is on sys.path."
            )
        modules, signature = _manifest.scan(location)
        stages, loaded = _import_package(self._name, modules)
        _manifest.write(_manifest.cache_file(location, self._cache_dir), signature, stages)
        Pipeline.__init__(self, stages, _EagerLoader(loaded))


# -- helpers -----------------------------------------------------------------------------------


def _change_classes(module: ModuleType) -> list[type]:
    """Return the change units defined in `module` itself, in definition order.

    A class imported from elsewhere is skipped, so that re-exports are not counted twice.
    """
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and value.__module__ == module.__name__
        and CHANGE_ATTRIBUTE in value.__dict__
    ]


def _source_of(cls: type) -> tuple[str, str | None]:
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return f"{cls.__module__}:{cls.__qualname__}", file


def _module_of(change: ChangeDescriptor) -> str:
    return change.source.partition(":")[0]


def _import_problem(name: str, file: str | None, error: Exception) -> str:
    where = f"{name} ({file})" if file else name
    return (
        f"Module {where} failed to import with {type(error).__name__}: {error}; fix the "
        "module so that it imports."
    )


def _unknown_ids(change_ids: Sequence[str]) -> str:
    return (
        f"The pipeline has no change with the id {', '.join(map(repr, change_ids))}; load only "
        "ids that the pipeline lists."
    )
