"""The parent MLflow run of a Hydra multirun, as a Hydra callback.

`on_multirun_start` runs once in the launching process, before any job: it creates the
parent run and writes its id, with the swept keys, to `<sweep dir>/mlflow_sweep.json`, where
every job finds it, whichever launcher runs the jobs (in process, joblib, submitit, Ray),
since they all share the sweep dir. `on_multirun_end` counts the children, closes the parent
and prints a summary; a sweep with a failed job exits non-zero.

Every other way a sweep can end closes its parent run too, never leaving it RUNNING: an error
after the parent exists (a job override that does not compose, a sweep or job folder that
cannot be written, a launcher that refuses its options, a summary that cannot be written)
ends it FAILED with the reason as its `dreamlab.error` tag; Ctrl-C or SIGTERM ends it KILLED.
`python -m dreamlab` runs the app through `closing`, which sees each of these; an `atexit`
hook ends a parent still open when the process exits by any other road (another entry point).
Only a process killed outright (kill -9) leaves it RUNNING, for `dreamlab.runs cleanup`.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .errors import DreamlabError, first_line, interruption, unwritable

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


# The sweep of this process while its parent run is open: what an early end has to close.
ACTIVE: dict = {}


def _close(status: str, why: str) -> None:
    """End this process's open parent run `status` (FAILED, KILLED) with `why` as its error
    tag, and the jobs recorded so far in its description; once, whoever calls first. Never
    raises: it runs while another error is on its way out."""
    if not ACTIVE:
        return
    sweep_dir, uri, info = ACTIVE["sweep_dir"], ACTIVE["tracking_uri"], ACTIVE["info"]
    ACTIVE.clear()
    os.environ.pop(PARENT_ENV, None)
    parent = info.get("parent_run_id")
    if not parent:
        return
    from . import tracking

    try:
        client = tracking.client(uri)
        tracking.end_run(client, parent, why, status=status)
    except Exception as exc:
        print(f"dreamlab: warning: the sweep's parent run {parent} could not be ended {status} "
              f"({first_line(exc)}); python -m dreamlab.runs cleanup ends it KILLED", file=sys.stderr)
        return
    try:
        jobs = read_job_records(sweep_dir)
        client.log_param(parent, "jobs", len(jobs))
        _note(client, parent, info.get("experiment_id"), jobs, f"{status.title()}: {why}")
    except Exception:
        pass  # the run has ended with its reason; the job table is a courtesy


def interrupted(signal_name: str) -> None:
    """Ctrl-C or SIGTERM during a sweep: its parent run ends KILLED, and the summary says what
    finished (each job's own run already ended KILLED or FINISHED in jobs.run)."""
    if not ACTIVE:
        return
    jobs = read_job_records(ACTIVE["sweep_dir"])
    if jobs:
        print(summary(jobs, ACTIVE["info"].get("swept", [])), file=sys.stderr)
    _close("KILLED", f"interrupted by {signal_name}")


def reason(exc: BaseException) -> str:
    """One line for what stopped a sweep, as its parent run's error tag."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, SystemExit):
        if isinstance(exc.code, str):
            return exc.code.removeprefix("dreamlab: error: ")
        return f"the sweep stopped (exit status {exc.code}) before its summary"
    if isinstance(exc, OSError) and exc.filename:
        return unwritable(exc)
    if isinstance(exc, DreamlabError):
        return str(exc)
    text = first_line(exc)
    if exc.__cause__ is not None and first_line(exc.__cause__) not in text:
        text += f"; {first_line(exc.__cause__)}"
    return text if isinstance(exc, (HydraException, OmegaConfBaseException)) else f"{type(exc).__name__}: {text}"


def ended(exc: BaseException) -> None:
    """The sweep of this process stops on `exc` before its summary: its parent run ends KILLED
    (Ctrl-C, SIGTERM: `interrupted`) or FAILED with the reason. Nothing when no parent is open."""
    signal = interruption(exc)
    if signal:
        interrupted(signal[0])
    else:
        _close("FAILED", reason(exc))


def closing(app):
    """`app` (the Hydra entry point), ending the sweep's parent run however the sweep ends:
    an exception or exit on its way out (`ended`), or a return that never reached the
    summary (a callback error Hydra only warned about). `python -m dreamlab` runs through it."""
    @functools.wraps(app)
    def run(*args, **kwargs):
        try:
            out = app(*args, **kwargs)
        except BaseException as exc:
            ended(exc)
            raise
        _close("FAILED", "the sweep ended without its summary")
        return out
    return run


def _at_exit() -> None:
    _close("FAILED", "the sweep's process exited before the sweep's summary")


_AT_EXIT: list = []


def _register_at_exit() -> None:
    """Once per process: a parent still open when the interpreter exits ends FAILED."""
    if not _AT_EXIT:
        atexit.register(_at_exit)
        _AT_EXIT.append(True)


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
        if str(hydra_cfg.launcher.get("_target_", "")).startswith("hydra_plugins.dreamlab_launcher."):
            # The parallel launcher's workers fork from a server that imports TensorFlow and
            # MLflow: started first, it imports while this process checks the store (its own
            # MLflow import, ~0.5 s) and opens the parent run; the first workers fork ~0.55 s
            # sooner than when it started after the checks (8-job grid, 384 px, 2 cores). On a
            # mistake the check finds, the server is left to finish its imports and exit.
            from hydra_plugins.dreamlab_launcher import parallel_launcher

            parallel_launcher.preloaded_context(config)
        self._check(config, sweep_dir, info)
        grown = from_runs(config, overrides)
        if grown:
            info["from_run"] = grown[0]
        if config.mlflow.enabled:
            try:
                self._open_parent(config, sweep_dir, overrides, keys, params, info)
                (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))
            except Exception as exc:
                # Hydra would only warn and go on: the sweep stops here, its parent (if it
                # was created) FAILED with the reason.
                why = reason(exc)
                _close("FAILED", why)
                print(f"dreamlab: error: {why}", file=sys.stderr)
                raise SystemExit(1) from None

    @staticmethod
    def _open_parent(config: DictConfig, sweep_dir: Path, overrides: list[str], keys: list[str],
                     params: dict, info: dict) -> None:
        from . import runs, tracking

        hydra_cfg = config.hydra
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
            **({"dreamlab.from_run": info["from_run"]} if info.get("from_run") else {}),
        })
        run_id = run.info.run_id
        # Open from here on: whatever ends the sweep now ends this run (`_close`).
        info.update(parent_run_id=run_id, experiment_id=exp)
        ACTIVE.update(sweep_dir=sweep_dir, tracking_uri=uri, info=info)
        os.environ[PARENT_ENV] = run_id
        _register_at_exit()
        swept = [o for o in overrides if any(o.lstrip("+~").startswith(k + "=") for k in keys)]
        swept += [f"{k}={v}" for k, v in params.items() if not any(s.startswith(k + "=") for s in swept)]
        client.log_param(run_id, "command", "python -m dreamlab " + " ".join(sys.argv[1:]))
        client.log_param(run_id, "swept", " ".join(swept))
        client.log_param(run_id, "sweep", name or "command line")
        client.log_param(run_id, "launcher", hydra_cfg.runtime.choices.get("hydra/launcher", "basic"))
        if info.get("from_run"):
            client.log_param(run_id, "from_run", info["from_run"])

    @staticmethod
    def _check(config: DictConfig, sweep_dir: Path, info: dict) -> None:
        """The sweep's folder (made, and written: its sweep file, still without a parent) and
        store, before its parent run exists. Hydra turns a callback's exception into a
        warning and goes on, so a mistake here ends the process itself, in one line, as a
        job's would."""
        from . import validate

        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))
            if config.mlflow.enabled:
                validate.store(config.mlflow)
            check_from_runs(config, list(config.hydra.overrides.task))
            check_backends(config, list(config.hydra.overrides.task))
        except DreamlabError as exc:
            print(f"dreamlab: error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as exc:
            print(f"dreamlab: error: {unwritable(exc)}", file=sys.stderr)
            raise SystemExit(1) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._summarise(config)
        except Exception as exc:
            # Hydra would only warn and exit 0 with the parent RUNNING.
            why = f"the sweep's summary failed: {reason(exc)}"
            _close("FAILED", why)
            print(f"dreamlab: error: {why}", file=sys.stderr)
            raise SystemExit(1) from None

    @staticmethod
    def _summarise(config: DictConfig) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = read_job_records(sweep_dir)
        info = ACTIVE["info"] if ACTIVE else read_sweep_file(str(sweep_dir))
        failed = [j for j in jobs if j["status"] == "FAILED"]
        skipped = [j for j in jobs if j["status"] == "SKIPPED"]
        print(summary(jobs, info.get("swept", [])), file=sys.stderr if failed else sys.stdout)
        if skipped:
            print(f"resumed: {len(skipped)} of {len(jobs)} jobs skipped, their work was already "
                  f"FINISHED (resume=false reruns them): jobs {', '.join(str(j['job']) for j in skipped)}")
        sheet, overlay = _sweep_pictures(config, sweep_dir, jobs, info.get("swept", []))
        print(f"contact sheet: {sheet}")
        try:
            page = _gallery(config, sweep_dir, info)
            print(f"gallery: {page}")
        except Exception as exc:  # the contact sheet and the summary still stand
            page = None
            print(f"dreamlab: warning: the sweep's gallery.html could not be made: {reason(exc)}", file=sys.stderr)
        if info.get("parent_run_id"):
            from . import tracking

            client = tracking.client(config.mlflow.tracking_uri)
            parent = info["parent_run_id"]
            # Counts of the whole sweep, params beside `jobs` (as metrics they were charts of
            # a single point each, first on the parent's chart page).
            client.log_param(parent, "jobs", len(jobs))
            client.log_param(parent, "failed_jobs", len(failed))
            client.log_param(parent, "skipped_jobs", len(skipped))
            client.log_artifact(parent, str(sheet))
            client.log_artifact(parent, str(overlay))
            if page is not None:
                client.log_artifact(parent, str(page))
            _note(client, parent, info.get("experiment_id"), jobs)
            client.set_terminated(parent, "FAILED" if failed else "FINISHED")
            ACTIVE.clear()
            os.environ.pop(PARENT_ENV, None)
            print(f"runs: {tracking.how_to_open(config.mlflow.tracking_uri, info.get('experiment_id'))}")
        ACTIVE.clear()
        if failed:
            # Only what exists: a job that failed its checks never created a run.
            with_run = sum(1 for j in failed if j.get("run_id"))
            where = (f" ({with_run} with a FAILED run in MLflow that holds the error)" if with_run else
                     " (before any run was created: the summary above has each error)")
            print(f"dreamlab: error: {len(failed)} of {len(jobs)} jobs failed{where}", file=sys.stderr)
            raise SystemExit(1)


def abort(config: DictConfig, why: str) -> None:
    """The sweep cannot start its jobs (a launcher refused its options): its parent run ends
    FAILED with the reason instead of staying RUNNING."""
    if ACTIVE:
        _close("FAILED", why)
        return
    info = read_sweep_file(str(config.hydra.sweep.dir))  # a launcher outside the callback's process
    if info.get("parent_run_id"):
        from . import tracking

        tracking.end_run(tracking.client(config.mlflow.tracking_uri), info["parent_run_id"], why)


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


def from_runs(config: DictConfig, overrides: list[str]) -> list[str]:
    """The run ids a sweep grows from (`from_run=ID`, or swept: `from_run=A,B`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ids: list[str] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.key_or_group == "from_run" and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            ids += [v for v in values if v not in ("null", "None", "")]
    if not ids and OmegaConf.select(config, "from_run", default=None):
        ids = [str(config.from_run)]
    return ids


def check_from_runs(config: DictConfig, overrides: list[str]) -> None:
    """Every run a sweep grows from exists in its store and has its config: one line, before
    any job starts, when not."""
    ids = from_runs(config, overrides)
    if not ids:
        return
    from . import reproduce, tracking

    uri = config.mlflow.tracking_uri
    client = tracking.client(uri)
    for run_id in ids:
        reproduce.find_run(client, run_id, uri, "mlflow.tracking_uri=... (or MLFLOW_TRACKING_URI)")
        if "config.yaml" not in {a.path for a in client.list_artifacts(run_id)}:
            raise DreamlabError(f"run {run_id} has no config.yaml artifact (it failed or was not made by a "
                                f"dreamlab job): pick a FINISHED dream run for from_run")


# Launchers whose jobs each get a process of their own (or a worker per backend).
_OWN_PROCESS = ("parallel", "submitit_slurm", "submitit_local", "ray", "joblib")


def check_backends(config: DictConfig, overrides: list[str]) -> None:
    """A sweep over `backend` needs a process per backend: one line before any job when its
    launcher would run them all in this one process."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    launcher = str(config.hydra.runtime.choices.get("hydra/launcher", "basic"))
    if launcher.startswith(_OWN_PROCESS):
        return
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.key_or_group == "backend" and o.is_sweep_override():
            values = list(dict.fromkeys(o.sweep_string_iterator()))
            if len(values) > 1:
                raise DreamlabError(
                    f"backend={','.join(values)} sweeps the Keras backend, which a process cannot change: "
                    f"add hydra/launcher=parallel (a worker per backend), or run one command per backend")


def _gallery(config: DictConfig, sweep_dir: Path, info: dict) -> Path:
    """gallery.html in the sweep folder (dreamlab.gallery): every job's octave pictures from
    its folder, with its values, losses, config and run link; a grown sweep's origin first."""
    import yaml

    from . import gallery, tracking

    keys = info.get("swept", [])
    uri = config.mlflow.tracking_uri
    base, note = gallery.link_base(uri) if config.mlflow.enabled else ("", "")
    experiment = info.get("experiment_id")
    folders = {}
    for path in sweep_dir.glob(f"*/{JOB_FILE}"):
        record = json.loads(path.read_text())
        folders[int(record["job"])] = (record, path.parent)
    cells, photo = [], None
    for num in sorted(folders):
        record, folder = folders[num]
        octaves = gallery.job_octaves(folder)
        resolved = folder / "resolved.yaml"
        text = resolved.read_text() if resolved.is_file() else ""
        if photo is None and text and "image" not in keys:
            image = (yaml.safe_load(text) or {}).get("image")
            photo = image if image and os.path.isfile(str(image)) else None
        run_id = record.get("run_id")
        cells.append(gallery.Cell(
            values=job_values(record, keys), status=record["status"], octaves=octaves,
            image=None if octaves else record.get("image"), losses=record.get("losses") or [],
            loss=record.get("loss"), seconds=record.get("seconds"), error=record.get("error"),
            name=f"job {num}", run_id=run_id,
            run_url=tracking.ui_link(base, experiment, run_id) if run_id and experiment and base else None,
            command=(gallery.reproduce_command(run_id, uri) if run_id else
                     f"python -m dreamlab {record['overrides']}"), config=text))
    origin = None
    if info.get("from_run") and config.mlflow.enabled:
        client = tracking.client(uri)
        run = client.get_run(info["from_run"])
        origin = gallery.run_cell(client, run, keys, sweep_dir / ".gallery", uri)
    name = OmegaConf.select(config, "hydra.runtime.choices.sweep", default=None) or "command line"
    failed = sum(1 for c in cells if c.status == "FAILED")
    return gallery.write(sweep_dir / "gallery.html", cells, keys, photo=photo, origin=origin,
                         title=f"sweep {name}: {len(cells)} jobs" + (f", {failed} failed" if failed else ""),
                         subtitle=f"swept: {', '.join(keys) or 'nothing'}  |  {sweep_dir}", note=note)


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
