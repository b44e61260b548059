"""`hydra/launcher=parallel`: a sweep's jobs on long-lived worker processes, one per device slot.

Built on loky (the process pools behind joblib): one single-worker loky executor per slot
(dreamlab.slots), each started with its slot's environment (`CUDA_VISIBLE_DEVICES` before
TensorFlow starts) and pinned to its cores. A worker imports TensorFlow once and keeps its
models and compiled steps for every job it gets, as the in-process launcher does. Jobs queue
for the first free slot, which takes the job that its compiled steps and the times seen so
far say it should (`slots.pick`: its own step first, another worker's only where that ends
it sooner), or waits. A job whose worker dies (killed, out of memory) ends FAILED with the
reason, in its job record and its MLflow run, and the slot gets a new worker; the other jobs
go on.

CPU workers fork from a preloaded server (`preloaded_context`, the standard library's
forkserver): one process imports TensorFlow, Keras and MLflow once, from the sweep's start,
while the sweep process opens its parent run, and every worker is a fork of it that starts
with them in memory. On 2 cores that took the 8-job 384 px grid from 36.0 s to 33.2 s (medians
of 3, AMD EPYC): each worker no longer spends ~4 s of a core importing, and the forks share
those pages. A GPU machine's workers start as fresh processes, since each must set up CUDA
for its own GPU, and so do workers of another backend than TensorFlow (`preload=false`
gives every worker a fresh process).

Hydra's joblib launcher cannot do this: all its workers share one environment, so it cannot
give each its own GPU (Hydra issues #1331, #2757).
"""


import atexit
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence
from unittest.mock import patch  # patch.dict: the environment set for a block, then restored

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class ParallelLauncherConf:
    _target_: str = "hydra_plugins.dreamlab_launcher.parallel_launcher.ParallelLauncher"
    # GPU ids to use (default: every visible GPU); a worker sees exactly one of them.
    gpus: Optional[List[str]] = None
    # Workers sharing each GPU (TensorFlow's memory growth is on, so they can).
    workers_per_gpu: int = 1
    # Number of workers (default: one per GPU slot, or on CPUs one per `cores_per_worker`
    # cores, at most one per 2 GiB of available memory, at most one per job).
    workers: Optional[int] = None
    # CPU cores each worker is pinned to when there is no GPU (default 1: fastest here).
    cores_per_worker: Optional[int] = None
    # CPU workers fork from one process that imported TensorFlow, Keras and MLflow at the
    # sweep's start (false: each worker is a fresh process that imports them itself).
    preload: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="parallel", node=ParallelLauncherConf,
                             provider="dreamlab")


# What every job's process imports, in the preloaded server (TensorFlow imports Keras), and
# the environment it imports them in: a CPU worker's (slots.worker_env), as Keras reads its
# backend and TensorFlow its devices from it.
PRELOAD = ("tensorflow", "mlflow", "dreamlab.app", "dreamlab.jobs", "dreamlab.tracking", "dreamlab.plots",
           "hydra_plugins.dreamlab_launcher.preloaded")
