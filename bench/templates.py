"""Config files with `{{name}}` placeholders, filled per run (ports, paths).

The configs live as files in bench/ (envoy/, haproxy/, nginx/) so that anyone can read
exactly what each system runs with; only addresses and file paths are substituted. A
placeholder without a value, or a value without a placeholder, is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["BENCH_DIR", "render"]

BENCH_DIR = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, out: Path, **values: object) -> Path:
    """Fill bench/`template` with `values` and write it to `out`."""
    text = (BENCH_DIR / template).read_text()
    wanted = set(_PLACEHOLDER.findall(text))
    if wanted != set(values):
        raise KeyError(f"{template}: placeholders {sorted(wanted)}, values {sorted(values)}")
    out.write_text(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text))
    return out
