"""The Hydra app: compose the config and hand it to a job (dreamlab.jobs). `python -m dreamlab`
(dreamlab.__main__) folds Hydra's multi-line config errors into one line.

Importing this module changes no library's behaviour: it registers dreamlab's own OmegaConf
resolvers (`dreamlab.*`) and ConfigStore entries, through their public APIs, and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import config, images, slots
from .errors import DreamlabError

log = logging.getLogger("dreamlab")
# conf/ (and sweeps/ as its sweep group) ship inside the package as dreamlab.conf
# (pyproject.toml maps them): Hydra reads them through the package, from any folder, in a
# wheel install and in an editable one alike.
CONF_PACKAGE = "pkg://dreamlab.conf"

# The bundled sample photo: the schema's default image (dreamlab.config).
OmegaConf.register_new_resolver("dreamlab.sample_image", lambda: str(images.SAMPLE), replace=True)
# 1 where the launching machine has GPUs (or pretend ones), else 0: the Ray launcher's
# num_gpus per job (conf/hydra/launcher/ray.yaml).
OmegaConf.register_new_resolver("dreamlab.gpus_per_job", lambda: 1 if slots.visible_gpus()[0] else 0, replace=True)
config.register()


@hydra.main(version_base="1.3", config_path=CONF_PACKAGE, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """One job. In a multirun a failed job is recorded (FAILED run, error line) and the sweep
    goes on; the sweep callback then exits non-zero. A single run exits non-zero at once."""
    from . import jobs, tracking

    tracking.quiet_defaults()  # here: the job may run in a launcher's worker, anywhere
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        loss = jobs.run(cfg)
        if not multirun:
            print(where(Path(HydraConfig.get().runtime.output_dir), cfg.mlflow.tracking_uri))
        return loss
    except DreamlabError as exc:
        # Printed once: the console gets the error line, the job's log file the record.
        log.error("%s", exc, extra={"file_only": True})
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None
    except Exception:
        if not multirun:
            raise
        log.exception("job failed")
    return None


def where(job_dir: Path, tracking_uri: str) -> str:
    """The two closing lines of a single run: the picture, and how to see its run."""
    from . import sweep, tracking

    picture = job_dir / "dream.png"
    shown = os.path.relpath(picture) if not os.path.relpath(picture).startswith("..") else str(picture)
    record = sweep.read_job_record(job_dir) or {}
    run_id = record.get("run_id")
    if not run_id:
        return f"picture: {shown}"
    experiment = tracking.client(tracking_uri).get_run(run_id).info.experiment_id
    return f"picture: {shown}\nrun {run_id}: {tracking.how_to_open(tracking_uri, experiment, run_id)}"
