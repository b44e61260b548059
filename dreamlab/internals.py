"""Every private API of another library that dreamlab touches, one small function each, with
the library version range each was written for, checked by tests/test_internals.py (one
canary test per function: when a library release changes the thing, that test fails naming
the function and the range, instead of a user's job failing somewhere deep).

Private here means: not in the library's documented API (a `_name`, a module under `src`,
`python` or `_internal`, a file format its web UI reads, the wording of one of its error
messages). Where a public API does the job, dreamlab uses that instead and nothing is here.

Importing this module imports none of those libraries and changes nothing: each function
imports what it needs when called, and none of them replaces a library's function, adds a
warning filter or logging handler, or sets an environment variable.

Removed, in favour of public APIs (kept here as a record, so that nobody adds them back):
- Hydra's `hydra._internal.utils.run_and_report`, once replaced to fold config errors into
  one line: `python -m dreamlab` now sets Hydra's documented HYDRA_FULL_ERROR=1 for the call
  and reports the exception itself (dreamlab.__main__).
- Keras' `keras.src.utils.file_utils.get_file`, once swapped process-wide to learn which
  weights file an application asked for: the name is read from the failed download's error
  (`keras_download_origin`), and the folder from `keras_download_dir`.
- `KerasTensor._keras_history` and `Layer._outbound_nodes` (which Conv2D feeds which
  BatchNormalization): the public `layer.input` / `layer.output` of the model's layers.
- tqdm's `_TqdmLoggingHandler`, found by class name to copy the console's filters onto it:
  dreamlab.console's own handler writes through the public `tqdm.write`.
"""

from __future__ import annotations

import os
import re
from typing import Optional

# The versions each function was written for and checked against (tests/test_internals.py
# names them when a canary fails).
KERAS = "keras 3.0-3.15"
TENSORFLOW = "tensorflow 2.9-2.21"
MLFLOW_UI = "mlflow 3.17"
MLFLOW_STORE = "mlflow 3.0-3.17"


# --- Keras -----------------------------------------------------------------------------------

def keras_home() -> str:
    """The Keras home folder, the one place dreamlab computes it: $KERAS_HOME, else ~/.keras,
    else /tmp/.keras when the home folder is not writable. Keras' own rule (the private
    `keras.src.backend.config.keras_home()`, fixed when Keras is imported), reproduced so that
    it costs no Keras import (dreamlab.fallback runs before any) and calls nothing private."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return os.path.join(base, ".keras")


def keras_download_dir(subdir: str = "models") -> str:
    """Where `keras.utils.get_file` (and so keras.applications' ImageNet weights, in
    "models") keeps a download: `keras_home()`, or /tmp/.keras when that exists and is not
    writable (Keras' get_file rule)."""
    home = keras_home()
    if os.path.exists(home) and not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, subdir)


_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+): ")


def keras_download_origin(exc: BaseException) -> Optional[str]:
    """The address a failed `keras.utils.get_file` download was fetched from, read from
    Keras' error message ("URL fetch failure on ORIGIN: CODE -- REASON"), or None when the
    error is not such a failure."""
    while exc is not None:
        found = _FETCH_FAILURE.search(str(exc))
        if found:
            return found.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


# --- TensorFlow ------------------------------------------------------------------------------

def tf_disable_op_determinism() -> None:
    """Turn TensorFlow's op determinism off. TensorFlow exports only the switch on
    (`tf.config.experimental.enable_op_determinism`); the switch off and the state live
    beside it, unexported, in `tensorflow.python.framework.config`."""
    from tensorflow.python.framework import config

    if config.is_op_determinism_enabled():
        config.disable_op_determinism()


# --- MLflow's tracking store ----------------------------------------------------------------

def mlflow_store_modules(tracking_uri: str) -> list[str]:
    """What MLflow imports, beyond `import mlflow`, to open the store at `tracking_uri`: its
    SQL store (SQLAlchemy, Alembic) for a database, nothing for a server or files. Private:
    the module's path and MLflow's list of database engines (`mlflow.store.db.db_types`)."""
    from urllib.parse import urlparse

    from mlflow.store.db.db_types import DATABASE_ENGINES

    database = urlparse(tracking_uri).scheme.split("+")[0] in DATABASE_ENGINES
    return ["mlflow.store.tracking.sqlalchemy_store"] if database else []


# --- MLflow's web UI -------------------------------------------------------------------------
# The UI's own conventions, read by its JavaScript (no Python API writes them).

# What the experiment is: a model-training experiment, not a GenAI app.
MLFLOW_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mlflow_view_tag(key: str) -> str:
    """The experiment tag holding a saved view of the runs page (the UI's "Views")."""
    return f"mlflow.sharedViewState.{key}"


def mlflow_runs_query(key: str) -> str:
    """The runs page's query that opens the saved view `key`, charts shown, in the model
    training (not GenAI) workflow."""
    return f"workflowType=machine_learning&compareRunsMode=CHART&viewStateShareKey={key}"


def mlflow_view_tag_value(name: str, state: dict, now_ms: int) -> str:
    """The value of `mlflow_view_tag`: the view's name and times, and its state as the UI
    stores it (JSON, deflated, base64, behind "deflate;")."""
    import base64
    import json
    import zlib

    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": packed})
