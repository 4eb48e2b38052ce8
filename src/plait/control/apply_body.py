"""An apply request's body as resources: multi-document YAML, or JSON (an object, a list of
them, or `{"items": [...]}`). Pure: bytes in, validated resources or ConfigErrors out.

JSON keeps line numbers too: JSON text is (nearly always) YAML, so the YAML loader records the
line of every key; when it cannot (a tab, say), the JSON is still used, without line numbers.
"""

from __future__ import annotations

import json
from typing import Any

from plait.config import resources as r
from plait.config.errors import ConfigError, ConfigErrors
from plait.config.yamlio import Document, load_documents

__all__ = [
    "JSON_TYPES",
    "MEDIA_TYPES",
    "YAML_TYPES",
    "documents",
    "media_type",
    "parse_body",
    "validate_documents",
]

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
JSON_TYPES = ("application/json",)
MEDIA_TYPES = (*YAML_TYPES, *JSON_TYPES)


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; none given means YAML."""
    if not content_type:
        return YAML_TYPES[0]
    return content_type.partition(";")[0].strip().lower()


def parse_body(
    body: bytes, media: str, *, filename: str = "<request>", namespace: str = "default"
) -> list[r.Resource]:
    """The resources of a request body; raises ConfigError(s) naming document, line and field."""
    docs = documents(body, media, filename=filename)
    if not docs:
        raise ConfigError("no resources in the request body", file=filename)
    return validate_documents(docs, filename, namespace)


def documents(body: bytes, media: str, *, filename: str = "<request>") -> list[Document]:
    """The non-empty documents of a body (for JSON: each item of a list is one)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: {e.reason}", file=filename) from None
    try:
        return _json_documents(text, filename) if media in JSON_TYPES else _yaml(text, filename)
    except RecursionError:  # a hostile nesting depth; the parsers recurse per level
        raise ConfigError("the document is nested too deeply", file=filename) from None


def validate_documents(docs: list[Document], filename: str, namespace: str) -> list[r.Resource]:
    """Each document as its kind's model; every document's errors are reported together."""
    found: list[r.Resource] = []
    errors: list[ConfigError | ConfigErrors] = []
    for doc in docs:
        try:
            found.append(r.parse_resource(doc, filename, namespace=namespace))
        except (ConfigError, ConfigErrors) as e:
            errors.append(e)
        except RecursionError:
            errors.append(doc.error(filename, (), "the document is nested too deeply"))
    ConfigErrors.raise_if_any(errors)
    return found


def _yaml(text: str, filename: str) -> list[Document]:
    if text.startswith("\ufeff"):  # a byte order mark, as some editors write
        text = text[1:]
    return load_documents(text, filename)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of repeated keys silently; kubectl refuses them, so do we."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_documents(text: str, filename: str) -> list[Document]:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise ConfigError(f"invalid JSON: duplicate key {e}", file=filename) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON: {e.msg}", file=filename, line=e.lineno) from None
    lines = _json_lines(text, filename, data)
    base: tuple[str | int, ...]
    if isinstance(data, dict) and isinstance(data.get("items"), list) and "kind" not in data:
        items, base = data["items"], ("items",)
    elif isinstance(data, list):
        items, base = data, ()
    else:
        return [Document(data, 0, False, lines)]
    several = len(items) > 1
    return [Document(item, i, several, _under(lines, (*base, i))) for i, item in enumerate(items)]


def _json_lines(text: str, filename: str, data: Any) -> dict[tuple[str | int, ...], int]:
    """The line of each key and item, read through the YAML loader; {} if it cannot."""
    try:
        docs = load_documents(text, filename)
    except (ConfigError, RecursionError):
        return {}
    if len(docs) != 1 or docs[0].data != data:
        return {}
    return docs[0].lines


def _under(
    lines: dict[tuple[str | int, ...], int], prefix: tuple[str | int, ...]
) -> dict[tuple[str | int, ...], int]:
    """The lines below `prefix`, re-rooted at it (an item of a list is a document of its own)."""
    n = len(prefix)
    return {path[n:]: line for path, line in lines.items() if path[:n] == prefix}