PRELOAD_ENV = {"KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
# The sweep's tracking URI ("": none), in the server's environment alone: `preloaded` reads
# it, and acts only where it finds it.
STORE_ENV = "DREAMLAB_PRELOAD_STORE"
_preloaded: list = []  # the context, once started (one forkserver per process)


def preloads(config: DictConfig) -> bool:
    """Whether this sweep's CPU workers fork from the preloaded server: the launcher's
    `preload` is on, the sweep's backend is TensorFlow and the machine shows no GPU."""
    from dreamlab import slots
    from dreamlab.engine import backends
    from dreamlab.errors import DreamlabError

    options = config.hydra.launcher
    if not options.get("preload", True) or options.get("gpus") or slots.visible_gpus()[0]:
        return False
    try:
        return backends.requested(config.get("backend")) == "tensorflow"
    except DreamlabError:  # the job itself reports it, in one line
        return False


def preload_env(config: DictConfig) -> dict[str, str]:
    """`PRELOAD_ENV`, and the sweep's MLflow store (`STORE_ENV`) for `preloaded` to open:
    where the runs go to a database (sqlite, PostgreSQL, ...) it imports MLflow's SQL store
    too (SQLAlchemy and Alembic are ~0.7 s of each worker's first run otherwise, before its
    first step); a store on a server or in files never imports them, so then they are not
    paid. The server decides, not this process: which schemes are databases is MLflow's list,
    and importing MLflow here first (~0.6 s) would hold the server's start back by as much."""
    uri = OmegaConf.select(config, "mlflow.tracking_uri", default=None)
    enabled = OmegaConf.select(config, "mlflow.enabled", default=True)
    return {**PRELOAD_ENV, STORE_ENV: str(uri) if enabled and uri else ""}


def preloaded_context(config: DictConfig):
    """The multiprocessing context CPU workers of TensorFlow start from (None: a fresh loky
    process each, see `preloads`). The first call starts the server, which then imports in
    the background; forks wait for it."""
    if not _preloaded:
        context = None
        if preloads(config):
            import multiprocessing
            import multiprocessing.forkserver

            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(PRELOAD))
            # The server inherits this process's environment when it starts, and only then.
            with patch.dict(os.environ, preload_env(config)):
                multiprocessing.forkserver.ensure_running()
        _preloaded.append(context)
    return _preloaded[0]


def _execute(hydra_context: HydraContext, task_function: TaskFunction, sweep_config: DictConfig,
             singleton_state: Any) -> JobReturn:
    """In the worker: the same calls as Hydra's own launchers make for one job."""
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _record(job_dir: Path) -> Optional[dict]:
    from dreamlab import sweep

    try:
        return sweep.read_job_record(job_dir)
    except (OSError, ValueError):  # a job killed while writing it: no timing to learn from
        return None


