"""Device slots: which GPU or which cores a worker process owns, and TensorFlow set up for it.

A slot is what one long-lived worker of `hydra/launcher=parallel` owns for its whole life:
one GPU (or a share of one), or a group of CPU cores. `plan` splits the machine into slots
without importing TensorFlow (the launching process never needs it); `worker_env` gives the
environment a worker starts with (`CUDA_VISIBLE_DEVICES` must be set before TensorFlow
initialises its devices); `configure` sets up the Keras backend (its thread pools, its GPU memory) in the
process that dreams, whichever launcher started it, and says what it did (`env.*` tags).

Why the intra-op thread count is recorded: oneDNN splits some gradients (max pooling's,
measured on InceptionV3 at 256 px and up) differently for different thread counts, so a
picture's last bits depend on it. `threads` defaults to the cores the job was given
(`cores_given`: the fast path on every machine) and the count used is written into the run's
params and config.yaml, so `reproduce` sets the same count and gets the same bytes on any
machine of the same CPU kind, whatever its core count.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from .errors import DreamlabError

# Tests (and users who want to see the GPU plan on a machine without GPUs) list pretend GPU
# ids here; workers get them in CUDA_VISIBLE_DEVICES, and TensorFlow, finding no such GPU,
# runs on the CPU.
PRETEND_GPUS_ENV = "DREAMLAB_PRETEND_GPUS"
# The slot a worker was started for, as JSON, read back by configure.
SLOT_ENV = "DREAMLAB_SLOT"
# Each worker of a GPU machine keeps about this much host memory (TensorFlow, a backbone, its
# compiled steps at 512 px: 1.2 to 1.7 GB measured); CPU workers are bounded by it too.
WORKER_MEMORY_BYTES = 2 << 30


@dataclass
class Slot:
    index: int
    gpu: Optional[str] = None  # the GPU id the worker sees as its only GPU; None: CPU only
    cores: list[int] = field(default_factory=list)  # the cores the worker is pinned to
    pretend: bool = False
    shared: bool = False  # other workers use the same GPU (workers_per_gpu > 1)

    @property
    def device(self) -> str:
        if self.gpu is not None:
            return f"gpu:{self.gpu}" + (" (pretend)" if self.pretend else "")
        return "cpu:" + ",".join(map(str, self.cores))

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def visible_gpus() -> tuple[list[str], bool]:
    """GPU ids this process may hand out, and whether they are pretend ones. Read from
    DREAMLAB_PRETEND_GPUS, else CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    pretend = os.environ.get(PRETEND_GPUS_ENV)
    if pretend:
        return [g.strip() for g in pretend.split(",") if g.strip()], True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"], False
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return [], False
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")], False


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cores_given() -> int:
    """The cores this job may use: its CPU affinity (a parallel worker is pinned to its slot's
    cores, srun binds a SLURM task's), capped by a cgroup CPU quota (containers), SLURM's
    cpus_per_task and Ray's CPUs for the task, whichever are set."""
    caps = [len(available_cores()), _cgroup_cpus()]
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        caps.append(int(os.environ["SLURM_CPUS_PER_TASK"]))
    caps.append(_ray_cpus())
    return max(1, min(c for c in caps if c))


