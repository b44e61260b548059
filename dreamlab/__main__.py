"""`python -m dreamlab`: the command. Everything that shapes the process for the command (the
libraries' quiet switches, SIGTERM, garbage collection, a warning filter, how errors are
reported) happens here, when it runs, not when a dreamlab module is imported.

Errors: Hydra prints composition errors (wrong type, unknown group option) over several lines;
dreamlab's promise is one line and a non-zero exit. Hydra's documented HYDRA_FULL_ERROR=1
makes it re-raise the exception instead of printing it (hydra-core 1.3's run_and_report, the
only place it reads the variable), so the command sets it for the call, catches what comes
out and prints `dreamlab: error: ...`. A user who set HYDRA_FULL_ERROR=1 gets Hydra's full
report, as before. Other errors (bugs) keep their traceback.
"""

import gc
import os
import signal
import sys
import warnings

from . import console, errors
from .errors import Interrupted, interruption, unwritable

FULL_ERROR = "HYDRA_FULL_ERROR"


def one_line(exc: BaseException) -> str:
    """A Hydra or OmegaConf error in one line: its lines joined, without Hydra's hints."""
    text = str(exc) + (f"\n{exc.__cause__}" if exc.__cause__ and str(exc.__cause__) not in str(exc) else "")
    lines = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith(("Config search path", "Set the environment variable")):
            break
        if line and not line.startswith("object_type="):
            lines.append(line)
    out = "; ".join(lines).replace(":;", ":") or type(exc).__name__
    return out + " (python -m dreamlab --help lists the options)"


def _interrupted(exc: BaseException) -> None:
    from . import sweep

    name, code = interruption(exc)
    sweep.interrupted(name)
    print(f"dreamlab: interrupted by {name}: the run in progress ended KILLED, finished runs are kept",
          file=sys.stderr)
    sys.exit(code)


def report_errors(func):
    """func() (the Hydra app), with Hydra's errors raised to here (HYDRA_FULL_ERROR=1 for the
    call) and reported in one line; SystemExit (Hydra's --help, dreamlab's own exits) passes."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    users = os.environ.get(FULL_ERROR)
    full = users == "1"  # what Hydra itself tests
    os.environ[FULL_ERROR] = "1"
    try:
        return func()
    except (HydraException, OmegaConfBaseException) as exc:
        if full:
            raise
        print(f"dreamlab: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, Interrupted) as exc:
        _interrupted(exc)
    except OSError as exc:
        # Hydra creates hydra.run.dir and hydra.sweep.dir itself, before any of dreamlab's
        # code runs; a folder it cannot make or write is a user's fix, not a traceback.
        if full or not exc.filename:
            raise
        print(f"dreamlab: error: {unwritable(exc)}", file=sys.stderr)
        sys.exit(1)
    finally:
        if users is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = users


def run() -> None:
    # Before the app (and through it TensorFlow and MLflow) is imported: -v, and the
    # libraries' own quiet switches.
    console.take_verbose_flag(sys.argv)
    console.quiet_libraries()
    from . import tracking

    tracking.quiet_defaults()
    # conf/hydra/launcher/{submitit_slurm,ray}.yaml shadow the plugins' configs of the same
    # name on purpose, and Hydra 1.3 still types them with the plugins' schemas; its
    # deprecation note about that would be printed on every command that picks them.
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    # SIGTERM (kill, a scheduler's cancel) ends the run in progress KILLED, like Ctrl-C does;
    # both are remembered, so that one swallowed on the way still stops the dream.
    signal.signal(signal.SIGTERM, errors.stop)
    signal.signal(signal.SIGINT, errors.stop)
    from . import sweep
    from .app import main

    # The command owns its process: full garbage collections happen once per job, between
    # jobs (app._freeze_long_lived), instead of whenever TensorFlow's import or a trace
    # crosses the default threshold.
    gc.set_threshold(700, 10, 1_000_000)
    try:
        # A sweep's parent run ends however the sweep ends (dreamlab.sweep.closing).
        report_errors(sweep.closing(main))
    finally:
        # The process ends here. Freezing leaves every object to the OS instead of the
        # interpreter's last garbage collection, which walks all of TensorFlow's graphs and
        # Keras' layers: 5 s at the end of a 4-job sweep.
        gc.freeze()


if __name__ == "__main__":
    run()
