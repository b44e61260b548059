"""The one exception type for mistakes a user can fix (bad option, missing file, unknown layer).

The app prints its message as one line and exits non-zero, with no traceback; anything else
is a bug and keeps its traceback.
"""

import signal


class DreamlabError(Exception):
    """A user error: the message names the problem and the fix, on one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unwritable(exc: OSError) -> str:
    """The one line for a job or sweep folder that cannot be made or written."""
    return (f"cannot create or write {exc.filename} ({exc.strerror}): set hydra.run.dir=... (one run) "
            f"or hydra.sweep.dir=... (a sweep) to a writable folder, or fix its permissions")


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so that the run in
    progress ends KILLED and the process exits 143. A BaseException, as KeyboardInterrupt is:
    no `except Exception` on the way swallows it."""

    signal_name = "SIGTERM"
    exit_code = 143


_stopping: list = []  # the signal number the command was asked to stop by


def _raised(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted()


def stop(signum, frame) -> None:
    """The command's SIGINT and SIGTERM handler (dreamlab.__main__): remembers the signal and
    raises it in the main thread, KeyboardInterrupt for SIGINT, Interrupted for SIGTERM."""
    _stopping.append(signum)
    raise _raised(signum)


def check_stop() -> None:
    """Raise again a stop that arrived and was lost on the way: a signal that lands inside a
    library's Python callback (a trace, a logging handler) can be swallowed there, and the
    dream would then run all its steps. The dream loop calls this after every step, so a
    command asked to stop stops within one step. Does nothing without dreamlab's handler
    (dreamlab.dream in a notebook keeps Python's own Ctrl-C)."""
    if _stopping:
        raise _raised(_stopping[0])


def interruption(exc: BaseException):
    """(signal name, exit code) when `exc` is Ctrl-C or SIGTERM, or any error raised after
    the command was asked to stop; else None."""
    if isinstance(exc, Interrupted):
        return exc.signal_name, exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT", 130
    if _stopping:
        # The stop landed inside C code that turned it into another error (seen: a SIGTERM
        # during a trace raised SystemError from TensorFlow's graph code): it is the stop's.
        return interruption(_raised(_stopping[0]))
    return None
