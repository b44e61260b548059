"""Time of one dream step: InceptionV3, layers mixed3+mixed5, random weights, one octave.

    .venv/bin/python benchmarks/step_time.py [SIZE ...]      (default 256 512)
"""

import sys
import time

import numpy as np

from dreamlab import engine
from dreamlab.objective import Objective, Term
from dreamlab.settings import DreamSettings


def ms_per_step(size: int, steps: int = 10) -> float:
    import tensorflow as tf

    s = DreamSettings()
    objective = Objective((Term("mixed3"), Term("mixed5")), s.objective, s.objective_border)
    step = engine.compiled_step("inception_v3", None, objective, s.grad_norm, s.clip)
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (size, size, 3)).astype(np.float32))
    args = (tf.constant([3, -5], tf.int32), tf.constant(0.01), tf.constant(0, tf.int32))
    for _ in range(2):  # trace and warm up
        x, loss = step.step(x, *args)
    float(loss)
    start = time.perf_counter()
    for _ in range(steps):
        x, loss = step.step(x, *args)
        float(loss)  # as the dream loop does: one loss per step
    return (time.perf_counter() - start) / steps * 1000


if __name__ == "__main__":
    for size in [int(a) for a in sys.argv[1:]] or [256, 512]:
        print(f"{size}x{size}: {ms_per_step(size):.1f} ms/step")
