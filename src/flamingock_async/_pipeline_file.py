"""Reading a pipeline file (YAML): stages of modules, classes and template changes.

```yaml
stages:
  - name: schema
    changes:
      - module: myapp.changes            # every change unit in it, recursively
      - class: myapp.extra:AddIndex      # one class, as module:QualifiedName
      - template: sql                    # a template change, checked by its template
        id: create-users
        order: "0001"
        author: platform
        apply: CREATE TABLE users (id INTEGER PRIMARY KEY)
        rollback: DROP TABLE users
```

PyYAML is imported only here, and this module only when a pipeline file is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["FileItem", "FileStage", "parse_pipeline_file"]

_STAGE_KEYS = {"name", "changes", "description"}


@dataclasses.dataclass(frozen=True, slots=True)
class FileItem:
    """One entry of a stage: `kind` is "module", "class" or "template"."""

    kind: str
    value: str
    line: int
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    """For a template change, every key of the entry except `template`."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileStage:
    """One stage of a pipeline file, with the line it starts on."""

    name: str
    line: int
    items: tuple[FileItem, ...]


def parse_pipeline_file(path: str) -> tuple[list[FileStage], list[str]]:
    """Read the stages of a pipeline file, with every problem found in it."""
    import yaml

    class LineLoader(yaml.SafeLoader):
        """A safe loader that remembers the line of each mapping, for messages."""

    lines: dict[int, int] = {}

    def construct_mapping(loader: LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        mapping = loader.construct_mapping(node)
        lines[id(mapping)] = node.start_mark.line + 1
        return mapping

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)

    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.load(stream, Loader=LineLoader)
    except FileNotFoundError:
        return [], [f"The pipeline file {path} was not found; check the path given as changes=."]
    except OSError as error:
        return [], [f"The pipeline file {path} cannot be read ({error}); check its permissions."]
    except yaml.YAMLError as error:
        return [], [_syntax_problem(path, error)]

    return _Reader(path, lines).stages(document)


def _syntax_problem(path: str, error: Exception) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"{path}, line {mark.line + 1}" if mark is not None else path
    return f"The pipeline file {where} is not valid YAML ({problem}); fix the syntax."


class _Reader:
    def __init__(self, path: str, lines: dict[int, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[str] = []

    def line_of(self, mapping: object) -> int:
        return self.lines.get(id(mapping), 1)

    def at(self, line: int) -> str:
        return f"{self.path}, line {line}"

    def stages(self, document: object) -> tuple[list[FileStage], list[str]]:
        raw_stages = document.get("stages") if isinstance(document, dict) else None
        if not isinstance(raw_stages, list) or not raw_stages:
            self.problems.append(
                f"The pipeline file {self.path} has no 'stages' list; write `stages:` with "
                "one entry per stage, each with a name and a list of changes."
            )
            return [], self.problems

        if isinstance(document, dict):
            for key in document:
                if key != "stages":
                    self.problems.append(
                        f"The pipeline file {self.path} has an unknown top-level key {key!r}; "
                        "remove it, because only 'stages' is read."
                    )

        stages = [stage for raw in raw_stages if (stage := self.stage(raw)) is not None]
        return stages, self.problems

    def stage(self, raw: object) -> FileStage | None:
        if not isinstance(raw, dict):
            self.problems.append(
                f"A stage in {self.path} is {raw!r}, not a mapping; give each stage a name "
                "and a list of changes."
            )
            return None

        line = self.line_of(raw)
        name = raw.get("name")
        changes = raw.get("changes")
        if not isinstance(name, str) or not name.strip():
            self.problems.append(
                f"The stage at {self.at(line)} has no name; add `name:` with a non-empty string."
            )
            return None
        for key in raw:
            if key not in _STAGE_KEYS:
                self.problems.append(
                    f"Stage {name!r} at {self.at(line)} has an unknown key {key!r}; use only "
                    "name, description and changes."
                )
        if not isinstance(changes, list) or not changes:
            self.problems.append(
                f"Stage {name!r} at {self.at(line)} has no list of changes; add `changes:` "
                "with module, class or template entries."
            )
            return None

        items = [item for entry in changes if (item := self.item(entry, name, line)) is not None]
        return FileStage(name, line, tuple(items))

    def item(self, entry: object, stage: str, stage_line: int) -> FileItem | None:
        if not isinstance(entry, dict):
            self.problems.append(
                f"An entry of stage {stage!r} at {self.at(stage_line)} is {entry!r}; write "
                "{module: pkg.mod}, {class: pkg.mod:Class} or a template change."
            )
            return None

        line = self.line_of(entry)
        kinds = [kind for kind in ("module", "class", "template") if kind in entry]
        if len(kinds) != 1:
            self.problems.append(
                f"The entry at {self.at(line)} must have exactly one of the keys module, class "
                f"and template, but has {sorted(map(str, entry))}; split or fix the entry."
            )
            return None

        kind = kinds[0]
        value = entry[kind]
        if not isinstance(value, str) or not value.strip():
            self.problems.append(
                f"The entry at {self.at(line)} has {kind}: {value!r}; give a non-empty name."
            )
            return None

        if kind == "template":
            fields = {key: item for key, item in entry.items() if key != "template"}
            return FileItem(kind, value, line, fields)

        extra = [str(key) for key in entry if key != kind]
        if extra:
            self.problems.append(
                f"The {kind} entry {value!r} at {self.at(line)} has unknown keys {extra}; "
                f"a {kind} entry takes only the {kind} key."
            )
        if kind == "class" and ":" not in value:
            self.problems.append(
                f"The class entry {value!r} at {self.at(line)} is not of the form "
                "module:ClassName; write it as, for example, myapp.changes.c0001:AddIndex."
            )
            return None
        return FileItem(kind, value, line)
