"""What the API commands share: connection flags, error printing, tables, reading -f files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from plait.cli.client import ApiClient, ApiError, ClientError
from plait.cli.settings import SettingsError, load_cli_settings

__all__ = [
    "CommandError",
    "add_connection",
    "api_failure",
    "client",
    "fail",
    "guarded",
    "load_files",
    "loaded",
    "table",
    "validate_files",
]

FILE_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


class CommandError(Exception):
    """A failure the user can fix (a missing file, say); printed as `plait: MESSAGE`."""


def add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help="the control plane's API (default: the CLI config, $PLAIT_SERVER, http://127.0.0.1:15014)",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="the admin token, for writes (default: the CLI config, $PLAIT_TOKEN)",
    )


def client(args: argparse.Namespace) -> ApiClient:
    settings = load_cli_settings(args.server, args.token)
    return ApiClient(settings.server, settings.token)


def fail(message: str) -> int:
    print(f"plait: {message}", file=sys.stderr)
    return 1


def api_failure(e: ClientError) -> int:
    """Print a failed call: the summary, then one `FILE:LINE: FIELD: REASON` line per problem."""
    if not isinstance(e, ApiError) or not e.errors:
        return fail(str(e))
    from plait.config.errors import ConfigError

    if len(e.errors) > 1 or e.errors[0].get("file") is None:
        print(f"plait: {e.message}", file=sys.stderr)
    for item in e.errors:
        error = ConfigError(
            str(item.get("reason", "")),
            file=item.get("file"),
            line=item.get("line"),
            document=item.get("document"),
            field=item.get("field"),
        )
        print(error, file=sys.stderr)
    return 1


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the expected failures (unreachable server, API errors, bad config) into exit 1."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ClientError as e:
            return api_failure(e)
        except (SettingsError, CommandError) as e:
            return fail(str(e))

    wrapper.__doc__ = command.__doc__
    return wrapper


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to fit, three spaces apart, as kubectl prints them."""
    lines = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def load_files(paths: Sequence[str]) -> list[tuple[str, bytes]]:
    """(name, content) of each file named, directories expanded to their sorted config files."""
    found: list[tuple[str, bytes]] = []
    for name in paths:
        if name == STDIN:
            found.append(("<stdin>", sys.stdin.buffer.read()))
            continue
        path = Path(name)
        try:
            files = (
                sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES)
                if path.is_dir()
                else [path]
            )
            found += [(str(file), file.read_bytes()) for file in files]
        except OSError as e:
            why = e.strerror.lower() if e.strerror else str(e)
            raise CommandError(f"{e.filename or name}: {why}") from None
    return found


def validate_files(
    files: Sequence[tuple[str, bytes]], namespace: str
) -> tuple[list[Any], list[Any]]:
    """Validate locally, so errors name the user's FILE:LINE; (documents, resources)."""
    from plait.config.errors import ConfigError, ConfigErrors
    from plait.control.apply_body import JSON_TYPES, YAML_TYPES, documents, validate_documents

    docs: list[Any] = []
    resources: list[Any] = []
    errors: list[ConfigError | ConfigErrors] = []
    for name, content in files:
        media = JSON_TYPES[0] if name.endswith(".json") else YAML_TYPES[0]
        try:
            found = documents(content, media, filename=name)
            resources += validate_documents(found, name, namespace)
            docs += found
        except (ConfigError, ConfigErrors) as e:
            errors.append(e)
    ConfigErrors.raise_if_any(errors)
    return docs, resources


def loaded(args: argparse.Namespace, verb: str) -> tuple[list[Any], list[Any]] | int:
    """The validated documents and resources of `-f`, or the exit status after printing why."""
    from plait.config.errors import ConfigError, ConfigErrors

    try:
        docs, resources = validate_files(load_files(args.filename), args.namespace)
    except (ConfigError, ConfigErrors) as e:
        print(e, file=sys.stderr)
        return 1
    if not resources:
        return fail(f"no objects passed to {verb}")
    return docs, resources
