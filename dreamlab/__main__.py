import gc
import signal
import sys

from . import console

# Before the app (and through it TensorFlow and MLflow) is imported: -v, and the libraries'
# own quiet switches.
console.take_verbose_flag(sys.argv)
console.quiet_libraries()

from .app import main  # noqa: E402
from .errors import Interrupted  # noqa: E402


def _terminate(signum, frame):
    raise Interrupted()


# SIGTERM (kill, a scheduler's cancel) ends the run in progress KILLED, like Ctrl-C does.
signal.signal(signal.SIGTERM, _terminate)

if __name__ == "__main__":
    # The command owns its process: full garbage collections happen once per job, between
    # jobs (app._freeze_long_lived), instead of whenever TensorFlow's import or a trace
    # crosses the default threshold.
    gc.set_threshold(700, 10, 1_000_000)
    try:
        main()
    finally:
        # The process ends here. Freezing leaves every object to the OS instead of the
        # interpreter's last garbage collection, which walks all of TensorFlow's graphs and
        # Keras' layers: 5 s at the end of a 4-job sweep.
        gc.freeze()
