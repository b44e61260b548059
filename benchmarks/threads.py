"""The thread rule behind `hydra/launcher=parallel`'s default split: on this machine's cores,
is it faster to run one process with every core as intra-op threads, or one 1-thread process
per core side by side?

    .venv/bin/python benchmarks/threads.py [SIZE ...]     (default 256 512 1024)

Each process pins itself to its cores before TensorFlow starts, builds InceptionV3 (mixed3 +
mixed5, random weights), traces the step at the size, then times steps (best of several, as
bench.py's step section does). Throughput is dream steps per second of the whole machine.
`make bench` runs it as its threads section.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = r"""
import os, sys, time
cores, threads, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(len(cores.split(",")))
from dreamlab import engine
from dreamlab.objective import Objective, Term
from dreamlab.settings import DreamSettings
s = DreamSettings()
step = engine.compiled_step("inception_v3", None, Objective((Term("mixed3"), Term("mixed5")), s.objective,
                            s.objective_border), s.grad_norm, s.clip)
x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (size, size, 3)).astype(np.float32))
roll, rate = tf.constant([3, 5], tf.int32), tf.constant(0.01)
x, loss = step.step(x, roll, rate, 0); float(loss)  # trace and warm this size
times = []
for _ in range(steps):
    start = time.perf_counter(); x, loss = step.step(x, roll, rate, 0); float(loss)
    times.append(time.perf_counter() - start)
times.sort()
print(f"RESULT {1000 * times[len(times) // 2]:.1f}")
"""


def _children(groups: list[tuple[str, int]], size: int, steps: int) -> list[float]:
    """ms/step (median) of processes started together, one per (cores, threads) group."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, cores, str(threads), str(size), str(steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
             for cores, threads in groups]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        out.append(float(next(l for l in stdout.splitlines() if l.startswith("RESULT")).split()[1]))
    return out


def measure(size: int, steps: int = 8) -> dict:
    """Steps/s of the machine: one process with every core, and one 1-thread process per core."""
    cores = sorted(os.sched_getaffinity(0))
    whole = _children([(",".join(map(str, cores)), len(cores))], size, steps)[0]
    split = _children([(str(c), 1) for c in cores], size, steps)
    one = 1000 / whole
    many = sum(1000 / ms for ms in split)
    return {"size_px": size, "cores": len(cores), "one_process_ms": whole,
            "per_core_ms": sum(split) / len(split), "one_process_steps_s": one,
            "per_core_steps_s": many, "split_gain": many / one}


if __name__ == "__main__":
    for size in [int(a) for a in sys.argv[1:]] or [256, 512, 1024]:
        print(measure(size))
