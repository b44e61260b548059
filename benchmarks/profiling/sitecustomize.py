"""Timers for `benchmarks/profile_sweep.py`, loaded by every Python process of a profiled sweep.

benchmarks/profile_sweep.py puts this folder first on PYTHONPATH and names a folder in
DREAMLAB_PROFILE; Python then imports this file at start-up in the sweep's process and in
every worker it starts (the parallel launcher's workers inherit the environment; those forked
from its preloaded server get their own file at the fork).
Without DREAMLAB_PROFILE it does nothing.

This wraps library functions at start-up, which dreamlab itself never does: it is a
measurement harness, on the path only of the processes that benchmarks/profile_sweep.py
starts, never installed with dreamlab.

It records spans, not samples: named functions of dreamlab, Hydra and MLflow are wrapped
where their modules are first imported, and the first import of each heavy library is timed.
Each span's *self* time (its duration less the spans it contains, on the same thread) is
written as one JSON line to DREAMLAB_PROFILE/<pid>.jsonl, so that the self times of one
thread add up to the time that thread spent inside spans. A few hundred spans per sweep; the
step wrapper adds a Python call to each step (microseconds against tens of milliseconds).
"""

from __future__ import annotations

import os

_OUT = os.environ.get("DREAMLAB_PROFILE")


