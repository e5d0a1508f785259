"""Errors that carry what a user needs to act: the file, the line and the rule."""

from __future__ import annotations

from pathlib import Path


class DropRejected(Exception):
    """A data drop failed the gate; it is quarantined and nothing is trained on it."""

    def __init__(self, file: Path | str, rule: str, detail: str, line: int | None = None):
        self.file, self.rule, self.detail, self.line = str(file), rule, detail, line
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: drop rejected by rule {rule!r}: {detail}")

    def also(self, note: str) -> None:
        """Add what else went wrong while rejecting (the message is what users read)."""
        self.detail = f"{self.detail}; {note}"
        self.args = (f"{self.args[0]}; {note}",)


class AdapterMismatch(Exception):
    """An adapter's weights do not fit the base model (missing or unexpected keys)."""
