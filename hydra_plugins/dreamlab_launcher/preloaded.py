"""Imported last by the parallel launcher's preloaded server, after TensorFlow and MLflow.

Hydra's plugin scan imports every module under `hydra_plugins` in every process that runs
Hydra, so this module acts only where it finds `parallel_launcher.STORE_ENV`, which is set
in the server's environment alone (`parallel_launcher.preload_env`); anywhere else it does
nothing.

In the server it imports MLflow's SQL store where the sweep's store is a database (the
variable holds the store's URI; `dreamlab.internals.mlflow_store_modules` says which
modules), so that no worker pays them at its first run.

Then it freezes every object imported so far (`gc.freeze`), as Python's documentation advises
right before forking: the garbage collector then never walks them, in the server nor in its
forks, so a fork's first collection does not touch (and copy) the pages it shares with the
server, and the server's own exit at the sweep's end skips a last collection over
TensorFlow's modules (1.9 s of a core after the sweep process ended, measured on 2 cores;
0.55 s frozen). The exit also skips the interpreter's teardown (`_end`).
"""

import atexit
import gc
import importlib
import os
import sys

from hydra_plugins.dreamlab_launcher.parallel_launcher import STORE_ENV


def _end() -> None:
    """The server's exit, once the sweep process has exited (the standard library's forkserver
    then raises SystemExit): at once, without the interpreter's teardown of TensorFlow, Keras
    and MLflow, which took ~0.13 s of a core after the sweep process had exited (2 cores, AMD
    EPYC). That time counts wherever the sweep's output is piped (a CI log, `| tee`): the
    server holds the same pipes, so their reader waits for it. Nothing is lost: at a sweep's
    end every worker has exited by then (the launcher waits for them; after a kill of the
    sweep process they end when their pipes to it break, whatever the server does), and the
    server writes nothing of its own but what is flushed here. Registered last, so it runs
    first of the exit handlers. Its forks never run it: the forkserver ends each with
    os._exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Popped: the forks start from this environment and get their own (slots.enter).
store = os.environ.pop(STORE_ENV, None)
if store is not None:
    if store:
        from dreamlab import internals

        for module in internals.mlflow_store_modules(store):
            importlib.import_module(module)
    gc.freeze()
    atexit.register(_end)
