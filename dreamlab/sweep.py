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

from .errors import DreamlabError, unwritable

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


# The sweep of this process, while it runs: what an interruption has to close.
ACTIVE: dict = {}


def interrupted(signal_name: str) -> None:
    """Ctrl-C or SIGTERM during a sweep: its parent run ends KILLED, and the summary says what
    finished (each job's own run already ended KILLED or FINISHED in jobs.run)."""
    if not ACTIVE:
        return
    sweep_dir, info = ACTIVE["sweep_dir"], ACTIVE["info"]
    jobs = read_job_records(sweep_dir)
    if jobs:
        print(summary(jobs, info.get("swept", [])), file=sys.stderr)
    if info.get("parent_run_id"):
        from . import tracking

        client = tracking.client(ACTIVE["tracking_uri"])
        parent = info["parent_run_id"]
        client.log_param(parent, "jobs", len(jobs))
        tracking.end_run(client, parent, f"interrupted by {signal_name}", status="KILLED")
        _note(client, parent, info.get("experiment_id"), jobs, f"Killed: interrupted by {signal_name}")
    ACTIVE.clear()


def _note(client, parent: str, experiment: Optional[str], jobs: list[dict], head: str = "") -> None:
    """The parent's description in the UI: every job of the sweep, the skipped ones with a
    link to the run that did their work, and jobs.json with the whole records."""
    rows = ([head, ""] if head else []) + ["| job | status | run | overrides |", "| --- | --- | --- | --- |"]
    for j in jobs:
        run = j.get("run_id")
        link = f"[{run[:8]}](#/experiments/{experiment}/runs/{run})" if run and experiment else (run or "-")
        rows.append(f"| {j['job']} | {j['status']} | {link} | {j['overrides']} |")
    client.set_tag(parent, "mlflow.note.content", "\n".join(rows))
    client.log_dict(parent, jobs, "jobs.json")


