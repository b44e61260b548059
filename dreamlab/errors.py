"""The one exception type for mistakes a user can fix (bad option, missing file, unknown layer).

The app prints its message as one line and exits non-zero, with no traceback; anything else
is a bug and keeps its traceback.
"""


class DreamlabError(Exception):
    """A user error: the message names the problem and the fix, on one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
