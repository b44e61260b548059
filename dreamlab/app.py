"""The Hydra app: compose the config and hand it to a job (dreamlab.jobs); fold Hydra's
multi-line config errors into one line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import config, images, slots
from .errors import DreamlabError, Interrupted, interruption, unwritable

log = logging.getLogger("dreamlab")
# conf/ sits beside the package in the source tree (installed editable); an absolute path
# keeps `python -m dreamlab` working from any directory.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# conf/hydra/launcher/{submitit_slurm,ray}.yaml shadow the plugins' configs of the same name on
# purpose, and Hydra 1.3 still types them with the plugins' schemas; its deprecation note
# about that would be printed on every command that picks them.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
OmegaConf.register_new_resolver("sample_image", lambda: str(images.SAMPLE), replace=True)
# 1 where the launching machine has GPUs (or pretend ones), else 0: the Ray launcher's
# num_gpus per job (conf/hydra/launcher/ray.yaml).
OmegaConf.register_new_resolver("gpus_per_job", lambda: 1 if slots.visible_gpus()[0] else 0, replace=True)
config.register()


def _one_line(exc: BaseException) -> str:
    text = str(exc) + (f"\n{exc.__cause__}" if exc.__cause__ and str(exc.__cause__) not in str(exc) else "")
    lines = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith(("Config search path", "Set the environment variable")):
            break
        if line and not line.startswith("object_type="):
            lines.append(line)
    out = "; ".join(lines).replace(":;", ":") or type(exc).__name__
    return out + " (python -m dreamlab --help lists the options)"


def _report_config_errors(func):
    """Hydra prints composition errors (wrong type, unknown group option) over several lines;
    dreamlab's promise is one line and a non-zero exit, so config errors are folded here.
    HYDRA_FULL_ERROR=1 still gives Hydra's full report."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return func()
    except (HydraException, OmegaConfBaseException) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"dreamlab: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, Interrupted) as exc:
        from . import sweep

        name, code = interruption(exc)
        sweep.interrupted(name)
        print(f"dreamlab: interrupted by {name}: the run in progress ended KILLED, finished runs are kept",
              file=sys.stderr)
        sys.exit(code)
    except OSError as exc:
        # Hydra creates hydra.run.dir and hydra.sweep.dir itself, before any of dreamlab's
        # code runs; a folder it cannot make or write is a user's fix, not a traceback.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not exc.filename:
            return _hydra_run_and_report(lambda: _raise(exc))
        print(f"dreamlab: error: {unwritable(exc)}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        return _hydra_run_and_report(lambda: _raise(exc))


def _raise(exc: BaseException):
    raise exc


# hydra-core 1.3 reports through this module-level function; wrapping it is the one place
# where the report can be shaped without changing how Hydra runs jobs.
import hydra._internal.utils as _hydra_utils  # noqa: E402

_hydra_run_and_report = _hydra_utils.run_and_report
_hydra_utils.run_and_report = _report_config_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """One job. In a multirun a failed job is recorded (FAILED run, error line) and the sweep
    goes on; the sweep callback then exits non-zero. A single run exits non-zero at once."""
    from . import jobs

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
