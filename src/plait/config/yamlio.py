"""YAML documents that remember the line of every key, so errors can point into the file.

PyYAML's composer gives nodes with marks; we record the line of each mapping key and list item
under its path (`("spec", "rules", 0, "matches")`), then let SafeLoader build plain data from the
same node. Multi-document files are read as kubectl does; empty documents are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from plait.config.errors import ConfigError

__all__ = ["Document", "FieldPath", "format_path", "load_documents"]

FieldPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Document:
    """One non-empty YAML document: its plain data and the line of each key and item."""

    data: Any
    index: int  # 0-based position among the file's documents
    several: bool = False  # the file holds more than one document
    lines: dict[FieldPath, int] = field(default_factory=dict, repr=False)

    def line_of(self, path: FieldPath) -> int | None:
        """1-based line of the key or item at `path`, else of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def error(self, filename: str, path: FieldPath, reason: str) -> ConfigError:
        """A ConfigError pointing at `path` in this document."""
        return ConfigError(
            reason,
            file=filename,
            line=self.line_of(path),
            document=self.index if self.several else None,
            field=format_path(path) or None,
        )


def format_path(path: FieldPath) -> str:
    """`("spec", "rules", 0, "weight")` -> `spec.rules[0].weight`; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, str) and part.replace("-", "_").isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def load_documents(text: str, filename: str) -> list[Document]:
    """Parse every non-empty document of a YAML stream; malformed YAML is a ConfigError."""
    try:
        found = _compose(text, filename)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = ", ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(
            f"invalid YAML: {reason}", file=filename, line=mark.line + 1 if mark else None
        ) from None
    except yaml.reader.ReaderError as e:  # a bad character: a position, not a mark
        reason = str(e).splitlines()[0]
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"invalid YAML: {reason}", file=filename, line=line) from None
    several = len(found) > 1
    return [Document(data, index, several, lines) for data, index, lines in found]


def _compose(text: str, filename: str) -> list[tuple[Any, int, dict[FieldPath, int]]]:
    """(data, index, lines) of each non-empty document, in file order."""
    loader = yaml.SafeLoader(text)
    found = []
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node() said a document follows
            recorder = _Lines(loader, filename)
            recorder.lines[()] = node.start_mark.line + 1
            recorder.walk(node, ())
            data = loader.construct_document(node)
            if data is not None:
                found.append((data, index, recorder.lines))
            index += 1
    finally:
        loader.dispose()
    return found


class _Lines:
    """Records the line of every key and item of one document, keyed by path."""

    def __init__(self, loader: yaml.SafeLoader, filename: str) -> None:
        self.loader = loader
        self.filename = filename
        self.lines: dict[FieldPath, int] = {}
        # An aliased node is walked once: recursive aliases and alias bombs stay finite, and
        # later uses of it fall back to the line of the key that holds the alias.
        self.visited: set[int] = set()

    def walk(self, node: yaml.Node, path: FieldPath) -> None:
        if id(node) in self.visited:
            return
        self.visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                self.walk(item, (*path, i))

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue  # merged keys take their parent's line; complex keys fail construction
            key = self.loader.construct_object(key_node)
            where = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:  # PyYAML would keep the last silently; kubectl refuses it
                raise ConfigError(
                    "duplicate key", file=self.filename, line=line, field=format_path(where)
                )
            seen.add(key)
            self.lines[where] = line
            self.walk(value_node, where)
