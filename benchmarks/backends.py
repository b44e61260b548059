"""The dream step on each Keras backend: ms/step and the compile time of each new shape.

    .venv/bin/python benchmarks/backends.py [tensorflow|jax ...]     (default: both)

Each backend runs in a fresh process (a process keeps one backend) with every core this
process may use, and dreamlab's own compiled step: InceptionV3 mixed3+mixed5, random weights,
one octave, no tiles, at 256, 512 and 1024 px. For each size: the first call (trace and
compile, plus one step) and the best of several steps after it, as bench.py's step section
times TensorFlow; compile seconds are the first call less that step. JAX's persistent
compilation cache is not configured here, so every shape compiles for real. `make bench`
runs it as its backends section and adds GFLOP/s from the layers' FLOPs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SIZES = (256, 512, 1024)

CHILD = r"""
import json, sys, time
import numpy as np
from dreamlab.engine import backends
backends.use(sys.argv[1])
import keras
from keras import ops
from dreamlab import engine
from dreamlab.objective import Objective, Term
from dreamlab.settings import DreamSettings
s = DreamSettings()
step = engine.compiled_step("inception_v3", None, Objective((Term("mixed3"), Term("mixed5")), s.objective,
                            s.objective_border), s.grad_norm, s.clip)
out = {"backend": backends.version(sys.argv[1]), "sizes": {}}
rng = np.random.default_rng(0)
rate = np.float32(0.01)
for size in json.loads(sys.argv[2]):
    x = ops.convert_to_tensor(rng.uniform(-1, 1, (size, size, 3)).astype(np.float32))
    began = time.perf_counter()
    x, loss = step.step(x, np.array([3, 5], np.int32), rate, 0); float(loss)
    first = time.perf_counter() - began
    times = []
    for _ in range(7 if size < 1024 else 4):
        roll = rng.integers(-32, 33, size=2).astype(np.int32)
        began = time.perf_counter(); x, loss = step.step(x, roll, rate, 0); float(loss)
        times.append(time.perf_counter() - began)
    best = min(times)
    out["sizes"][size] = {"ms_per_step": 1000 * best, "first_call_s": first, "compile_s": max(0.0, first - best)}
print("RESULT " + json.dumps(out))
"""


def measure(backend: str, sizes=SIZES) -> dict:
    """{"backend": "jax 0.10.2", "sizes": {size: {ms_per_step, first_call_s, compile_s}}}."""
    done = subprocess.run([sys.executable, "-c", CHILD, backend, json.dumps(list(sizes))],
                          capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"backends: the {backend} step failed:\n{done.stderr[-2000:]}")
    result = json.loads(line[len("RESULT "):])
    result["sizes"] = {int(k): v for k, v in result["sizes"].items()}
    return result


if __name__ == "__main__":
    for name in sys.argv[1:] or ["tensorflow", "jax"]:
        print(json.dumps(measure(name)))
