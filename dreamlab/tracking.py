"""MLflow tracking of dream jobs and sweeps, through `MlflowClient` with explicit run ids.

No fluent "active run" state: a sweep's parent run is created in the launching process and
each job, in whatever process or machine it runs, attaches its child run to it through
`mlflow.parentRunId`. Metrics are written once per octave in one batch, with the octave's
picture, on the run's own writer thread, so logging never waits inside the dream loop.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Mapping, Optional

import numpy as np

from . import internals
from .errors import first_line

# MLflow settings of dreamlab's own commands and jobs, each unless the user set it.
QUIET_DEFAULTS = {
    # No per-file download bars in job logs (resume and reproduce download artifacts).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # A tracking server that stops answering mid-job: MLflow's defaults (7 retries with
    # backoff, 120 s timeouts) wait minutes per call before the job can fail; dreamlab fails
    # within ~30 s.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def quiet_defaults() -> None:
    """Apply QUIET_DEFAULTS to this process's environment, where the user has not set them.

    Called by dreamlab's commands (`python -m dreamlab` and the `python -m dreamlab.X` tools)
    and by each job (dreamlab.app.main, which runs in every launcher's worker), never on
    import: a notebook that imports dreamlab keeps MLflow's own behaviour. Environment
    variables are MLflow's public switch for these (mlflow.environment_variables, read at
    each request); `MlflowClient` takes no timeout or retry arguments, so they cannot be
    passed per call. Process-wide is right where they are set: the process is dreamlab's,
    and a launcher's workers inherit them."""
    for name, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)


# The store when MLFLOW_TRACKING_URI is not set (the schema's default says the same).
DEFAULT_URI = "sqlite:///outputs/mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dreamlab.sweep"
JOB_TAG = "dreamlab.job"
ERROR_TAG = "dreamlab.error"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100  # ... and of params


