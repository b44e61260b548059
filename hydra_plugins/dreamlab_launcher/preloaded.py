"""Imported last by the parallel launcher's preloaded server, after TensorFlow and MLflow.

It imports MLflow's SQL store where the sweep's store is a database (`parallel_launcher.
STORE_ENV`, set for the server alone; `dreamlab.internals.mlflow_store_modules` says which
modules), so that no worker pays them at its first run.

Then it freezes every object imported so far (`gc.freeze`), as Python's documentation advises
right before forking: the garbage collector then never walks them, in the server nor in its
forks, so a fork's first collection does not touch (and copy) the pages it shares with the
server, and the server's own exit at the sweep's end skips a last collection over
TensorFlow's modules (1.9 s of a core after the sweep process ended, measured on 2 cores;
0.55 s frozen).
"""

import gc
import importlib
import os

from hydra_plugins.dreamlab_launcher.parallel_launcher import STORE_ENV

# Popped: the forks start from this environment and have their own (slots.enter).
store = os.environ.pop(STORE_ENV, None)
if store:
    from dreamlab import internals

    for module in internals.mlflow_store_modules(store):
        importlib.import_module(module)

gc.freeze()
