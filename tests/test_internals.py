"""Canaries for dreamlab.internals: one test per private thing of another library that dreamlab
touches, each failing with the function's name and the version range it was written for.
And the promise that importing dreamlab changes no library's behaviour."""

import glob
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dreamlab import internals

ROOT = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def canary(ok: bool, function: str, written_for: str, dist: str, what: str) -> None:
    """Fail, saying which dreamlab.internals function a library release broke."""
    if not ok:
        pytest.fail(f"dreamlab.internals.{function} was written for {written_for}; {dist} {_version(dist)} "
                    f"changed {what}: update dreamlab/internals.py", pytrace=False)


# --- Keras -----------------------------------------------------------------------------------

_KERAS_PROBE = textwrap.dedent("""
    import json, os, sys
    import keras
    from keras.src.backend import config
    from dreamlab import internals

    out = {"keras_home": config.keras_home(), "ours": internals.keras_home()}
    # A file where dreamlab says Keras keeps downloads: get_file must find it there.
    where = internals.keras_download_dir("models")
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, "dreamlab_canary.h5"), "w") as f:
        f.write("canary")
    origin = "file:///nonexistent/dreamlab-canary/dreamlab_canary.h5"
    try:
        out["cached"] = keras.utils.get_file("dreamlab_canary.h5", origin=origin, cache_subdir="models")
    except Exception as exc:
        out["cached"] = repr(exc)
    out["expected"] = os.path.join(where, "dreamlab_canary.h5")
    # A download that fails: its error must name the address.
    missing = "file:///nonexistent/dreamlab-canary/missing.h5"
    try:
        keras.utils.get_file("missing.h5", origin=missing, cache_subdir="models")
        out["origin"] = "no error"
    except Exception as exc:
        out["origin"] = internals.keras_download_origin(exc)
        out["error"] = str(exc)
    out["missing"] = missing
    print(json.dumps(out))
""")


