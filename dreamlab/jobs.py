"""One job's life: slot set-up, resume or start its MLflow run, dream, save, log, end.

Whatever launched it (Hydra's basic launcher, dreamlab's parallel workers, SLURM, Ray), a job
goes through `run`: TensorFlow is sized for its slot (dreamlab.slots), a job record
(job.json) marks it RUNNING with its run id as soon as the run exists, so that a launcher
whose worker died can end that run FAILED (`crashed`), and the record ends FINISHED, SKIPPED
or FAILED.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import backbones, config, console, images, slots, validate
from .engine import backends  # imports no Keras: the job chooses the backend first
from .errors import Interrupted, check_stop, first_line, interruption

log = logging.getLogger("dreamlab")
FROM_RUN_TAG = "dreamlab.from_run"


def run(cfg: DictConfig) -> float:
    """Run one composed job; returns its final loss. Raises what the dream raised."""
    from . import sweep

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    started = time.perf_counter()
    record = {"job": hc.job.num if hc.mode == RunMode.MULTIRUN else 0,
              "overrides": " ".join(hc.overrides.task), "status": "FAILED", "error": None,
              "host": socket.gethostname(), "pid": os.getpid()}
    recipe = str(hc.runtime.choices.get("recipe"))
    if cfg.get("from_run"):
        try:
            cfg, recipe = grow(cfg, list(hc.overrides.task), job_dir / "from_run")
        except BaseException as exc:
            record.update(error=first_line(exc), seconds=round(time.perf_counter() - started, 2))
            sweep.write_job_record(job_dir, record)
            raise
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # The count used, not null, is what the run records and what reproduce sets again.
    resolved["threads"] = cfg.threads if cfg.threads is not None else slots.cores_given()
    tracker = None
    try:
        # Null backend: KERAS_BACKEND, else TensorFlow; the one used is what the run records.
        resolved["backend"] = backends.requested(cfg.backend)
        with read_write(cfg), open_dict(cfg):
            cfg.threads, cfg.backend = resolved["threads"], resolved["backend"]
        # Every mistake the config can show is found here, before Keras and before a run.
        checked = validate.job(cfg)
        with console.native_quiet(job_dir / "native.log"):
            env_tags, deterministic = slots.configure(cfg.backend, cfg.threads, cfg.deterministic)
            _freeze_long_lived()
        # Null determinism: on for a CPU, off for a GPU; the value used is recorded, as threads.
        resolved["deterministic"] = deterministic
        with read_write(cfg), open_dict(cfg):
            cfg.deterministic = deterministic
        checked.conf.deterministic = deterministic
        _keep_config(job_dir, resolved)
        fp = _fingerprint(cfg, resolved, recipe) if cfg.mlflow.enabled else None
        if fp and cfg.resume and hc.mode == RunMode.MULTIRUN:
            done = _resume(cfg, fp, job_dir)
            if done is not None:
                history = tracking_history(cfg.mlflow.tracking_uri, done.info.run_id)
                record.update(status="SKIPPED", run_id=done.info.run_id, losses=history,
                              loss=history[-1] if history else None)
                return record["loss"]
        if cfg.mlflow.enabled:
            tracker = _start_run(cfg, resolved, hc, fp, env_tags, recipe)
            sweep.write_job_record(job_dir, {**record, "status": "RUNNING", "run_id": tracker.run_id,
                                             "tracking_uri": cfg.mlflow.tracking_uri})
        result = dream_job(checked, resolved, job_dir, tracker)
        # The speed too, as the MLflow run has it: with mlflow.enabled=false it is here only.
        record.update(status="FINISHED", loss=result.losses[-1], losses=result.losses,
                      steps_per_second=round(result.steps_per_second, 4),
                      compile_seconds=round(result.compile_seconds, 3))
        return result.losses[-1]
    except BaseException as exc:
        stopped = interruption(exc)
        record["error"] = f"interrupted by {stopped[0]}" if stopped else first_line(exc)
        if stopped:
            record["status"] = "KILLED"
        if tracker is not None:
            tracker.end(error=record["error"], status="KILLED" if stopped else None)
        if stopped and not isinstance(exc, (KeyboardInterrupt, Interrupted)):
            check_stop()  # the stop itself, in place of the error it caused on its way
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - started, 2)
        if tracker is not None:
            record["run_id"] = tracker.run_id
        if (job_dir / "dream.png").is_file():
            record["image"] = str(job_dir / "dream.png")
        sweep.write_job_record(job_dir, record)


def grow(cfg: DictConfig, overrides: list[str], into: Path) -> tuple[DictConfig, str]:
    """from_run=RUN_ID: that run's exact resolved config (its logged photo and guide fetched
    and checked by SHA-256, as `reproduce` does) with this command's overrides on top, each
    taking the value Hydra composed for it. Returns the config and the recipe it was made with."""
    from importlib.resources import files

    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from . import reproduce, tracking

    run_id, uri = str(cfg.from_run), cfg.mlflow.tracking_uri
    run, logged = reproduce.fetch(tracking.client(uri), run_id, uri, into,
                                  how="mlflow.tracking_uri=... (or MLFLOW_TRACKING_URI)")
    logged["from_run"] = run_id
    grown = OmegaConf.merge(OmegaConf.structured(config.Config), logged)
    recipe = run.data.params.get("recipe", "None")
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key in ("from_run", "sweep") or key.startswith("hydra") or o.is_delete():
            continue
        keys = [key]
        if key == "recipe":  # a group of global keys: each key it sets, as composed
            recipe = str(o.value())
            path = files("dreamlab.conf") / "recipe" / f"{recipe}.yaml"
            keys = [k for k in (yaml.safe_load(path.read_text()) or {}) if k != "defaults"]
        for k in keys:
            OmegaConf.update(grown, k, OmegaConf.select(cfg, k), merge=False, force_add=True)
    return grown, recipe


def _keep_config(job_dir: Path, resolved: dict) -> None:
    """The job's resolved config in its folder (resolved.yaml), for the sweep's gallery."""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    except OSError:
        pass  # a courtesy: the run's config.yaml is the record


def _freeze_long_lived() -> None:
    """Keep the garbage collector off what lives as long as the process: TensorFlow, Keras,
    MLflow and the models and compiled steps of earlier jobs. Collected once, then frozen, it
    is no longer walked by every full collection while the next job traces its step (with
    the threshold set in __main__, garbage collection in a 4-job sweep went from 2.5 s to
    1.1 s).

    The process's first freeze collects only the young generations: a full collection
    there walks all of TensorFlow, Keras and MLflow (~0.35 s on 2 cores, AMD EPYC, paid by
    every single dream) to free ~10,000 objects, ~1.4 MB (Hydra's composed configs), which
    are instead frozen with the rest, once per process. Later jobs collect in full, which
    finds their own garbage in a few ms, since everything older is frozen: left to later
    freezes, that garbage would grow by ~0.3 MB a job."""
    import keras  # noqa: F401  (needed by every job; imported first so that it is frozen too)

    # A fork of the parallel launcher's preloaded server starts with the server's freeze.
    gc.collect(1 if gc.get_freeze_count() == 0 else 2)
    gc.freeze()


def tracking_history(uri: str, run_id: str) -> list[float]:
    from . import tracking

    history = tracking.client(uri).get_metric_history(run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def dream_job(checked: "validate.Job", resolved: dict, job_dir: Path, tracker):
    """Dream, save dream.png and loss.png in job_dir and log it all; returns the result."""
    from . import plots

    result = _dream(checked, tracker, job_dir)
    out = images.save_png(result.image, job_dir / "dream.png")
    final = result.losses[-1]
    log.info("dream.png written to %s (final loss %.4g, %.1fs)", out, final, result.seconds)
    curve = plots.loss_curve(result.losses, result.octave_of_step, job_dir / "loss.png",
                             title=job_dir.name)
    if tracker is not None:
        tracker.log_artifact(str(out))
        tracker.log_artifact(str(curve))
        tracker.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
        overrides = job_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            tracker.log_artifact(str(overrides))
        tracker.end()
    return result


def _dream(checked: "validate.Job", tracker, job_dir: Path):
    from . import engine, gallery
    from .settings import DreamSettings

    conf, picture, guide = checked.conf, checked.photo, checked.guide
    if conf.image is None:
        picture = images.noise(conf.max_size or 512, conf.seed)
    else:
        if tracker is not None:
            tracker.log_artifact(conf.image, "input")
            tracker.set_tags({"dreamlab.input_sha256": images.sha256(conf.image)})
    if conf.guide is not None:
        if tracker is not None:
            tracker.log_artifact(conf.guide, "guide")
            tracker.set_tags({"dreamlab.guide_sha256": images.sha256(conf.guide)})
    backbone = conf.backbone.name
    if backbone == backbones.CUSTOM:
        backbone = backbones.custom(conf.backbone.path, conf.backbone.preprocess)
    kwargs = dict(backbone=backbone, weights=conf.backbone.weights, layers=conf.layers,
                  guide=guide, progress=conf.progress,
                  **{name: getattr(conf, name) for name in DreamSettings.names()})
    zooming = conf.frames > 0

    def on_octave(k: int, image, losses: list[float]) -> None:
        log.info("octave %d/%d %dx%d: loss %.4g -> %.4g", k + 1, conf.octaves,
                 image.shape[1], image.shape[0], losses[0], losses[-1])
        if not zooming:  # for the sweep's gallery (dreamlab.gallery), in the job folder
            gallery.save_octave(image, job_dir, k + 1)
        if tracker is not None:  # a zoom video logs its frames, not every octave of them
            tracker.log_octave(k, None if zooming else image, losses)

    if not zooming:
        with console.above_progress_bars():
            result = engine.dream(picture, on_octave=on_octave, **kwargs)
        _log_speed(tracker, result)
        return result
    frames = []
    with console.above_progress_bars():
        for i, result in enumerate(engine.dream_zoom(picture, conf.frames, conf.zoom,
                                                     on_octave=on_octave, **kwargs)):
            frames.append(result.image)
            path = images.save_png(result.image, job_dir / "frames" / f"frame_{i:04d}.png")
            log.info("frame %d/%d written to %s", i + 1, conf.frames, path)
            if tracker is not None:
                tracker.log_image(result.image, "frame", i)
    gif = images.save_gif(frames, job_dir / "zoom.gif")
    if tracker is not None:
        tracker.log_artifact(str(gif))
        tracker.log_artifact(str(job_dir / "frames"))
    return result


def _log_speed(tracker, result) -> None:
    """How fast the job's backend dreamt: compile seconds, steps per second, peak GPU memory."""
    if tracker is None:
        return
    from .engine import backends

    metrics = {"compile_seconds": result.compile_seconds, "steps_per_second": result.steps_per_second}
    peak = backends.module().peak_memory_mb()
    if peak is not None:
        metrics["peak_memory_mb"] = peak
    tracker.log_metrics(metrics)


def _fingerprint(cfg: DictConfig, resolved: dict, recipe: str) -> str:
    from . import tracking

    def sha(path):
        return images.sha256(path) if path and os.path.isfile(path) else str(path)

    name = cfg.backbone.name
    if name == backbones.CUSTOM and cfg.backbone.path:
        name = f"{backbones.CUSTOM}:{os.path.abspath(cfg.backbone.path)}"
    return tracking.fingerprint(resolved, recipe, sha(cfg.image),
                                sha(cfg.guide), backbones.weights_identity(name, cfg.backbone.weights))


def _resume(cfg: DictConfig, fp: str, job_dir: Path):
    """The FINISHED run that already did this job's work; its picture is copied into the
    job folder so the sweep's contact sheet still shows every job."""
    from . import tracking

    done = tracking.finished_run(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, fp)
    if done is None:
        return None
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        tracking.client(cfg.mlflow.tracking_uri).download_artifacts(done.info.run_id, "dream.png", str(job_dir))
    except Exception as exc:  # the store's artifacts moved or were deleted: do the work again
        log.info("run %s did this work but its dream.png is gone (%s): dreaming it again",
                 done.info.run_id, first_line(exc)[:200])
        return None
    _fetch_octaves(cfg.mlflow.tracking_uri, done.info.run_id, job_dir)
    log.info("skipped: this exact work is already FINISHED as run %s (%s); resume=false reruns it",
             done.info.run_id, done.info.run_name)
    return done


def _fetch_octaves(uri: str, run_id: str, job_dir: Path) -> None:
    """A skipped job's octave pictures, from the run that did its work, for the gallery."""
    import shutil

    from . import gallery, tracking

    try:
        found = gallery.octave_pictures(tracking.client(uri), run_id, job_dir / ".octaves_download")
        for k, path in enumerate(found, 1):
            (job_dir / gallery.OCTAVES_DIR).mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), job_dir / gallery.OCTAVES_DIR / f"octave_{k}.png")
        shutil.rmtree(job_dir / ".octaves_download", ignore_errors=True)
    except Exception as exc:  # the gallery then shows the final picture alone
        log.info("the octave pictures of run %s could not be fetched (%s)", run_id, first_line(exc)[:200])