def _cgroup_cpus() -> Optional[int]:
    """cgroup v2's cpu.max quota in whole cores (rounded up), None when unlimited or unknown."""
    import math

    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def _ray_cpus() -> Optional[int]:
    """The CPUs Ray assigned to this task (hydra/launcher=ray's num_cpus), when in one."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver, not a task
        return None
    return max(1, int(cpus)) if cpus else None


def available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan(gpus: Optional[Sequence] = None, workers_per_gpu: int = 1, workers: Optional[int] = None,
         cores_per_worker: Optional[int] = None, jobs: Optional[int] = None) -> list[Slot]:
    """The slots of this machine.

    GPUs (the `gpus` ids, default every visible one): `workers_per_gpu` slots per GPU, the
    cores shared out among them. No GPU: one slot per `cores_per_worker` cores (default 1:
    one 1-thread worker per core did 1.40x the steps of one 2-thread process at 256 px and
    1.22x at 512 px here, benchmarks/threads.py), at most `workers`, at most one per 2 GiB of
    available memory, never more than `jobs`; when that leaves fewer workers than cores, the
    cores are shared out among them, so no core idles (each job's `threads` follows).
    """
    if workers_per_gpu < 1:
        raise DreamlabError("hydra.launcher.workers_per_gpu must be >= 1 (for example "
                            "hydra.launcher.workers_per_gpu=1)")
    cores = available_cores()
    found, pretend = visible_gpus()
    if gpus is not None:
        wanted = [str(g) for g in gpus]
        missing = [g for g in wanted if g not in found]
        if missing:
            raise DreamlabError(f"hydra.launcher.gpus asks for GPU {','.join(missing)} but the visible "
                                f"GPUs are [{','.join(found) or 'none'}]: pick from those, or "
                                f"hydra.launcher.gpus=null for all of them")
        found = wanted
    if found:
        ids = [g for g in found for _ in range(workers_per_gpu)]
        if workers is not None:
            ids = ids[:max(1, workers)]
        if jobs is not None:
            ids = ids[:max(1, jobs)]
        share = max(1, len(cores) // len(ids))
        shared = {g for g in ids if ids.count(g) > 1}
        return [Slot(i, gpu=g, cores=_cores_of(i, share, cores), pretend=pretend, shared=g in shared)
                for i, g in enumerate(ids)]
    if cores_per_worker is not None and cores_per_worker < 1:
        raise DreamlabError("hydra.launcher.cores_per_worker must be >= 1 or null")
    per = cores_per_worker or 1
    count = max(1, len(cores) // per)
    memory = available_memory()
    if memory is not None:
        count = min(count, max(1, memory // WORKER_MEMORY_BYTES))
    if workers is not None:  # the user's count wins, cores shared round-robin if it is more
        count = max(1, workers)
    if jobs is not None:
        count = min(count, max(1, jobs))
    if cores_per_worker is None:  # fewer workers than cores (few jobs, little memory): share them out
        per = max(1, len(cores) // count)
    return [Slot(i, cores=_cores_of(i, per, cores)) for i in range(count)]


def _cores_of(i: int, per: int, cores: list[int]) -> list[int]:
    """Worker i's `per` cores, round-robin when there are more workers than cores."""
    return [cores[(i * per + k) % len(cores)] for k in range(per)]


# The config keys that make a job's compiled step (engine.steps.compiled_step's cache key:
# backbone and weights, layers and objective, normalisation, clipping, guide, precision,
# determinism, backend) and the recipe, which sets several of them. Jobs that differ only
# elsewhere (octaves, steps, seed, step size, the photo) reuse a worker's compiled step.
STEP_KEYS = ("backend", "backbone", "layers", "objective", "grad_norm", "clip", "guide", "precision",
             "deterministic", "recipe")


def step_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """What of a job's overrides decides its compiled step: the launcher gives a job to the
    worker that already compiled its step when it can (a 2x2 sweep over layers x octaves on
    two workers traces each layer's step once, not twice)."""
    return tuple(sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".")[0] in STEP_KEYS))


def pick(queue: Sequence[tuple], last: Optional[tuple], held: set, times: Optional["JobTimes"] = None,
         busy: Sequence[tuple] = ()) -> Optional[int]:
    """The index in `queue` (entries whose [-1] is a step_key) of the job a free worker takes:
    the first of its own last step, else the first of a step no busy worker holds, else the
    first of a held step that it would finish sooner than the workers holding it (`JobTimes.
    sooner`, from `busy`: (step key, seconds into its job, whether that job is its worker's
    first of the step) per busy worker), else None: the worker waits. Jobs keep their order
    within each step.

    Why a worker may wait: taking another worker's step costs it that step's compile (a trace
    of ~0.5-1 s a step on one core, InceptionV3 at 384 px), so taking the last job of a step
    whose worker is about to be free ends the sweep later, not sooner (the 8-job grid of the
    bench, 384 px: its last job took 2.25 s on the worker that stole it, 1.6 s on the one that
    held its step)."""
    keys = [job[-1] for job in queue]
    if last is not None and last in keys:
        return keys.index(last)
    free = next((i for i, k in enumerate(keys) if k not in held), None)
    if free is not None:
        return free
    if times is None:
        return 0 if keys else None
    return next((keys.index(key) for key in dict.fromkeys(keys)
                 if times.sooner(key, keys.count(key), [b[1:] for b in busy if b[0] == key])), None)


class JobTimes:
    """What the sweep's jobs took so far, as the parallel launcher saw them (from handing a job
    to its worker to its result), per step key: the later jobs of a step on a worker that had
    compiled it (`each`), and what a worker's first job of a step cost beyond those (`compile`:
    the trace, and on a fresh worker its model build). Only FINISHED jobs count: a skipped or
    failed one says nothing of what a dream takes."""

    def __init__(self) -> None:
        self.jobs: dict[tuple, list[float]] = {}
        self.firsts: list[tuple[tuple, float]] = []

    def record(self, key: tuple, seconds: float, first: bool) -> None:
        if first:
            self.firsts.append((key, seconds))
        else:
            self.jobs.setdefault(key, []).append(seconds)

    def each(self, key: tuple) -> Optional[float]:
        seen = self.jobs.get(key)
        return statistics.median_high(seen) if seen else None

    def compile(self) -> Optional[float]:
        extra = [seconds - each for key, seconds in self.firsts if (each := self.each(key)) is not None]
        return max(0.0, min(extra)) if extra else None

    def sooner(self, key: tuple, queued: int, holders: Sequence[tuple]) -> bool:
        """Whether one more worker, which must compile the step first, ends the `queued` jobs
        of `key` sooner than its `holders` ((seconds into their job, first of the step?) each)
        alone: it takes one of them now, each holder the next when it is free. Without
        the times to tell (no later job of the step, or no first one, has finished yet): yes,
        as a worker that waits for nothing is the only safe guess then."""
        each, compile = self.each(key), self.compile()
        if each is None or compile is None or not holders:
            return True
        free = [max(0.0, each + (compile if first else 0.0) - elapsed) for elapsed, first in holders]
        return max(compile + each, _finish(free, queued - 1, each)) < _finish(free, queued, each)


