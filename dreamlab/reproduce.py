"""Dream a logged run again, from its run id alone, and say whether the picture is the same.

    python -m dreamlab.reproduce RUN_ID [--tracking-uri URI]

The run's exact resolved config (`config.yaml`) and its logged input photo (checked against
its SHA-256, so the original file may have moved or gone) are downloaded; the dream runs as
a new MLflow run tagged `reproduces=RUN_ID` in the same experiment, into
outputs/reproduce/RUN_ID/; then dream.png is compared with the original's, byte for byte,
else by PSNR and largest pixel difference, and the recorded environments are compared.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import images
from .errors import DreamlabError, first_line


def _download_checked(client, run, folder: str, sha_tag: str, into: Path) -> str | None:
    """The run's logged file in `folder` (input/ or guide/), verified by its SHA-256 tag."""
    files = [a.path for a in client.list_artifacts(run.info.run_id, folder)]
    if not files:
        return None
    path = client.download_artifacts(run.info.run_id, files[0], str(into))
    expected = run.data.tags.get(sha_tag)
    if expected and images.sha256(path) != expected:
        raise DreamlabError(f"the logged {folder} file of run {run.info.run_id} does not match its "
                            f"SHA-256 tag {expected}: the artifact store was altered")
    return path


def find_run(client, run_id: str, tracking_uri: str, how: str = "--tracking-uri (or MLFLOW_TRACKING_URI)"):
    """The logged run, or one line that says it is not in this store."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise DreamlabError(f"no run {run_id} in {tracking_uri}: give a run id from the MLflow UI "
                            f"and {how} of its store") from None


def fetch(client, run_id: str, tracking_uri: str, into: Path,
          how: str = "--tracking-uri (or MLFLOW_TRACKING_URI)"):
    """(run, its exact resolved config) with the logged photo and guide downloaded into `into`
    and checked by SHA-256, their paths in the config, and the config's tracking URI set to
    `tracking_uri`: what `reproduce` dreams again and `from_run=RUN_ID` grows from."""
    import yaml

    run = find_run(client, run_id, tracking_uri, how)
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    if "config.yaml" not in {a.path for a in client.list_artifacts(run_id)}:
        raise DreamlabError(f"run {run_id} has no config.yaml artifact (it failed or was not made by a "
                            f"dreamlab job): pick a FINISHED dream run")
    resolved = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(into))).read_text())
    image = _download_checked(client, run, "input", "dreamlab.input_sha256", into)
    if resolved.get("image") is not None:
        if image is None:
            raise DreamlabError(f"run {run_id} has no logged input photo to dream from")
        resolved["image"] = image
    if resolved.get("guide") is not None:
        resolved["guide"] = _download_checked(client, run, "guide", "dreamlab.guide_sha256", into)
    resolved["mlflow"]["tracking_uri"] = tracking_uri
    return run, resolved


def reproduce(run_id: str, tracking_uri: str, out_root: Path = Path("outputs/reproduce")) -> dict:
    from omegaconf import OmegaConf

    from . import config, jobs, slots, tracking, validate

    client = tracking.client(tracking_uri)
    job_dir = out_root / run_id
    fetched = job_dir / "original"
    run, resolved = fetch(client, run_id, tracking_uri, fetched)
    checked = validate.job(OmegaConf.create(resolved))
    conf = checked.conf
    # The original's thread count is in its config: the same pools give the same bytes.
    # And its backend and determinism (a run of 0.3 has neither: TensorFlow, deterministic).
    env_tags, _ = slots.configure(conf.backend or "tensorflow", conf.threads,
                                  True if conf.deterministic is None else conf.deterministic)
    experiment = client.get_experiment(run.info.experiment_id).name
    params = tracking.flatten(resolved)
    params["recipe"] = run.data.params.get("recipe", "None")
    tags = {"reproduces": run_id, tracking.JOB_TAG: "0", **tracking.environment(), **env_tags}
    tracker = tracking.JobRun(tracking_uri, experiment, f"reproduce {run.info.run_name}", params, tags)
    try:
        jobs.dream_job(checked, resolved, job_dir, tracker)
    except BaseException as exc:
        tracker.end(error=first_line(exc))
        raise
    original = Path(client.download_artifacts(run_id, "dream.png", str(fetched)))
    report = compare(original, job_dir / "dream.png")
    report["run_id"] = tracker.run_id
    # Where a job ran does not shape the picture; what does is compared.
    report["environment"] = {k: (run.data.tags.get(k, "?"), v) for k, v in tags.items()
                             if k.startswith("env.") and k not in config.place_tags()
                             and run.data.tags.get(k, "?") != v}
    client.set_tag(tracker.run_id, "dreamlab.identical", str(report["identical"]).lower())
    if not report["identical"]:
        client.log_metric(tracker.run_id, "psnr_vs_original", min(report["psnr"], 1e9))
    return report


def compare(a: Path, b: Path) -> dict:
    from PIL import Image

    if a.read_bytes() == b.read_bytes():
        return {"identical": True, "psnr": math.inf, "max_diff": 0}
    with Image.open(a) as x, Image.open(b) as y:
        x, y = np.asarray(x.convert("RGB"), float), np.asarray(y.convert("RGB"), float)
    if x.shape != y.shape:
        return {"identical": False, "psnr": 0.0, "max_diff": 255, "shapes": (x.shape, y.shape)}
    return {"identical": False, "psnr": images.psnr(x, y), "max_diff": int(np.abs(x - y).max())}


def describe(run_id: str, report: dict) -> str:
    head = f"reproduced run {run_id} as run {report['run_id']}: "
    if report["identical"]:
        head += "dream.png is byte-identical to the original"
    else:
        head += (f"dream.png differs: PSNR {report['psnr']:.1f} dB, largest pixel difference "
                 f"{report['max_diff']}")
    env = report["environment"]
    if env:
        head += "; environment differs: " + ", ".join(f"{k[4:]} {old} -> {new}" for k, (old, new) in env.items())
    elif not report["identical"]:
        head += "; the recorded environment is the same (dreamlab, Python, TensorFlow, Keras, CPU, GPU)"
    return head


def main(argv: list[str] | None = None) -> int:
    from . import tracking

    parser = argparse.ArgumentParser(prog="python -m dreamlab.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI))
    args = parser.parse_args(argv)
    try:
        report = reproduce(args.run_id, args.tracking_uri)
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    print(describe(args.run_id, report))
    return 0


if __name__ == "__main__":
    from .tracking import quiet_defaults

    quiet_defaults()  # the command's MLflow settings, not on import (dreamlab.tracking)
    sys.exit(main())
