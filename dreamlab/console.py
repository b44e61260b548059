"""What a run prints: dreamlab's own lines above the progress bar, the summary and where the
results are. The start-up chatter of TensorFlow, absl, oneDNN, CUDA, matplotlib and MLflow
goes to the job's log file (`<job dir>/dreamlab.log`) instead of the console.

`python -m dreamlab -v` (or DREAMLAB_VERBOSE=1, which parallel workers inherit) prints
everything, as the libraries print it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

VERBOSE_ENV = "DREAMLAB_VERBOSE"
# Loggers whose records stay in the log file (all levels): their start-up and progress
# messages say nothing a dreamlab user acts on; dreamlab reports their failures itself.
CHATTY = ("alembic", "mlflow", "matplotlib", "absl", "tensorflow", "h5py", "urllib3", "PIL", "numexpr")
native_log = logging.getLogger("dreamlab.native")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def take_verbose_flag(argv: list[str]) -> None:
    """`-v` / `--verbose` is dreamlab's, not Hydra's: removed from argv, kept in the
    environment so that every process of a sweep sees it."""
    for flag in ("-v", "--verbose"):
        while flag in argv[1:]:
            argv.remove(flag)
            os.environ[VERBOSE_ENV] = "1"


def quiet_libraries() -> None:
    """Before TensorFlow and MLflow are imported: their own switches, where they have one."""
    if verbose():
        return
    # TensorFlow's C++ logging after absl is initialised (the lines before that are caught
    # by `native_quiet`); MLflow's own handler (database creation and migration lines).
    # MLflow's per-file artifact bars are off wherever dreamlab tracks (dreamlab.tracking).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


class ConsoleFilter(logging.Filter):
    """The console handler's filter (conf/config.yaml, hydra.job_logging): dreamlab's own
    records unless marked `extra={"file_only": True}`, other libraries' warnings and errors
    except the chatty ones; everything with -v. The log file keeps every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        if getattr(record, "file_only", False):
            return False
        if record.name == "dreamlab" or record.name.startswith("dreamlab."):
            return True
        return record.levelno >= logging.WARNING and not record.name.split(".")[0] in CHATTY


@contextlib.contextmanager
def native_quiet(keep: Optional[Path] = None):
    """Catch what C++ libraries write straight to file descriptor 2 while TensorFlow loads
    and finds its devices (absl's "All log messages before absl::InitializeLog()", oneDNN,
    cuda_stub, cuInit), which no Python or environment switch of TensorFlow 2.21 silences;
    it goes to the job's log file. It is written to `keep` (the job folder's native.log) as
    it comes, so that a library that aborts the process leaves its last words there; when
    the block ends, the text moves into the job's log and the file goes."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with (open(keep, "w+b") if keep else tempfile.TemporaryFile(mode="w+b")) as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace").strip()
            if text:
                native_log.info("native start-up output:\n%s", text, extra={"file_only": True})
            if keep:  # now in dreamlab.log; only a process that died leaves native.log behind
                os.unlink(keep)


class _AboveBars(logging.StreamHandler):
    """A console handler that prints through tqdm.write (tqdm's public API), which clears the
    progress bars on screen, prints the line and draws them again."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def above_progress_bars():
    """Console log lines go through tqdm.write while a progress bar is on screen, so they
    print above it instead of tearing through it. What tqdm's logging_redirect_tqdm does, with
    the console handler's level and filters kept, and with nothing of tqdm's but `tqdm.write`:
    the root logger's console handlers are swapped for `_AboveBars` ones for the block."""
    root = logging.getLogger()
    saved = list(root.handlers)
    swapped = []
    for handler in saved:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
            above = _AboveBars(handler.stream)
            above.setLevel(handler.level)
            above.setFormatter(handler.formatter)
            for f in handler.filters:
                above.addFilter(f)
            handler = above
        swapped.append(handler)
    root.handlers = swapped
    try:
        yield
    finally:
        root.handlers = saved
