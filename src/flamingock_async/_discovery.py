"""Loading the pipeline: finding change units, validating them, and the manifest cache.

`changes=` may be a package or module name, a list of classes or names, a list of `Stage`
objects, or the path of a pipeline file (YAML). Every problem of every change is collected
into one `PipelineValidationError` before any store is touched.

The validated descriptors are cached (see `_manifest`) for a package or module name, a
pipeline file, and a list of stages made only of package and module names. A later start-up
with unchanged files then imports no change module, and for a pipeline file neither PyYAML
nor pydantic. The pipeline's `load(ids)` imports only the modules that define the changes
about to run, validates them fully and compares them with the cache. For a template change it
reads the pipeline file again and validates that change's fields with its template.

NOTE: the cache trusts that a change's `@change_unit` arguments depend only on the files of
its package. Arguments computed from outside values (environment variables, settings in
another package) are noticed only when that change's module is imported by `load(ids)`;
pass `use_cache=False` for such pipelines.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard, Union

from . import _manifest
from ._changes import (
    CHANGE_ATTRIBUTE,
    DEFAULT_STAGE,
    ChangeDescriptor,
    ChangeKey,
    ChangeUnitSpec,
    LoadedChange,
    Pipeline,
    Recovery,
    Stage,
    StagePlan,
)
from ._errors import PipelineValidationError
from ._validation import (
    check_methods,
    check_spec,
    check_stages,
    has_valid_methods,
    make_name,
    order_key,
)

if TYPE_CHECKING:
    from ._pipeline_file import FileItem, FileStage
    from .templates import ChangeTemplate

__all__ = ["load_pipeline", "StaleManifestError", "ChangesArgument"]

logger = logging.getLogger(__name__)

ChangesArgument = Union[str, "os.PathLike[str]", type, Sequence[type | str | Stage]]

# Rebuilds a cached pipeline by importing everything (and rewrites its cache).
_Reload = Callable[[], tuple[list[StagePlan], dict[str, LoadedChange]]]

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
    registry. `cache_dir` keeps the manifest cache of a package given by name, of a pipeline
    file, and of stages made only of package and module names. It defaults to
    `$FLAMINGOCK_CACHE_DIR`, else a `__pycache__` directory next to the pipeline file or in
    the (first) package. `use_cache=False` always imports every change module. Raises
    `PipelineValidationError` with every problem.
    """
    if isinstance(changes, os.PathLike) or (
        isinstance(changes, str) and changes.lower().endswith((".yaml", ".yml"))
    ):
        path = os.fspath(changes)
        if use_cache:
            return _load_file_with_cache(path, template_names, cache_dir)
        return Pipeline(*_eager(_load_pipeline_file(path, template_names)))

    if isinstance(changes, str):
        if use_cache:
            cached = _load_package_with_cache(changes, cache_dir)
            if cached is not None:
                return cached
        return _build([_StageSource(DEFAULT_STAGE, (changes,))], origin=f"changes={changes!r}")

    sources = _stage_sources(changes)
    if use_cache and _names_only(sources):
        cached = _load_stages_with_cache(sources, cache_dir)
        if cached is not None:
            return cached
    return _build(sources, origin="changes=")


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
        self.class_entries: list[str] = []
        """The sources of the changes added by `class:` entries, which the cache stores."""

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
        if self.find_modules(reference.partition(":")[0], where):
            self.add_named_class(reference, stage, where)

    def add_named_class(self, reference: str, stage: str, where: str) -> None:
        """Import the module of `module:QualifiedName` and add the class it names."""
        module_name, _, qualname = reference.partition(":")
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
        self.class_entries.append(_source_of(target)[0])

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
        if not has_valid_methods(cls):
            problems += check_methods(cls, name=make_name(spec.id, location))
        self.problems += problems
        if descriptor is not None:
            has_rollback = callable(getattr(cls, "rollback", None))
            loaded = None if problems else LoadedChange(descriptor, cls, has_rollback)
            self.stages[stage].append(_Collected(descriptor, loaded))

    # -- templates

    def add_template(self, item: FileItem, stage: str, path: str) -> None:
        descriptor, problems = _template_descriptor(item, stage, path)
        self.problems += problems
        fields = {
            key: value for key, value in item.fields.items() if key not in _TEMPLATE_COMMON_FIELDS
        }
        name = make_name(item.fields.get("id"), f"{path}, line {item.line}")

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
                if detail["type"] == "missing":
                    problem = (
                        f"{name} lacks the field {field!r}, which the {template_name!r} "
                        "template requires; add it."
                    )
                else:
                    problem = (
                        f"{name} has an invalid field {field!r} for the {template_name!r} "
                        f"template: {detail['msg']}; fix it as that template expects."
                    )
                self.problems.append(problem)
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
    return Pipeline(*_eager(_build_parts(sources, origin=origin)))


