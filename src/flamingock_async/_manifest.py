"""The manifest cache: change descriptors of a pipeline, reused while its files are unchanged.

A start-up with nothing pending should not import every change module. For a package given
by name, `locate` finds its files without importing it, and `scan` lists its `.py` files
with their size and modification time. The cache file stores the validated descriptors
under a signature of that listing, the Python version and the library version. Any change to a
file, an added or removed file, or another interpreter gives another signature, so the
cache is rebuilt.

A pipeline file (YAML) or a list of stages of package names is cached the same way, under a
composite signature: the pipeline file's own path, size and modification time (or the stage
structure), plus the listing of every package or module it names. The cache file of a
pipeline file also stores those names, so that a hit needs neither PyYAML nor the file's
content to check the signature.

The file is JSON (never pickle), written atomically; a cache that cannot be
read or written is skipped with a DEBUG log line, because a read-only container filesystem
must not stop a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._changes import ChangeDescriptor, ChangeKey, Recovery, StagePlan
from ._version import __version__

__all__ = [
    "PackageLocation",
    "ScannedModule",
    "locate",
    "scan",
    "composite_signature",
    "cache_file",
    "cache_path",
    "read",
    "read_document",
    "stages_of",
    "CachedStages",
    "write",
]

logger = logging.getLogger(__name__)

FORMAT = 2
CACHE_DIR_VARIABLE = "FLAMINGOCK_CACHE_DIR"

# Per change, in this order; stage, module and file are stored once per group.
_ROW = ("id", "order", "author", "transactional", "recovery", "run_always", "qualname",
        "description", "template")  # fmt: skip
_FIELDS = tuple(field.name for field in dataclasses.fields(ChangeDescriptor))
_RECOVERIES = {recovery.value: recovery for recovery in Recovery}


class PackageLocation(NamedTuple):
    """Location of a module or package named in `changes=`, found without importing it."""

    name: str
    path: str
    """The package directory, or the file of a single module."""
    is_package: bool


class ScannedModule(NamedTuple):
    """A module file of a scanned package."""

    name: str
    file: str


def locate(name: str) -> PackageLocation | None:
    """Find the directory or file of module `name` without importing it or its parents.

    Returns None when the name cannot be found this way, as for a zip import, a custom
    finder or a missing module. The caller then imports the module instead.
    """
    import importlib.util

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None

    search = _search_path(parts[0], importlib.util)
    if search is None:
        return None
    for index, part in enumerate(parts[1:], start=1):
        parent = sys.modules.get(".".join(parts[:index]))
        if parent is not None:
            search = list(getattr(parent, "__path__", []))
        found = _find_in(part, search)
        if found is None:
            return None
        path, is_package = found
        if index == len(parts) - 1:
            return PackageLocation(name, path, is_package)
        search = [path]

    return _top_level_location(parts[0], search)


def _search_path(top: str, util: Any) -> list[str] | None:
    """Return the directories the top-level package `top` spans, or [file] for a module."""
    module = sys.modules.get(top)
    if module is not None:
        return list(getattr(module, "__path__", [])) or _origin(getattr(module, "__file__", None))

    try:
        spec = util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:
        return list(spec.submodule_search_locations)
    return _origin(spec.origin)


def _origin(file: str | None) -> list[str] | None:
    return [file] if file and file.endswith(".py") and os.path.isfile(file) else None


def _top_level_location(top: str, search: list[str]) -> PackageLocation | None:
    if len(search) == 1 and os.path.isfile(search[0]):
        return PackageLocation(top, search[0], is_package=False)
    if len(search) == 1 and os.path.isdir(search[0]):
        return PackageLocation(top, search[0], is_package=True)
    return None  # a namespace package over several directories: no cache


def _find_in(part: str, search: Sequence[str]) -> tuple[str, bool] | None:
    """Find sub-module `part` as the import system would, for regular and namespace packages."""
    namespace: list[str] = []
    for directory in search:
        package = os.path.join(directory, part)
        if os.path.isfile(os.path.join(package, "__init__.py")):
            return package, True
        module = package + ".py"
        if os.path.isfile(module):
            return module, False
        if os.path.isdir(package):
            namespace.append(package)
    return (namespace[0], True) if len(namespace) == 1 else None


def scan(location: PackageLocation) -> tuple[list[ScannedModule], str]:
    """List the modules of a package by its files and return them with their signature.

    Sub-directories named like Python identifiers are scanned too, with or without an
    `__init__.py`, so that a forgotten `__init__.py` never hides a change.
    """
    modules, stats = _scan_stats(location)
    return modules, _signature(location, stats)


def _scan_stats(
    location: PackageLocation,
) -> tuple[list[ScannedModule], list[tuple[str, int, int]]]:
    modules: list[ScannedModule] = []
    stats: list[tuple[str, int, int]] = []

    if location.is_package:
        _scan_directory(location.path, location.name, modules, stats)
    else:
        status = os.stat(location.path)
        modules.append(ScannedModule(location.name, location.path))
        stats.append((location.path, status.st_size, status.st_mtime_ns))

    return modules, stats


def _scan_directory(
    directory: str,
    package: str,
    modules: list[ScannedModule],
    stats: list[tuple[str, int, int]],
) -> None:
    with os.scandir(directory) as entries:
        ordered = sorted(entries, key=lambda entry: entry.name)

    for entry in ordered:
        if entry.is_file() and entry.name.endswith(".py"):
            stem = entry.name[:-3]
            if stem == "__init__":
                name = package
            elif stem.isidentifier():
                name = f"{package}.{stem}"
            else:
                continue
            status = entry.stat()
            modules.append(ScannedModule(name, entry.path))
            stats.append((entry.path, status.st_size, status.st_mtime_ns))
        elif entry.is_dir() and entry.name.isidentifier() and entry.name != "__pycache__":
            _scan_directory(entry.path, f"{package}.{entry.name}", modules, stats)


def _signature(location: PackageLocation, stats: list[tuple[str, int, int]]) -> str:
    return _signature_text([location.name, location.path, stats])


def composite_signature(key: Any, references: Sequence[str]) -> str | None:
    """Return the signature of a pipeline described by `key` that names `references`.

    `key` is JSON data that identifies the pipeline itself, for a pipeline file its path,
    size and modification time. Each reference, a package or module name, adds the listing
    of its files. Returns None when a reference cannot be located without importing it, in
    which case the pipeline is not cached.
    """
    trees: list[Any] = []
    for name in references:
        location = locate(name)
        if location is None:
            logger.debug("Not caching the change manifest: %s cannot be located", name)
            return None
        try:
            stats = _scan_stats(location)[1]
        except OSError as error:
            logger.debug("Not caching the change manifest: scanning %s failed: %s", name, error)
            return None
        trees.append([name, location.path, location.is_package, stats])
    return _signature_text([key, trees])


def _signature_text(material: list[Any]) -> str:
    """Return the signature: the listing and the versions as compact JSON text.

    The text itself is stored and compared, not a hash of it, so a hit never needs hashlib
    (importing it costs about a millisecond) and no collision can pass for a match.
    """
    versions: list[Any] = [
        FORMAT,
        __version__,
        sys.version,
        sys.implementation.cache_tag,
        _FIELDS,
    ]
    return json.dumps(versions + material, separators=(",", ":"))


def cache_file(location: PackageLocation, cache_dir: str | os.PathLike[str] | None) -> str:
    """Return the cache file of a package: in `cache_dir`, `$FLAMINGOCK_CACHE_DIR`, or its
    `__pycache__` directory, in that order of preference."""
    base = location.path if location.is_package else os.path.dirname(location.path)
    return cache_path(location.name, location.path, base, cache_dir)


def cache_path(
    label: str, identity: str, base: str, cache_dir: str | os.PathLike[str] | None
) -> str:
    """Return the cache file for `label`: in `cache_dir`, `$FLAMINGOCK_CACHE_DIR`, or the
    `__pycache__` directory under `base`, in that order of preference.

    `identity` (a path, or other text that tells pipelines apart) goes into the name as a
    CRC-32, so that two projects with the same package or file name stay apart in a shared
    directory. Two identities with the same CRC share a file, which costs a rebuild when
    they alternate but never a wrong hit, because the signature differs.
    """
    directory = cache_dir if cache_dir is not None else os.environ.get(CACHE_DIR_VARIABLE)
    if not directory:
        directory = os.path.join(base, "__pycache__")

    identity_hash = f"{zlib.crc32(identity.encode()):08x}"
    return os.path.join(directory, f"flamingock-manifest.{label}.{identity_hash}.json")


def read(path: str, signature: str) -> CachedStages | None:
    """Return the stages stored in the cache file, or None when it is missing, stale or corrupt."""
    document = read_document(path)
    return None if document is None else stages_of(document, signature, path)


def read_document(path: str) -> dict[str, Any] | None:
    """Return the content of the cache file, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as stream:
            data = json.loads(stream.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.debug("Ignoring unreadable manifest cache %s: %s", path, error)
        return None
    return data if isinstance(data, dict) else None


def stages_of(document: dict[str, Any], signature: str, path: str) -> CachedStages | None:
    """Return the stages of a cache document, or None when its signature is not `signature`."""
    if document.get("signature") != signature:
        return None

    try:
        return CachedStages(document["stages"])
    except (KeyError, TypeError, ValueError) as error:
        logger.debug("Ignoring corrupt manifest cache %s: %s", path, error)
        return None


class CachedStages:
    """The stages of a cache file: planning keys at once, change descriptors on first use.

    A start with nothing pending needs only the id, `run_always` and recovery of each change.
    Building 10,000 frozen descriptors takes about 20 ms on a 2-core machine, so they are
    built only when a run has work or a command shows the pipeline. The constructor reads
    every row and raises `KeyError`, `TypeError` or `ValueError` for a corrupt file, so
    `build()`, which reads the same fields, cannot fail later.
    """

    def __init__(self, stages: Any) -> None:
        self._stages: list[dict[str, Any]] = list(stages)
        self.keys: list[ChangeKey] = []
        for stage in self._stages:
            if not isinstance(stage["name"], str):
                raise TypeError(f"stage name {stage['name']!r} is not a string")
            for group in stage["groups"]:
                if "module" not in group or "file" not in group:
                    raise KeyError("a group has no module or no file")
                for row in group["changes"]:
                    change_id, _, _, _, recovery, run_always, _, _, _ = row
                    self.keys.append(ChangeKey(change_id, run_always, _RECOVERIES[recovery]))

    def __len__(self) -> int:
        return len(self.keys)

    def build(self) -> list[StagePlan]:
        return [_stage_from_json(stage) for stage in self._stages]


def _stage_from_json(stage: dict[str, Any]) -> StagePlan:
    name = stage["name"]
    changes: list[ChangeDescriptor] = []
    for group in stage["groups"]:
        module, file = group["module"], group["file"]
        for row in group["changes"]:
            change_id, order, author, transactional, recovery, run_always = row[:6]
            qualname, description, template = row[6:]
            changes.append(
                ChangeDescriptor(
                    change_id,
                    order,
                    author,
                    name,
                    transactional,
                    _RECOVERIES[recovery],
                    run_always,
                    module if qualname is None else f"{module}:{qualname}",
                    file,
                    description,
                    template,
                )
            )
    return StagePlan(name, tuple(changes))


def write(
    path: str,
    signature: str,
    stages: Sequence[StagePlan],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the cache file atomically; on failure, log at DEBUG and carry on without it.

    `extra` adds JSON keys that the caller reads back with `read_document`.
    """
    import tempfile

    document = {
        **(extra or {}),
        "format": FORMAT,
        "signature": signature,
        "row": _ROW,
        "stages": [_stage_to_json(stage) for stage in stages],
    }
    directory = os.path.dirname(path)
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".tmp")
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(document, stream, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError as error:
        logger.debug("Not caching the change manifest at %s: %s", path, error)
        if temporary is not None:
            _remove_quietly(temporary)


def _stage_to_json(stage: StagePlan) -> dict[str, Any]:
    groups: list[dict[str, Any]] = []
    for change in stage.changes:
        # A template change's source is "file#id", with no qualified name (stored as null).
        module, colon, name = change.source.partition(":")
        qualname = name if colon else None
        if not groups or groups[-1]["module"] != module or groups[-1]["file"] != change.file:
            groups.append({"module": module, "file": change.file, "changes": []})
        groups[-1]["changes"].append(
            [change.id, change.order, change.author, change.transactional,
             change.recovery.value, change.run_always, qualname, change.description,
             change.template]
        )  # fmt: skip
    return {"name": stage.name, "groups": groups}


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