class ParallelLauncher(Launcher):
    def __init__(self, gpus: Optional[Sequence] = None, workers_per_gpu: int = 1,
                 workers: Optional[int] = None, cores_per_worker: Optional[int] = None,
                 preload: bool = True) -> None:
        self.options = dict(gpus=list(gpus) if gpus is not None else None,
                            workers_per_gpu=workers_per_gpu, workers=workers,
                            cores_per_worker=cores_per_worker)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self._executors: dict = {}  # slot index -> (backend, loky executor), kept across batches
        self._slots: list = []
        self._last: dict = {}  # slot index -> step_key of its last job
        self._compiled: dict = {}  # slot index -> the step keys its worker has run
        self._times = None  # slots.JobTimes of this sweep, set at its first batch

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        preloaded_context(config)  # already started by MlflowSweep, unless the callback is off

    def _executor(self, slot, backend: str):
        """The slot's worker for `backend`: a process keeps one Keras backend, so a job of
        another backend than the slot's worker replaces that worker."""
        from loky import ProcessPoolExecutor

        from dreamlab import slots

        current = self._executors.get(slot.index)
        if current is not None and current[0] != backend:
            current[1].shutdown(wait=True)
            current = None
            self._compiled.pop(slot.index, None)  # a new process: it compiles afresh
        if current is None:
            env = slots.worker_env(slot, backend)
            assert self.config is not None
            # loky gives `env` to its own fresh processes only: a fork of the preloaded server
            # sets it in `slots.enter`, before the job starts TensorFlow. (No GPU slot gets
            # here with a context: `preloads` is off where GPUs are given or visible.)
            current = self._executors[slot.index] = (backend, ProcessPoolExecutor(
                max_workers=1, initializer=slots.enter, initargs=(slot.to_json(), env), env=env,
                context=preloaded_context(self.config) if backend == "tensorflow" else None))
        return current[1]

    def _shutdown(self) -> None:
        for _, executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dreamlab import jobs, slots
        from dreamlab.errors import DreamlabError, first_line

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if not self._slots:
            try:
                self._slots = slots.plan(jobs=len(job_overrides), **self.options)
            except DreamlabError as exc:
                from dreamlab import sweep

                sweep.abort(self.config, str(exc))
                raise SystemExit(f"dreamlab: error: {exc}") from None
            atexit.register(self._shutdown)
            self._times = slots.JobTimes()
        log.info("Launching %d jobs on %d workers: %s", len(job_overrides), len(self._slots),
                 ", ".join(s.device for s in self._slots))

        from dreamlab.engine import backends

        queue = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            # The job's backend from its overrides (a swept or given backend=) or the config;
            # read here without composing the job, so that the first workers start at once.
            given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").startswith("backend=")]
            try:
                backend = backends.requested(given[-1] if given else self.config.get("backend"))
            except DreamlabError:  # the job itself reports it, in one line
                backend = backends.DEFAULT
            queue.append((idx, overrides, backend, slots.step_key(overrides)))
        # A sweep over backend: the jobs of one backend first, then the next, so that each
        # worker changes backend (a new process) as few times as possible.
        order = list(dict.fromkeys(job[2] for job in queue))
        queue.sort(key=lambda job: order.index(job[2]))
        free = list(self._slots)
        running: dict = {}  # future -> (slot, job number, job dir, overrides, step key, start, first?)
        results: dict[int, JobReturn] = {}
        singleton_state = Singleton.get_state()
        while queue or running:
            waiting: list = []  # free workers that wait this round (slots.pick said None)
            while queue and len(waiting) < len(free):
                slot = next(s for s in free if s not in waiting)
                # The free worker takes a job of the step it compiled last, else one of a step
                # no busy worker holds (so that each step is compiled by one worker), else one
                # of a held step where that ends it sooner (slots.pick), else it waits.
                now = time.monotonic()
                busy = [(key, now - start, first) for _, _, _, _, key, start, first in running.values()]
                picked = slots.pick(queue, self._last.get(slot.index), {b[0] for b in busy}, self._times, busy)
                if picked is None:
                    waiting.append(slot)
                    continue
                idx, overrides, backend, key = queue.pop(picked)
                # A worker that already runs this backend, when one is free.
                slot = next((s for s in free if s not in waiting
                             and self._executors.get(s.index, (backend,))[0] == backend), slot)
                free.remove(slot)
                executor = self._executor(slot, backend)  # a new process where the backend changes
                first = key not in self._compiled.setdefault(slot.index, set())
                self._compiled[slot.index].add(key)
                self._last[slot.index] = key
                log.info("\t#%d : %s  (%s)", idx, " ".join(filter_overrides(overrides)), slot.device)
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = idx
                    sweep_config.hydra.job.num = idx
                job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
                future = executor.submit(_execute, self.hydra_context, self.task_function, sweep_config,
                                         singleton_state)
                running[future] = (slot, idx, job_dir, overrides, key, time.monotonic(), first)
            if not running:  # every free worker waits only while another is busy
                raise RuntimeError("parallel launcher: jobs queued with no worker running")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                slot, idx, job_dir, overrides, key, start, first = running.pop(future)
                try:
                    results[idx] = future.result()
                except Exception as exc:  # the worker died: TerminatedWorkerError, BrokenProcessPool
                    reason = (f"the worker process on {slot.device} died during this job "
                              f"({type(exc).__name__}: {first_line(exc)})")
                    log.error("job #%d: %s", idx, reason)
                    jobs.crashed(job_dir, reason, idx, " ".join(overrides))
                    self._executors.pop(slot.index)[1].shutdown(wait=False, kill_workers=True)
                    self._compiled.pop(slot.index, None)  # its successor compiles afresh
                    # COMPLETED for Hydra, which would abort the whole sweep on a FAILED return;
                    # the failure is in the job record and the run, and the sweep exits non-zero.
                    results[idx] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                             _return_value=None, working_dir=str(job_dir))
                else:
                    record = _record(job_dir)
                    if record and record.get("status") == "FINISHED":
                        self._times.record(key, time.monotonic() - start, first)
                free.append(slot)
        return [results[i] for i in sorted(results)]