def _build_parts(
    sources: Iterable[_StageSource], *, origin: str
) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
    collector = _Collector()
    for source in sources:
        stage = collector.add_stage(source.name)
        if stage is not None:
            for item in source.items:
                collector.add_item(item, stage)
    return collector.finish(origin)


def _template_descriptor(
    item: FileItem, stage: str, path: str
) -> tuple[ChangeDescriptor | None, list[str]]:
    """Check the common fields of a template change and build its descriptor."""
    common = {key: item.fields[key] for key in _TEMPLATE_COMMON_FIELDS if key in item.fields}
    spec = ChangeUnitSpec(
        id=common.get("id"),
        order=common.get("order"),
        author=common.get("author"),
        transactional=common.get("transactional", True),
        recovery=common.get("recovery", Recovery.MANUAL_INTERVENTION),
        run_always=common.get("run_always", False),
        description=common.get("description", ""),
    )
    return check_spec(
        spec,
        stage=stage,
        source=f"{path}#{spec.id}",
        file=path,
        location=f"{path}, line {item.line}",
        template=item.value,
    )


def _eager(
    built: tuple[list[StagePlan], dict[str, LoadedChange]],
) -> tuple[list[StagePlan], _EagerLoader]:
    stages, loaded = built
    return stages, _EagerLoader(loaded)


def _load_pipeline_file(
    path: str,
    templates: Mapping[str, type[ChangeTemplate]] | None,
    cache: _FileCache | None = None,
) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
    """Read, import and validate a pipeline file; with `cache`, write its manifest cache."""
    from ._pipeline_file import parse_pipeline_file

    file_stages, problems = parse_pipeline_file(path)
    references = _file_references(file_stages)
    # Listing the files before importing them means that an edit made meanwhile is seen
    # as a change by the next start-up.
    signature = None
    if cache is not None and not problems:
        signature = _manifest.composite_signature(cache.key, references)

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
    if cache is not None and signature is not None:
        extra = {"references": references, "class_entries": collector.class_entries}
        _manifest.write(cache.path, signature, stages, extra)
    return stages, loaded


def _file_references(file_stages: Sequence[FileStage]) -> list[str]:
    """Return the package and module names of the module and class entries, in file order."""
    names: dict[str, None] = {}
    for file_stage in file_stages:
        for item in file_stage.items:
            if item.kind == "module":
                names[item.value] = None
            elif item.kind == "class":
                names[item.value.partition(":")[0]] = None
    return list(names)


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
    cached = _manifest.read(path, signature)
    if cached is not None:
        _log_hit(cached, name, path)
        reload = functools.partial(_reload_package, name, cache_dir)
        return _ManifestPipeline(cached, reload=reload)

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


def _reload_package(
    name: str, cache_dir: str | os.PathLike[str] | None
) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
    location = _manifest.locate(name)
    if location is None:
        raise PipelineValidationError(
            f"Package {name!r} can no longer be found; check that it is on sys.path."
        )
    modules, signature = _manifest.scan(location)
    stages, loaded = _import_package(name, modules)
    _manifest.write(_manifest.cache_file(location, cache_dir), signature, stages)
    return stages, loaded


def _log_hit(stages: _manifest.CachedStages, name: str, path: str) -> None:
    logger.debug("Loaded %d change descriptors of %s from %s", len(stages), name, path)


# -- the manifest cache of a pipeline file -------------------------------------------------------


class _FileCache(NamedTuple):
    path: str
    """The cache file."""
    key: list[Any]
    """The pipeline file's path, size and modification time, taken before reading it."""


def _file_cache(path: str, cache_dir: str | os.PathLike[str] | None) -> _FileCache | None:
    try:
        status = os.stat(path)
    except OSError:
        return None  # reading the file reports the problem
    absolute = os.path.abspath(path)
    key: list[Any] = ["pipeline file", path, absolute, status.st_size, status.st_mtime_ns]
    base = os.path.dirname(absolute)
    return _FileCache(_manifest.cache_path(os.path.basename(path), absolute, base, cache_dir), key)