class MlflowSweep(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        overrides = list(hydra_cfg.overrides.task)
        params = hydra_cfg.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=True) if params else {}
        keys = swept_keys(overrides, params)
        info = {"parent_run_id": None, "swept": keys, "experiment_id": None}
        self._check(config, sweep_dir)
        if config.mlflow.enabled:
            from . import runs, tracking

            killed, _ = runs.cleanup(config.mlflow.tracking_uri, config.mlflow.experiment)
            if killed:
                print(f"{len(killed)} run(s) left RUNNING by processes that are gone marked KILLED "
                      f"({', '.join(killed)})")

            name = OmegaConf.select(config, "hydra.runtime.choices.sweep", default=None)
            uri, experiment = config.mlflow.tracking_uri, config.mlflow.experiment
            client = tracking.client(uri)
            exp = tracking.experiment_id(client, experiment, uri)
            run = client.create_run(exp, run_name=f"sweep {name or sweep_dir.name}", tags={
                tracking.SWEEP_TAG: str(sweep_dir.resolve()), **runs.owner_tags(),
                "dreamlab.role": "sweep",
            })
            run_id = run.info.run_id
            swept = [o for o in overrides if any(o.lstrip("+~").startswith(k + "=") for k in keys)]
            swept += [f"{k}={v}" for k, v in params.items() if not any(s.startswith(k + "=") for s in swept)]
            client.log_param(run_id, "command", "python -m dreamlab " + " ".join(sys.argv[1:]))
            client.log_param(run_id, "swept", " ".join(swept))
            client.log_param(run_id, "sweep", name or "command line")
            client.log_param(run_id, "launcher", hydra_cfg.runtime.choices.get("hydra/launcher", "basic"))
            info.update(parent_run_id=run_id, experiment_id=exp)
            ACTIVE.update(sweep_dir=sweep_dir, tracking_uri=uri, info=info)
            os.environ[PARENT_ENV] = run_id
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))

    @staticmethod
    def _check(config: DictConfig, sweep_dir: Path) -> None:
        """The sweep's folder and store, before its parent run exists. Hydra turns a callback's
        exception into a warning and goes on, so a mistake here ends the process itself, in
        one line, as a job's would."""
        from . import validate

        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if config.mlflow.enabled:
                validate.store(config.mlflow)
        except DreamlabError as exc:
            print(f"dreamlab: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as exc:
            print(f"dreamlab: error: {unwritable(exc)}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = read_job_records(sweep_dir)
        info = read_sweep_file(str(sweep_dir))
        failed = [j for j in jobs if j["status"] == "FAILED"]
        skipped = [j for j in jobs if j["status"] == "SKIPPED"]
        print(summary(jobs, info.get("swept", [])), file=sys.stderr if failed else sys.stdout)
        if skipped:
            print(f"resumed: {len(skipped)} of {len(jobs)} jobs skipped, their work was already "
                  f"FINISHED (resume=false reruns them): jobs {', '.join(str(j['job']) for j in skipped)}")
        sheet, overlay = _sweep_pictures(config, sweep_dir, jobs, info.get("swept", []))
        print(f"contact sheet: {sheet}")
        ACTIVE.clear()
        if info.get("parent_run_id"):
            from . import tracking

            os.environ.pop(PARENT_ENV, None)
            client = tracking.client(config.mlflow.tracking_uri)
            parent = info["parent_run_id"]
            # Counts of the whole sweep, params beside `jobs` (as metrics they were charts of
            # a single point each, first on the parent's chart page).
            client.log_param(parent, "jobs", len(jobs))
            client.log_param(parent, "failed_jobs", len(failed))
            client.log_param(parent, "skipped_jobs", len(skipped))
            client.log_artifact(parent, str(sheet))
            client.log_artifact(parent, str(overlay))
            _note(client, parent, info.get("experiment_id"), jobs)
            client.set_terminated(parent, "FAILED" if failed else "FINISHED")
            print(f"runs: {tracking.how_to_open(config.mlflow.tracking_uri, info['experiment_id'])}")
        if failed:
            # Only what exists: a job that failed its checks never created a run.
            with_run = sum(1 for j in failed if j.get("run_id"))
            where = (f" ({with_run} with a FAILED run in MLflow that holds the error)" if with_run else
                     " (before any run was created: the summary above has each error)")
            print(f"dreamlab: error: {len(failed)} of {len(jobs)} jobs failed{where}", file=sys.stderr)
            raise SystemExit(1)


def abort(config: DictConfig, reason: str) -> None:
    """The sweep cannot start its jobs (a launcher refused its options): its parent run ends
    FAILED with the reason instead of staying RUNNING."""
    info = read_sweep_file(str(config.hydra.sweep.dir))
    if info.get("parent_run_id"):
        from . import tracking

        tracking.end_run(tracking.client(config.mlflow.tracking_uri), info["parent_run_id"], reason)


def job_values(record: dict, keys: list[str]) -> dict:
    """The swept keys' values of one job, from its command-line overrides."""
    pairs = dict(o.lstrip("+~").split("=", 1) for o in record["overrides"].split() if "=" in o)
    return {k: pairs.get(k) for k in keys}


def _sweep_pictures(config: DictConfig, sweep_dir: Path, jobs: list[dict], keys: list[str]):
    from . import images, plots

    photo = None
    image = OmegaConf.select(config, "image", default=None)
    if image and "image" not in keys and os.path.isfile(str(image)):
        photo = images.load(str(image), 256)
    cells = [{"values": job_values(j, keys), "image": j.get("image"), "loss": j.get("loss"),
              "seconds": j.get("seconds", 0.0), "status": j["status"]} for j in jobs]
    sheet = plots.contact_sheet(cells, keys, sweep_dir / "contact_sheet.png", photo,
                                title=f"{sweep_dir}  ({len(jobs)} jobs)")
    curves = {" ".join(f"{k}={v}" for k, v in job_values(j, keys).items()) or f"job {j['job']}": j["losses"]
              for j in jobs if j.get("losses")}
    overlay = plots.loss_overlay(curves, sweep_dir / "loss_overlay.png", title="loss per step, every job")
    return sheet, overlay


JOB_FILE = "job.json"


def write_job_record(job_dir: Path, record: dict) -> None:
    """Each job leaves its outcome in its folder, so the sweep's summary needs neither MLflow
    nor the launcher's cooperation."""
    job_dir.mkdir(parents=True, exist_ok=True)
    # Written whole then renamed: the sweep's summary may read it while a worker writes it.
    tmp = job_dir / f".{JOB_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    tmp.replace(job_dir / JOB_FILE)


def read_job_record(job_dir: Path) -> Optional[dict]:
    path = job_dir / JOB_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_job_records(sweep_dir: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{JOB_FILE}")]
    return sorted(records, key=lambda r: int(r["job"]))


def summary(jobs: list[dict], keys: list[str]) -> str:
    """One line per job: its number, status, time, swept values (or overrides), run, error."""
    lines = [f"{'job':>4}  {'status':<8} {'seconds':>8}  {'run':<32}  overrides"]
    for j in jobs:
        values = " ".join(f"{k}={v}" for k, v in job_values(j, keys).items()) if keys else j["overrides"]
        lines.append(f"{j['job']:>4}  {j['status']:<8} {j['seconds']:8.1f}  {j.get('run_id') or '-':<32}  "
                     f"{values}" + (f"  error: {j['error']}" if j.get("error") else ""))
    return "\n".join(lines)
