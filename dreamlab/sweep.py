"""The parent MLflow run of a Hydra multirun, as a Hydra callback.

`on_multirun_start` runs once in the launching process, before any job: it creates the
parent run and writes its id, with the swept keys, to `<sweep dir>/mlflow_sweep.json`, where
every job finds it, whichever launcher runs the jobs (in process, joblib, submitit, Ray),
since they all share the sweep dir. `on_multirun_end` counts the children, closes the parent
and prints a summary; a sweep with a failed job exits non-zero.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SWEEP_FILE = "mlflow_sweep.json"
PARENT_ENV = "DREAMLAB_PARENT_RUN_ID"


def swept_keys(overrides: list[str], sweeper_params: Optional[dict]) -> list[str]:
    """The config keys a multirun varies: command-line sweeps and `hydra.sweeper.params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)
            if o.is_sweep_override()]
    for key in sweeper_params or {}:
        if key not in keys:
            keys.append(key)
    return keys


def read_sweep_file(sweep_dir: str) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if path.is_file():
        return json.loads(path.read_text())
    parent = os.environ.get(PARENT_ENV)
    return {"parent_run_id": parent, "swept": []} if parent else {}


class MlflowSweep(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.mlflow.enabled:
            return
        from . import tracking

        hydra_cfg = config.hydra
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        overrides = list(hydra_cfg.overrides.task)
        params = hydra_cfg.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=True) if params else {}
        keys = swept_keys(overrides, params)
        name = OmegaConf.select(config, "hydra.runtime.choices.sweep", default=None)
        uri, experiment = config.mlflow.tracking_uri, config.mlflow.experiment
        client = tracking.client(uri)
        exp = tracking.experiment_id(client, experiment, uri)
        command = "python -m dreamlab " + " ".join(sys.argv[1:])
        run = client.create_run(exp, run_name=f"sweep {name or sweep_dir.name}", tags={
            tracking.SWEEP_TAG: str(sweep_dir.resolve()),
            "dreamlab.role": "sweep",
        })
        run_id = run.info.run_id
        swept = [o for o in overrides if any(o.lstrip("+~").startswith(k + "=") for k in keys)]
        swept += [f"{k}={v}" for k, v in params.items() if not any(s.startswith(k + "=") for s in swept)]
        client.log_param(run_id, "command", command)
        client.log_param(run_id, "swept", " ".join(swept))
        client.log_param(run_id, "sweep", name or "command line")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(
            {"parent_run_id": run_id, "swept": keys, "experiment_id": exp}))
        os.environ[PARENT_ENV] = run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.mlflow.enabled:
            return
        from . import tracking

        info = read_sweep_file(str(config.hydra.sweep.dir))
        if not info.get("parent_run_id"):
            return
        os.environ.pop(PARENT_ENV, None)
        client = tracking.client(config.mlflow.tracking_uri)
        parent = info["parent_run_id"]
        children = client.search_runs(
            [info["experiment_id"]], f"tags.`{tracking.PARENT_TAG}` = '{parent}'",
            max_results=10000, order_by=["attributes.start_time ASC"])
        failed = [r for r in children if r.info.status != "FINISHED"]
        client.log_param(parent, "jobs", len(children))
        client.log_metric(parent, "failed_jobs", len(failed))
        print(summary(children), file=sys.stderr if failed else sys.stdout)
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        if failed:
            print(f"dreamlab: error: {len(failed)} of {len(children)} jobs failed "
                  f"(their runs are FAILED in MLflow with the error)", file=sys.stderr)
            raise SystemExit(1)


def summary(runs) -> str:
    from . import tracking

    lines = [f"{'job':>4}  {'status':<8} {'seconds':>8}  run", ]
    for r in sorted(runs, key=lambda r: int(r.data.tags.get(tracking.JOB_TAG, 0))):
        secs = ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        err = r.data.tags.get(tracking.ERROR_TAG, "")
        lines.append(f"{r.data.tags.get(tracking.JOB_TAG, '?'):>4}  {r.info.status:<8} "
                     f"{secs:8.1f}  {r.info.run_name}" + (f"  error: {err}" if err else ""))
    return "\n".join(lines)
