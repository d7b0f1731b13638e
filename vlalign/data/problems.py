"""The two ways a row can fail to become a record, shared by the adapters and the message parser.

A row that is wrong raises :class:`RowProblem` (collected into the validation report with its file,
row, field and fix — never printed and forgotten); a valid row that a documented conversion rule leaves
out on purpose raises :class:`RowSkipped`, so it is counted and listed, not silently dropped.
"""

from __future__ import annotations


class RowProblem(Exception):
    """A bad row: which field, what is wrong, and how to fix it."""

    def __init__(self, field: str, reason: str, fix: str = "") -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.fix = field, reason, fix


class RowSkipped(Exception):
    """A valid row that a documented conversion rule leaves out (reported under ``skipped``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