def _install() -> None:  # noqa: C901 (one place for every hook)
    import functools
    import importlib.abc
    import json
    import sys
    import threading
    import time

    t0 = time.time()
    log = open(os.path.join(_OUT, f"{os.getpid()}.jsonl"), "a", buffering=1)
    lock = threading.Lock()
    local = threading.local()

    def write(record: dict) -> None:
        with lock:
            log.write(json.dumps(record) + "\n")

    def started_at() -> float:
        """This process's start (the kernel's clock ticks since boot), as a wall-clock time."""
        try:
            with open("/proc/self/stat") as f:
                ticks = int(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as f:
                boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
            return boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, StopIteration):
            return t0

    write({"kind": "process", "pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:3],
           "started": started_at(), "t0": t0})

    def forked() -> None:
        """A worker forked from the parallel launcher's preloaded server: its own file and
        process record, from the fork on (it never runs atexit: no exit record)."""
        nonlocal log, lock
        now = time.time()
        log, lock = open(os.path.join(_OUT, f"{os.getpid()}.jsonl"), "a", buffering=1), threading.Lock()
        write({"kind": "process", "pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:3],
               "started": now, "t0": now, "forked": True})

    os.register_at_fork(after_in_child=forked)

    class Span:
        __slots__ = ("category", "detail", "start", "children")

        def __init__(self, category: str, detail: str = ""):
            self.category, self.detail = category, detail

        def __enter__(self):
            stack = local.__dict__.setdefault("stack", [])
            self.start, self.children = time.time(), 0.0
            stack.append(self)
            return self

        def __exit__(self, *exc):
            end = time.time()
            stack = local.stack
            stack.pop()
            duration = end - self.start
            if stack:
                stack[-1].children += duration
            main = threading.current_thread() is threading.main_thread()
            write({"kind": "span", "pid": os.getpid(), "thread": "main" if main else "background",
                   "category": self.category, "detail": self.detail, "start": self.start, "end": end,
                   "top": not stack, "self": duration - self.children})
            return False

    def depth() -> int:
        return len(local.__dict__.get("stack", ()))

    def timed(fn, category, main_only=False):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if main_only and threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            with Span(category):
                return fn(*args, **kwargs)
        wrapper.__profiled__ = True
        return wrapper

    def background_only(fn, category):
        """MLflow's client calls are timed on the writer threads only: on the main thread their
        time stays with the dreamlab step that made them."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                return fn(*args, **kwargs)
            with Span(category):
                return fn(*args, **kwargs)
        return wrapper

    # --- the step: the first call of a compiled step traces it; the first call at a new size
    # pays the kernels' set-up for that size (oneDNN primitives); the rest are steps.
    seen_steps: set = set()
    seen_sizes: set = set()

    def step_wrapper(fn):
        @functools.wraps(fn)
        def step(self, x, *args, **kwargs):
            shape = "x".join(str(int(d)) for d in tuple(x.shape)[:2])
            if id(self) not in seen_steps:
                seen_steps.add(id(self))
                seen_sizes.add((id(self), shape))
                category = "compile:trace"
            elif (id(self), shape) not in seen_sizes:
                seen_sizes.add((id(self), shape))
                category = "compile:size"
            else:
                category = "step"
            with Span(category, f"{id(self)}:{shape}"):
                out = fn(self, x, *args, **kwargs)
                float(out[1])  # the loop reads the loss right after: its wait belongs to the step
                return out
        return step

    def on_octave_wrapper(fn):
        @functools.wraps(fn)
        def dream(*args, **kwargs):
            callback = kwargs.get("on_octave")
            if callback is not None:
                kwargs["on_octave"] = timed(callback, "octave:callback")
            with Span("dream:schedule"):
                return fn(*args, **kwargs)
        return dream

    def launcher_wrapper(fn):
        @functools.wraps(fn)
        def instantiate(*args, **kwargs):
            launcher = fn(*args, **kwargs)
            launcher.launch = timed(launcher.launch, "launcher")
            return launcher
        return instantiate

    # module -> [(attribute path, category or a wrapper factory)]
    HOOKS = {
        "hydra.core.utils": [("run_job", "hydra:run_job")],
        "hydra._internal.config_loader_impl": [("ConfigLoaderImpl.load_sweep_config", "hydra:compose")],
        # Hydra's plugin scan executes launcher modules itself, past the import system: the
        # launcher is timed on the instance Hydra makes.
        "hydra.core.plugins": [("Plugins.instantiate_launcher", launcher_wrapper)],
        "dreamlab.sweep": [("MlflowSweep.on_multirun_start", "sweep:start"),
                           ("MlflowSweep.on_multirun_end", "sweep:end"),
                           ("_gallery", "sweep:gallery")],
        "dreamlab.runs": [("cleanup", "sweep:start")],
        "dreamlab.plots": [("contact_sheet", "sweep:contact_sheet"), ("loss_overlay", "sweep:loss_overlay"),
                           ("loss_curve", "job:loss_plot")],
        "dreamlab.jobs": [("run", "job:setup"), ("_freeze_long_lived", "job:setup"),
                          ("_fingerprint", "job:setup"), ("_resume", "job:setup"),
                          ("_start_run", "mlflow:start_run"), ("dream_job", "job:after"),
                          ("_dream", "job:dream_setup"), ("_log_speed", "octave:mlflow")],
        "dreamlab.slots": [("configure", "job:setup")],
        "dreamlab.validate": [("job", "job:setup")],
        "dreamlab.engine.schedule": [("dream", on_octave_wrapper), ("compiled_step", "step:object")],
        "dreamlab.engine.steps": [("DreamStep.__init__", "step:object"), ("DreamStep.step", step_wrapper)],
        "dreamlab.backbones": [("load", "model:build")],
        "dreamlab.images": [("save_png", "job:save_png")],
        "dreamlab.gallery": [("save_octave", "octave:picture")],
        "dreamlab.tracking": [("JobRun.__init__", "mlflow:start_run"), ("environment", "mlflow:start_run"),
                              ("JobRun.log_octave", "octave:mlflow"), ("JobRun.log_image", "octave:mlflow"),
                              ("JobRun.log_artifact", "mlflow:artifacts"), ("JobRun.log_text", "mlflow:artifacts"),
                              ("JobRun.end", "mlflow:end"), ("JobRun.end_later", "mlflow:end"),
                              ("finish_pending", "mlflow:end")],
        "mlflow.tracking.client": [(f"MlflowClient.{name}", f"writer:{what}") for name, what in (
            ("log_image", "pictures"), ("log_batch", "metrics"), ("log_artifact", "artifacts"),
            ("log_text", "artifacts"), ("set_terminated", "end"), ("set_tag", "end"))],
    }

    def patch(module) -> None:
        for path, how in HOOKS.get(module.__name__, ()):
            owner, *attrs = path.split(".")
            target = module
            names = [owner, *attrs]
            for name in names[:-1]:
                target = getattr(target, name, None)
            fn = getattr(target, names[-1], None) if target is not None else None
            if fn is None or getattr(fn, "__profiled__", False):
                continue
            if callable(how):
                wrapped = how(fn)
            elif how.startswith("writer:"):
                wrapped = background_only(fn, how)
            else:
                wrapped = timed(fn, how)
            wrapped.__profiled__ = True
            setattr(target, names[-1], wrapped)

    # --- imports: the first import of a heavy library, outermost only (what it imports is its
    # own time), and the post-import hooks above.
    LIBRARIES = {"tensorflow": "import:tensorflow", "keras": "import:tensorflow", "tf_keras": "import:tensorflow",
                 "mlflow": "import:mlflow", "sqlalchemy": "import:mlflow", "alembic": "import:mlflow",
                 "pandas": "import:mlflow", "matplotlib": "import:matplotlib", "PIL": "import:pillow",
                 "hydra": "import:hydra", "omegaconf": "import:hydra", "jax": "import:jax", "jaxlib": "import:jax"}

    class Loader(importlib.abc.Loader):
        def __init__(self, inner, category):
            self.inner, self.category = inner, category

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def create_module(self, spec):
            return self.inner.create_module(spec)

        def exec_module(self, module):
            spec = module.__spec__
            spec.loader = module.__loader__ = self.inner
            try:
                if self.category and not local.__dict__.get("importing"):
                    local.importing = True
                    try:
                        with Span(self.category, module.__name__):
                            self.inner.exec_module(module)
                    finally:
                        local.importing = False
                else:
                    self.inner.exec_module(module)
            finally:
                patch(module)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            category = LIBRARIES.get(name.partition(".")[0])
            if name not in HOOKS and (category is None or local.__dict__.get("importing")):
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            spec.loader = Loader(spec.loader, category)
            return spec

    sys.meta_path.insert(0, Finder())

    import atexit

    atexit.register(lambda: write({"kind": "exit", "pid": os.getpid(), "t": time.time()}))
    del depth


if _OUT:
    _install()
