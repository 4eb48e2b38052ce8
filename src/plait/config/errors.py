"""Configuration errors that point at the file, line and field a user must fix.

    ValueError
     +-- ConfigError     one problem: FILE:LINE: FIELD: REASON
     +-- ConfigErrors    several independent problems, one line each

Both are ValueErrors, so a command line can catch either with one clause and print `str(e)`.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "ConfigErrors"]


class ConfigError(ValueError):
    """One configuration problem; unknown parts (no line, no field) are left out of the text."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        document: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.document = document  # 0-based index; set only when the file holds several
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        text = ": ".join(p for p in (where, self.field, self.reason) if p)
        # Last, so that FILE:LINE: stays first for editors; humans count documents from 1.
        return text if self.document is None else f"{text} (document {self.document + 1})"


class ConfigErrors(ValueError):
    """Several independent problems, reported together so a user fixes them in one pass."""

    def __init__(self, errors: Iterable[ConfigError | ConfigErrors]) -> None:
        self.errors: list[ConfigError] = []
        for e in errors:
            self.errors.extend(e.errors if isinstance(e, ConfigErrors) else [e])
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    @classmethod
    def raise_if_any(cls, errors: Iterable[ConfigError | ConfigErrors]) -> None:
        """Raise nothing, the lone ConfigError itself, or a ConfigErrors holding them all."""
        found = cls(errors).errors
        if len(found) == 1:
            raise found[0]
        if found:
            raise cls(found)