def _finish(free: list[float], jobs: int, each: float) -> float:
    """When the workers free after `free` seconds are done with their jobs and `jobs` more of
    `each` seconds, each taking the next when it is free."""
    ends = list(free)
    heapq.heapify(ends)
    last = max(ends)
    for _ in range(jobs):
        end = heapq.heappop(ends) + each
        last = max(last, end)
        heapq.heappush(ends, end)
    return last


def worker_env(slot: Slot, backend: Optional[str] = None) -> dict[str, str]:
    """The environment a worker must start with: its GPU, or no GPU at all for a CPU slot
    (so a CPU worker on a GPU machine does not grab every GPU's memory), and its Keras
    backend (a worker keeps one, as any process)."""
    env = {"CUDA_VISIBLE_DEVICES": slot.gpu if slot.gpu is not None else "",
           SLOT_ENV: slot.to_json(),
           # tqdm reads TQDM_* defaults: each worker's progress bar keeps its own line.
           "TQDM_POSITION": str(slot.index)}
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


def gpu_shared() -> bool:
    """Whether this process shares its GPU with other workers: a parallel slot with
    workers_per_gpu > 1, or a Ray task given a fraction of a GPU."""
    slot_json = os.environ.get(SLOT_ENV)
    if slot_json:
        return Slot(**json.loads(slot_json)).shared
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU")
    except Exception:
        return False
    return bool(gpus) and gpus < 1


def enter(slot_json: str, env: Optional[dict] = None) -> None:
    """Worker start-up (before TensorFlow starts): its environment (a worker forked from the
    parallel launcher's preloaded server did not start with it) and the slot's cores."""
    os.environ.update(env or {})
    slot = Slot(**json.loads(slot_json))
    if slot.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cores)


_configured: dict = {}


def configure(backend: Optional[str], threads: int, deterministic: Optional[bool] = None) -> tuple[dict, bool]:
    """Set up this process's Keras backend for its slot (once) and return the `env.*` tags of
    the slot and the determinism the job runs with (null: on for a CPU, off for a GPU, where
    XLA's max-pool gradient has no deterministic kernel).

    threads: TensorFlow's intra-op pool (the config key: it shapes the picture's bytes), or
    on JAX the cores XLA's pool may use. A later job of the same process that asks another
    `threads` or backend gets a one-line error: both are fixed when the backend starts.
    """
    from . import cache
    from .engine import backends

    name = backends.use(backend)
    if _configured:
        if _configured["threads"] != threads:
            raise DreamlabError(
                f"threads={threads} but this process already dreams with threads={_configured['threads']}: "
                f"{name} fixes its thread pools once per process, so sweep other keys and "
                f"run each threads value as its own command")
        tags = dict(_configured["tags"])
    else:
        module = backends.module(name)
        cores = available_cores()
        tags = module.configure(threads, cores, cache_dir=str(cache.root() / name), shared_gpu=gpu_shared())
        slot_json = os.environ.get(SLOT_ENV)
        slot = Slot(**json.loads(slot_json)) if slot_json else None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if slot is not None:
            device = slot.device
        elif visible and visible != "-1":  # a GPU given by SLURM or Ray
            device = f"gpu:{visible}" + ("" if module.gpus() else f" (not found by {name})")
        elif module.on_gpu():  # the backend's own GPU, as nobody chose one
            device = "gpu:0"
        else:
            device = "cpu:" + ",".join(map(str, cores))
        tags.update({"env.device": device, "env.backend": backends.version(name),
                     "env.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")})
        if os.environ.get("SLURM_JOB_ID"):  # which SLURM job did it, for sacct and the logs
            tags["env.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        _configured.update(threads=threads, tags=tags, gpu=module.on_gpu())
    if deterministic is None:
        deterministic = not _configured["gpu"]
    # Per job, not cached: each dream sets determinism anew.
    return {**tags, "env.deterministic": str(deterministic).lower()}, deterministic
