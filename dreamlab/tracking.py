"""MLflow tracking of dream jobs and sweeps, through `MlflowClient` with explicit run ids.

No fluent "active run" state: a sweep's parent run is created in the launching process and
each job, in whatever process or machine it runs, attaches its child run to it through
`mlflow.parentRunId`. Metrics are written once per octave in one batch, asynchronously, so
logging never waits inside the dream loop.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Mapping, Optional

import numpy as np

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "dreamlab.sweep"
JOB_TAG = "dreamlab.job"
ERROR_TAG = "dreamlab.error"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100  # ... and of params


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(mlflow_client, name: str, tracking_uri: str) -> str:
    """Get or create the experiment; a local SQLite store keeps its artifacts beside it."""
    from mlflow.exceptions import MlflowException

    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = os.path.abspath(tracking_uri[len("sqlite:///"):])
        location = os.path.join(os.path.dirname(db), "mlartifacts", name)
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
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
    import keras
    import tensorflow as tf

    from . import __version__

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "dreamlab.version": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu": _cpu_model(),
        "gpu": ",".join(gpus) or "none",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class JobRun:
    """The MLflow run of one dream job."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 params: Mapping[str, str], tags: Mapping[str, str]):
        from mlflow.entities import Param

        self.client = client(tracking_uri)
        exp = experiment_id(self.client, experiment, tracking_uri)
        self.run_id = self.client.create_run(exp, run_name=run_name, tags=dict(tags)).info.run_id
        self._pending = []
        self._step = 0
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAM_BATCH])

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
            self._pending.append(self.client.log_batch(
                self.run_id, metrics=metrics[i:i + _BATCH], synchronous=False))
        if image is not None:
            self.log_image(image, "octave", octave)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._pending.append(self.client.log_image(
            self.run_id, image, key=key, step=step, synchronous=False))

    def log_artifact(self, path: str, folder: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, path, folder)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def end(self, error: Optional[str] = None) -> None:
        self._wait()
        if error is not None:
            self.client.set_tag(self.run_id, ERROR_TAG, error[:5000])
            self.client.set_tag(self.run_id, "mlflow.note.content", f"Failed: {error}")
        self.client.set_terminated(self.run_id, "FAILED" if error is not None else "FINISHED")

    def _wait(self) -> None:
        for op in self._pending:
            if op is not None:
                op.wait()
        self._pending.clear()