def _load_file_with_cache(
    path: str,
    templates: Mapping[str, type[ChangeTemplate]] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> Pipeline:
    """Return the pipeline of a pipeline file from its cache, or read it and write the cache.

    The cache file stores the package and module names that the pipeline file refers to, so
    that the signature is checked without parsing the YAML.
    """
    cache = _file_cache(path, cache_dir)
    if cache is None:
        return Pipeline(*_eager(_load_pipeline_file(path, templates)))

    document = _manifest.read_document(cache.path) or {}
    references = document.get("references")
    class_entries = document.get("class_entries")
    if _is_strings(references) and _is_strings(class_entries):
        signature = _manifest.composite_signature(cache.key, references)
        stages = None if signature is None else _manifest.stages_of(document, signature, cache.path)
        if stages is not None:
            _log_hit(stages, path, cache.path)
            return _ManifestPipeline(
                stages,
                reload=lambda: _load_pipeline_file(path, templates, _file_cache(path, cache_dir)),
                templates=templates,
                pipeline_file=path,
                class_entries=class_entries,
            )

    return Pipeline(*_eager(_load_pipeline_file(path, templates, cache)))


def _is_strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- the manifest cache of stages of package names ----------------------------------------------


def _names_only(sources: Sequence[_StageSource]) -> bool:
    return bool(sources) and all(
        isinstance(source.name, str) and source.items and _is_strings(list(source.items))
        for source in sources
    )


def _load_stages_with_cache(
    sources: Sequence[_StageSource], cache_dir: str | os.PathLike[str] | None
) -> Pipeline | None:
    """Return the pipeline of stages of package names from the cache, or build and cache it.

    Returns None when a package cannot be located without importing it.
    """
    cache = _stages_cache(sources, cache_dir)
    if cache is None:
        return None

    path, signature = cache
    stages = _manifest.read(path, signature)
    if stages is not None:
        _log_hit(stages, "changes=", path)
        return _ManifestPipeline(stages, reload=lambda: _build_stages(sources, cache_dir))
    return Pipeline(*_eager(_build_stages(sources, cache_dir, (path, signature))))


def _stages_cache(
    sources: Sequence[_StageSource], cache_dir: str | os.PathLike[str] | None
) -> tuple[str, str] | None:
    """Return the cache file and the signature of stages of package names, or None."""
    references = list(dict.fromkeys(str(item) for source in sources for item in source.items))
    first = _manifest.locate(references[0])
    if first is None:
        return None
    key = ["stages", [[source.name, list(source.items)] for source in sources]]
    signature = _manifest.composite_signature(key, references)
    if signature is None:
        return None

    base = first.path if first.is_package else os.path.dirname(first.path)
    identity = json.dumps([key, first.path])
    return _manifest.cache_path(f"{first.name}.stages", identity, base, cache_dir), signature


def _build_stages(
    sources: Sequence[_StageSource],
    cache_dir: str | os.PathLike[str] | None,
    cache: tuple[str, str] | None = None,
) -> tuple[list[StagePlan], dict[str, LoadedChange]]:
    """Import and validate the stages, then write their cache (listed before the import)."""
    if cache is None:
        cache = _stages_cache(sources, cache_dir)
    stages, loaded = _build_parts(sources, origin="changes=")
    if cache is not None:
        _manifest.write(cache[0], cache[1], stages)
    return stages, loaded


# -- the pipeline built from a manifest cache ----------------------------------------------------


class _ManifestPipeline(Pipeline):
    """A pipeline built from the manifest cache; `load(ids)` imports only what it needs.

    Changes from `module:` entries and package names are checked module by module: every
    change unit of an imported module must match the cache. Changes from `class:` entries
    are checked one by one. Template changes are checked by reading the pipeline file again:
    the common fields of every template change must match the cache, and the template's own
    fields are validated for the changes requested.
    """

    def __init__(
        self,
        cached: _manifest.CachedStages,
        *,
        reload: _Reload,
        templates: Mapping[str, type[ChangeTemplate]] | None = None,
        pipeline_file: str | None = None,
        class_entries: Iterable[str] = (),
    ) -> None:
        # Stages are built from `cached` on first use, unless a reload comes first. The
        # loader is `load()` below, not a bound method stored on the object, because that
        # would make a reference cycle, left for the garbage collector at exit.
        super().__init__(None, None)
        self._cached = cached
        self._reload_all = reload
        self._templates = templates
        self._pipeline_file = pipeline_file
        self._class_entries = frozenset(class_entries)
        self._by_module: dict[str, list[ChangeDescriptor]] | None = None

    def _build_stages(self) -> Sequence[StagePlan]:
        return self._cached.build()

    def load(self, change_ids: Sequence[str]) -> Mapping[str, LoadedChange]:
        if self._loader is None:  # not reloaded yet
            return self._load_from_manifest(change_ids)
        return super().load(change_ids)

    def __len__(self) -> int:
        return len(self._cached) if self._stages is None else super().__len__()

    def planning_keys(self) -> list[ChangeKey]:
        return list(self._cached.keys) if self._stages is None else super().planning_keys()

    def _load_from_manifest(self, change_ids: Sequence[str]) -> dict[str, LoadedChange]:
        unknown = [change_id for change_id in change_ids if self.get(change_id) is None]
        if unknown:
            raise PipelineValidationError(_unknown_ids(unknown))

        needed = [self._require(change_id) for change_id in change_ids]
        collector = _Collector(self._templates)
        collector.stages = {stage.name: [] for stage in self.stages}
        expected: dict[str, ChangeDescriptor] = {}
        modules: set[str] = set()
        for change in needed:
            if change.template is not None:
                continue
            if change.source in self._class_entries:
                where = f"the pipeline file {self._pipeline_file}"
                collector.add_named_class(change.source, change.stage, where)
                expected[change.id] = change
                continue
            module = _module_of(change)
            if module not in modules:
                modules.add(module)
                collector.add_module(module, change.file, change.stage)
                expected.update((cached.id, cached) for cached in self._module_changes(module))

        templates: list[ChangeDescriptor | None] = []
        template_ids = {change.id for change in needed if change.template is not None}
        if template_ids:
            templates = self._read_templates(collector, template_ids)
            expected.update((change.id, change) for change in self if change.template is not None)
        if collector.problems:
            raise PipelineValidationError(collector.problems)

        fresh = collector.loaded()
        stale = _stale_change(expected, [c.descriptor for c in fresh.values()] + templates)
        if stale is not None:
            Pipeline.__init__(self, *_eager(self._reload_all()))
            cause = (
                "an edit kept the pipeline file's size and modification time"
                if stale.template is not None
                else "its @change_unit arguments come from outside the package"
            )
            raise StaleManifestError(
                f"Change {stale.id!r} ({stale.where}) no longer matches the manifest cache "
                f"although its files are unchanged, probably because {cause}; the pipeline "
                "was reloaded, so plan the run again."
            )
        return {change_id: fresh[change_id] for change_id in change_ids}

    def _require(self, change_id: str) -> ChangeDescriptor:
        descriptor = self.get(change_id)
        if descriptor is None:
            raise PipelineValidationError(_unknown_ids([change_id]))
        return descriptor

    def _module_changes(self, module: str) -> list[ChangeDescriptor]:
        """Return the cached changes found by importing `module` (not by `class:` entries)."""
        if self._by_module is None:
            self._by_module = {}
            for change in self:
                if change.template is None and change.source not in self._class_entries:
                    self._by_module.setdefault(_module_of(change), []).append(change)
        return self._by_module.get(module, [])

    def _read_templates(
        self, collector: _Collector, change_ids: set[str]
    ) -> list[ChangeDescriptor | None]:
        """Read the pipeline file again and add the template changes `change_ids` to
        `collector`, fully validated; return the descriptors of the other template changes."""
        from ._pipeline_file import parse_pipeline_file

        path = self._pipeline_file
        if path is None:
            raise PipelineValidationError(_unknown_ids(sorted(change_ids)))
        file_stages, problems = parse_pipeline_file(path)
        if problems:
            raise PipelineValidationError(problems)

        others: list[ChangeDescriptor | None] = []
        for file_stage in file_stages:
            collector.stages.setdefault(file_stage.name, [])
            for item in file_stage.items:
                if item.kind != "template":
                    continue
                if item.fields.get("id") in change_ids:
                    collector.add_template(item, file_stage.name, path)
                else:
                    others.append(_template_descriptor(item, file_stage.name, path)[0])
        return others


def _stale_change(
    expected: Mapping[str, ChangeDescriptor], fresh: Sequence[ChangeDescriptor | None]
) -> ChangeDescriptor | None:
    """Return a cached change that the fresh descriptors contradict, or None.

    A None in `fresh` is a change whose common fields became invalid, which also makes the
    cache stale: the reload then reports the problem.
    """
    seen: dict[str, ChangeDescriptor] = {}
    for descriptor in fresh:
        if descriptor is None:
            return next(iter(expected.values()), None)
        if descriptor.id in seen or expected.get(descriptor.id) != descriptor:
            return expected.get(descriptor.id, descriptor)
        seen[descriptor.id] = descriptor
    for change in expected.values():
        if change.id not in seen:
            return change
    return None


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