_READY: set[str] = set()


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri not in _READY:
        _create_store(tracking_uri)
        _READY.add(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _create_store(tracking_uri: str) -> None:
    """Create and migrate a local SQLite store under a file lock, once per process.

    MLflow creates a new store's tables in whichever process opens it first, unprotected:
    several processes starting together on a new file fail with `table ... already exists`
    (8 processes: 7 failed). Under the lock the first one creates it and the others find it
    complete. Writers to an existing store are safe: SQLite's busy timeout queues them."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    db = os.path.abspath(tracking_uri[len("sqlite:///"):])
    os.makedirs(os.path.dirname(db), exist_ok=True)
    with open(db + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            retry(lambda: MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(call, attempts: int = 6, first_wait: float = 0.5):
    """call(), again after a growing pause while SQLite says the database is locked (its 20 s
    busy timeout can still run out when many jobs end at once); other errors at once."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(first_wait * 2 ** attempt)


# What the experiment is, for MLflow's UI: a model-training experiment, not a GenAI app. The
# 3.17 UI reads the kind from its global GenAI / Model training switch instead (stored per
# browser, GenAI by default), so dreamlab's links also carry `workflowType=machine_learning`.
EXPERIMENT_KIND = internals.MLFLOW_EXPERIMENT_KIND
# A saved view of the runs page (MLflow 3.17's "Views", stored as this experiment tag): the
# octave pictures of the selected runs side by side, without the list of every param that
# the image card prints above each picture by default, and the loss curves.
VIEW = "dreamlab"
VIEW_TAG = internals.mlflow_view_tag(VIEW)
UI_QUERY = internals.mlflow_runs_query(VIEW)


def _view_tag_value() -> str:
    section = "dreamlab-pictures"
    state = {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": [], "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "FIRST_10_RUNS",
        "compareRunCharts": [
            {"uuid": "dreamlab-octaves", "type": "IMAGE", "runsCountToCompare": 10, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "imageKeys": ["octave"], "step": 0, "showRunParams": False},
            {"uuid": "dreamlab-loss", "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "displayName": "loss", "metricKey": "loss",
             "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
             "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
             "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True},
        ],
        "compareRunSections": [{"uuid": section, "name": "Dreams", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    return internals.mlflow_view_tag_value("dreamlab: pictures side by side", state, int(time.time() * 1000))


def how_to_open(tracking_uri: str, experiment: str, run_id: Optional[str] = None) -> str:
    """How to see a run (or a sweep's runs) in the UI: the server's page, or the command that
    serves a local store and then the page."""
    if tracking_uri.startswith(("http://", "https://")):
        return ui_link(tracking_uri, experiment, run_id)
    return f"{serve_command(tracking_uri)}, then {ui_link(LOCAL_UI, experiment, run_id)}"


# Where `make ui` and `mlflow ui` serve a local store.
LOCAL_UI = "http://127.0.0.1:5000"


def serve_command(tracking_uri: str) -> str:
    """The command that serves a local store's UI at LOCAL_UI."""
    return "make ui" if tracking_uri == DEFAULT_URI else f"mlflow ui --backend-store-uri {tracking_uri}"


def ui_link(base: str, experiment: str, run_id: Optional[str] = None) -> str:
    """The UI page of a run (or of the experiment's runs, in dreamlab's view)."""
    if run_id:
        return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs?{UI_QUERY}"


def experiment_id(mlflow_client, name: str, tracking_uri: str) -> str:
    """Get or create the experiment; a local SQLite store keeps its artifacts beside it."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND[0] not in found.tags or VIEW_TAG not in found.tags:
            mlflow_client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
            mlflow_client.set_experiment_tag(found.experiment_id, VIEW_TAG, _view_tag_value())
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = os.path.abspath(tracking_uri[len("sqlite:///"):])
        location = os.path.join(os.path.dirname(db), "mlartifacts", name)
    try:
        return mlflow_client.create_experiment(name, artifact_location=location,
                                               tags=dict([EXPERIMENT_KIND, (VIEW_TAG, _view_tag_value())]))
    except MlflowException:  # a parallel job created it first
        return mlflow_client.get_experiment_by_name(name).experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"backbone": {"name": "vgg16"}} -> {"backbone.name": "vgg16"}; lists stay one value."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def environment() -> dict[str, str]:
    """What a reproduction elsewhere needs to compare against."""
    from importlib.metadata import PackageNotFoundError, version

    import keras

    from . import __version__
    from .engine import backends

    try:  # from its metadata: a JAX job does not import TensorFlow for its version
        tensorflow = version("tensorflow")
    except PackageNotFoundError:
        tensorflow = "none"
    return {
        "env.dreamlab": __version__,
        "env.git_commit": _git_commit(),
        "env.python": platform.python_version(),
        "env.tensorflow": tensorflow,
        "env.keras": keras.__version__,
        "env.cpu": _cpu_model(),
        "env.gpu": ",".join(backends.module().gpus()) or "none",
    }


def _git_commit() -> str:
    """dreamlab's own commit when it runs from a git checkout (as `make` installs it)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


FINGERPRINT_TAG = "dreamlab.fingerprint"


def fingerprint(resolved: Mapping[str, Any], recipe: str, image_sha: str, guide_sha: str,
                weights: str) -> str:
    """A hash of exactly the work a job does: the config that shapes the picture, the input
    photo's and the guide's content, and the weights' identity. Which keys shape the
    picture is the schema's `role` of each field (dreamlab.config.work)."""
    import hashlib
    import json

    from .config import work as work_keys

    work = work_keys(resolved)
    blob = json.dumps([work, recipe, image_sha, guide_sha, weights], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def finished_run(tracking_uri: str, experiment: str, fp: str):
    """The newest FINISHED run that did this exact work, or None."""
    mlflow_client = client(tracking_uri)
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow_client.search_runs(
        [exp.experiment_id], f"tags.`{FINGERPRINT_TAG}` = '{fp}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


class JobRun:
    """The MLflow run of one dream job."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 params: Mapping[str, str], tags: Mapping[str, str]):
        from mlflow.entities import Param

        self.client = client(tracking_uri)
        exp = experiment_id(self.client, experiment, tracking_uri)
        self.run_id = retry(lambda: self.client.create_run(exp, run_name=run_name, tags=dict(tags))).info.run_id
        self._pending = []
        self._writer = None
        self._step = 0
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            batch = items[i:i + _PARAM_BATCH]
            retry(lambda: self.client.log_batch(self.run_id, params=batch))

    def log_octave(self, octave: int, image: Optional[np.ndarray], losses: list[float]) -> None:
        """The octave's losses (global step index) and its picture, without waiting."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for loss in losses:
            metrics.append(Metric("loss", float(loss), now, self._step))
            metrics.append(Metric("octave", float(octave), now, self._step))
            self._step += 1
        for i in range(0, len(metrics), _BATCH):
            self._later(self.client.log_batch, self.run_id, metrics=metrics[i:i + _BATCH])
        if image is not None:
            self.log_image(image, "octave", octave)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Single values of the whole run (compile_seconds, steps_per_second), without waiting."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        self._later(self.client.log_batch, self.run_id, metrics=batch)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._later(self.client.log_image, self.run_id, image, key=key, step=step)

    def _later(self, log, *args, **kwargs) -> None:
        """log(...) on the run's own writer thread, retried while the store is locked.

        Not MLflow's `synchronous=False`: its queue belongs to the store, which every
        set_terminated shuts down and joins (0.78 s per job here, more than a whole
        octave's writes take), so each job would pay that at its end."""
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamlab-mlflow")
        self._pending.append(self._writer.submit(retry, lambda: log(*args, **kwargs)))

    def log_artifact(self, path: str, folder: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, path, folder)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            retry(lambda: self.client.set_tag(self.run_id, k, v))

    def end(self, error: Optional[str] = None, status: Optional[str] = None) -> None:
        try:
            self._wait()
        except Exception as exc:  # a write that failed for good still ends the run, FAILED
            error = error or f"logging to MLflow failed: {first_line(exc)}"
            raise
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            end_run(self.client, self.run_id, error, status)

    def _wait(self) -> None:
        for write in self._pending:
            write.result()
        self._pending.clear()


def end_run(mlflow_client, run_id: str, error: Optional[str] = None, status: Optional[str] = None) -> None:
    """FINISHED, or FAILED (or `status`: KILLED for an interruption) with the error as a tag
    and as the run's note in the UI."""
    status = status or ("FAILED" if error is not None else "FINISHED")
    if error is not None:
        retry(lambda: mlflow_client.set_tag(run_id, ERROR_TAG, error[:5000]))
        retry(lambda: mlflow_client.set_tag(run_id, "mlflow.note.content", f"{status.title()}: {error}"))
    retry(lambda: mlflow_client.set_terminated(run_id, status))