def _probe(env_changes: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_HOME"}
    env.update(env_changes)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    done = subprocess.run([sys.executable, "-c", _KERAS_PROBE], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def keras_probes(tmp_path_factory):
    """Keras reads KERAS_HOME once, when it is imported: a fresh process for each setting."""
    home = tmp_path_factory.mktemp("home")
    return {"KERAS_HOME": _probe({"KERAS_HOME": str(home / "keras_home")}),
            "~": _probe({"HOME": str(home)})}


def test_keras_home(keras_probes):
    for case, probe in keras_probes.items():
        canary(probe["ours"] == probe["keras_home"], "keras_home", internals.KERAS, "keras",
               f"its home folder ({case}: Keras says {probe['keras_home']}, dreamlab {probe['ours']})")


def test_keras_download_dir(keras_probes):
    for case, probe in keras_probes.items():
        canary(probe["cached"] == probe["expected"], "keras_download_dir", internals.KERAS, "keras",
               f"where get_file keeps downloads ({case}: a file at {probe['expected']} gave {probe['cached']})")


def test_keras_download_origin(keras_probes):
    probe = keras_probes["KERAS_HOME"]
    canary(probe["origin"] == probe["missing"], "keras_download_origin", internals.KERAS, "keras",
           f"the message of a failed get_file download ({probe.get('error', probe['origin'])!r})")


# --- TensorFlow ------------------------------------------------------------------------------

def test_tf_disable_op_determinism():
    import tensorflow as tf

    try:
        from tensorflow.python.framework import config
        present = hasattr(config, "is_op_determinism_enabled") and hasattr(config, "disable_op_determinism")
    except ImportError:
        present = False
    canary(present, "tf_disable_op_determinism", internals.TENSORFLOW, "tensorflow",
           "tensorflow.python.framework.config (no is_op_determinism_enabled / disable_op_determinism)")
    was = config.is_op_determinism_enabled()
    try:
        tf.config.experimental.enable_op_determinism()
        on = config.is_op_determinism_enabled()
        internals.tf_disable_op_determinism()
        off = not config.is_op_determinism_enabled()
    finally:
        if was:
            tf.config.experimental.enable_op_determinism()
        elif config.is_op_determinism_enabled():
            config.disable_op_determinism()
    canary(on and off, "tf_disable_op_determinism", internals.TENSORFLOW, "tensorflow",
           "the op determinism flag (enable_op_determinism no longer sets what disable_op_determinism clears)")


# --- MLflow's tracking store ----------------------------------------------------------------

_STORE_PROBE = textwrap.dedent("""
    import json, sys
    import mlflow
    from dreamlab import internals

    uri = sys.argv[1]
    before = set(sys.modules)
    mlflow.MlflowClient(uri).search_experiments()
    print(json.dumps({"imported": sorted(set(sys.modules) - before),
                      "ours": internals.mlflow_store_modules(uri)}))
""")


def test_mlflow_store_modules(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", _STORE_PROBE, uri], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    canary(bool(probe["ours"]) and set(probe["ours"]) <= set(probe["imported"]), "mlflow_store_modules",
           internals.MLFLOW_STORE, "mlflow", f"the modules that open a sqlite store ({probe['ours']} not "
           f"among those imported)")
    for elsewhere in ("http://127.0.0.1:5000", "databricks", str(tmp_path / "mlruns")):
        assert internals.mlflow_store_modules(elsewhere) == [], elsewhere
    assert internals.mlflow_store_modules("postgresql+psycopg://u@127.0.0.1/db") == probe["ours"]


# --- MLflow's web UI -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_ui() -> str:
    """The JavaScript of the installed MLflow's web UI, where its tag and link conventions live."""
    import mlflow

    files = glob.glob(os.path.join(os.path.dirname(mlflow.__file__), "server", "js", "build", "static", "js", "*.js"))
    if not files:
        pytest.fail(f"mlflow {mlflow.__version__} ships no built UI (mlflow/server/js/build): the "
                    f"MLflow UI canaries cannot run", pytrace=False)
    text = []
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as f:
            text.append(f.read())
    return "\n".join(text)


def _ui_knows(mlflow_ui: str, function: str, *words: str) -> None:
    missing = [w for w in words if w not in mlflow_ui]
    canary(not missing, function, internals.MLFLOW_UI, "mlflow", f"its web UI, which no longer reads {missing}")


def test_mlflow_experiment_kind(mlflow_ui):
    _ui_knows(mlflow_ui, "MLFLOW_EXPERIMENT_KIND", *internals.MLFLOW_EXPERIMENT_KIND)


def test_mlflow_view_tag(mlflow_ui):
    tag = internals.mlflow_view_tag("dreamlab")
    _ui_knows(mlflow_ui, "mlflow_view_tag", tag[: -len("dreamlab")])


def test_mlflow_runs_query(mlflow_ui):
    keys = [part.split("=")[0] for part in internals.mlflow_runs_query("dreamlab").split("&")]
    _ui_knows(mlflow_ui, "mlflow_runs_query", *keys, "machine_learning", '"CHART"')


def test_mlflow_view_tag_value(mlflow_ui):
    import base64
    import zlib

    from dreamlab import tracking

    value = json.loads(tracking._view_tag_value())
    assert value["state"].startswith("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(value["state"][len("deflate;"):])))
    # The view's envelope and the state keys dreamlab sets that matter for what it shows.
    _ui_knows(mlflow_ui, "mlflow_view_tag_value", "deflate;", "createdAt", "updatedAt",
              *(k for k in ("compareRunCharts", "compareRunSections", "showRunParams", "imageKeys",
                            "hideEmptyCharts", "runsHiddenMode") if k in json.dumps(state)))


# --- no private touch outside dreamlab.internals ---------------------------------------------

PRIVATE = re.compile(r"_internal\b|keras\.src\b|tensorflow\.python\b|_keras_history|_outbound_nodes|"
                     r"_inbound_nodes|sharedViewState|_Tqdm|tqdm\.std\b|mlflow\.utils\b|mlflow\.store\b")


def test_no_private_touch_outside_internals():
    found = []
    for path in sorted([*ROOT.glob("dreamlab/*.py"), *ROOT.glob("hydra_plugins/**/*.py")]):
        if path.name == "internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code) and not code.strip().startswith(('"', "'", "f\"")):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "private library APIs belong in dreamlab/internals.py:\n" + "\n".join(found)


# --- importing dreamlab changes nothing --------------------------------------------------------

def dreamlab_modules() -> list[str]:
    locations = importlib.util.find_spec("dreamlab").submodule_search_locations
    return (["dreamlab"] + [f"dreamlab.{m.name}" for m in pkgutil.iter_modules(locations) if not m.ispkg]
            + ["hydra_plugins.dreamlab_launcher.parallel_launcher"])


_IMPORT_PROBE = textwrap.dedent("""
    import gc, importlib, json, logging, os, signal, sys, warnings
    # The libraries first: what their own imports do is theirs.
    import hydra, hydra._internal.utils as hydra_utils, omegaconf, tqdm, tqdm.contrib.logging
    import mlflow, mlflow.tracking, keras, tensorflow
    import keras.src.utils.file_utils as file_utils
    from omegaconf import OmegaConf

    LOGGERS = ["", "hydra", "mlflow", "tensorflow", "absl", "keras", "omegaconf", "matplotlib", "PIL",
               "urllib3", "alembic", "h5py"]

    def state():
        return {
            "warnings.filters": [repr(f) for f in warnings.filters],
            "loggers": {name or "root": [[repr(h) for h in logging.getLogger(name).handlers],
                                         logging.getLogger(name).level, logging.getLogger(name).propagate,
                                         logging.getLogger(name).disabled] for name in LOGGERS},
            "hydra._internal.utils.run_and_report": id(hydra_utils.run_and_report),
            "keras.utils.get_file": id(keras.utils.get_file),
            "keras.src.utils.file_utils.get_file": id(file_utils.get_file),
            "os.environ": dict(os.environ),
            "signals": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGTERM", "SIGINT")},
            "gc.get_threshold": list(gc.get_threshold()),
            "sys.argv": list(sys.argv),
            "sys.excepthook": repr(sys.excepthook),
            "resolvers": {n: OmegaConf.has_resolver(n) for n in ("sample_image", "gpus_per_job")},
        }

    before = state()
    for name in sys.argv[1:]:
        importlib.import_module(name)
    after = state()
    print(json.dumps({"before": before, "after": after,
                      "ours": [OmegaConf.has_resolver("dreamlab.sample_image"),
                               OmegaConf.has_resolver("dreamlab.gpus_per_job")]}))
""")


def test_importing_dreamlab_changes_no_library():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *dreamlab_modules()], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    changed = {key: {"before": out["before"][key], "after": out["after"][key]}
               for key in out["before"] if out["before"][key] != out["after"][key]}
    if "os.environ" in changed:
        before, after = changed["os.environ"]["before"], changed["os.environ"]["after"]
        changed["os.environ"] = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                                 if before.get(k) != after.get(k)}
    assert not changed, f"importing dreamlab changed: {json.dumps(changed, indent=1)}"
    assert out["ours"] == [True, True], "dreamlab's OmegaConf resolvers are dreamlab.sample_image, dreamlab.gpus_per_job"
