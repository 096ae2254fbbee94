"""The one exception type for bad input and bad options.

The CLI turns a :class:`GarageError` into a single ``Error: ...`` line on
stderr and exit code 2; anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class GarageError(Exception):
    """Bad input or options. The message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        msg = problem if fix is None else f"{problem}. Fix: {fix}"
        super().__init__(msg.replace("\n", " "))