def _start_run(cfg: DictConfig, resolved: dict, hc, fp: Optional[str], env_tags: dict, recipe: str) -> Any:
    from . import runs, sweep, tracking

    overrides = list(hc.overrides.task)
    tags = {tracking.JOB_TAG: str(hc.job.num) if hc.mode == RunMode.MULTIRUN else "0",
            "dreamlab.overrides": " ".join(overrides), **runs.owner_tags()}
    if fp:
        tags[tracking.FINGERPRINT_TAG] = fp
    if cfg.get("from_run"):
        tags[FROM_RUN_TAG] = str(cfg.from_run)
    swept: list[str] = []
    if hc.mode == RunMode.MULTIRUN:
        info = sweep.read_sweep_file(hc.sweep.dir)
        swept = info.get("swept", [])
        tags[tracking.SWEEP_TAG] = str(Path(hc.sweep.dir).resolve())
        if info.get("parent_run_id"):
            tags[tracking.PARENT_TAG] = info["parent_run_id"]
    named = [o.lstrip("+~") for o in overrides]
    if swept:
        named = [o for o in named if o.split("=", 1)[0] in swept]
    tags.update(tracking.environment())
    tags.update(env_tags)
    params = tracking.flatten(resolved)
    # The recipe is a config group, so it is not a key of the resolved config; log the choice.
    params["recipe"] = recipe
    return tracking.JobRun(cfg.mlflow.tracking_uri, cfg.mlflow.experiment,
                           run_name=",".join(named) or "dream", params=params, tags=tags)


def crashed(job_dir: Path, reason: str, job: int, overrides: str) -> None:
    """A launcher saw the process of job number `job` die (killed, out of memory, segfault):
    end its record and its MLflow run FAILED with the reason, so nothing is left RUNNING.
    The job may have died before writing any record (at its set-up, or a worker that never
    started): its number and overrides then come from the launcher, since the sweep's summary
    lists every job by them."""
    from . import sweep, tracking

    record = sweep.read_job_record(job_dir) or {}
    record.update(status="FAILED", error=reason)
    for key, value in (("job", job), ("overrides", overrides), ("seconds", 0.0)):
        record.setdefault(key, value)
    sweep.write_job_record(job_dir, record)
    if record.get("run_id") and record.get("tracking_uri"):
        mlflow_client = tracking.client(record["tracking_uri"])
        tracking.end_run(mlflow_client, record["run_id"], reason)
