"""The one exception type for mistakes a user can fix (bad option, missing file, unknown layer).

The app prints its message as one line and exits non-zero, with no traceback; anything else
is a bug and keeps its traceback.
"""


class DreamlabError(Exception):
    """A user error: the message names the problem and the fix, on one line."""
