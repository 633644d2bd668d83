"""User-facing errors.

Anything the user can fix (a bad flag, a missing file, a mismatched prompt) raises `UserError` with one line
that names the bad value and the fix. The CLI prints that line and exits with status 2; nothing else is
caught, so real bugs keep their traceback.
"""


class UserError(Exception):
    """An error caused by user input; its message is one line: what is wrong and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
