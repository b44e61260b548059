"""dreamlab's compiled step against the plain script's step, in one process, alternated.

    .venv/bin/python benchmarks/step_ab.py SIZE [STEPS]

The `defaults` rows of `make bench` time whole processes (a 25-step run less a 5-step
run), as a user meets them; on a shared 2-core machine that difference moves by 10-15%
between runs. This takes the start-up out: both steps in the same process on the same
picture and roll, alternated step by step, so that a neighbour's load falls on both.
The peer is benchmarks/baseline.py's tutorial structure (a tf.function with an
unknown-size signature over the same InceptionV3 with the same random weights).
"""

from __future__ import annotations

import sys
import time

import numpy as np


def measure(size: int, steps: int = 6) -> dict:
    import keras
    import tensorflow as tf

    import bench

    ours = bench.compiled("float32")
    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(None, None, 3))
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in bench.LAYERS])

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                                  tf.TensorSpec([], tf.float32)])
    def peer(image, roll, step_size):  # benchmarks/baseline.py's gradient_ascent_step
        image = tf.roll(image, roll, axis=[0, 1])
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = tf.add_n([0.5 * tf.reduce_sum(tf.square(a)) for a in features(image[None], training=False)])
        grads = tf.roll(tape.gradient(loss, image), -roll, axis=[0, 1])
        image = tf.roll(image, -roll, axis=[0, 1])
        image = image + step_size / tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-6) * grads
        return loss, tf.clip_by_value(image, -1.0, 1.0)

    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (size, size, 3)).astype(np.float32))
    roll, step_size = tf.constant([3, 5], tf.int32), tf.constant(0.01)

    def timed(step) -> float:
        start = time.perf_counter()
        float(step())
        return time.perf_counter() - start

    run_ours = lambda: ours.step(x, roll, step_size, 0)[1]  # noqa: E731
    run_peer = lambda: peer(x, roll, step_size)[0]  # noqa: E731
    for _ in range(2):  # trace, then warm this size's caches
        timed(run_ours), timed(run_peer)
    times = {"ours": [], "peer": []}
    for _ in range(steps):
        times["ours"].append(timed(run_ours))
        times["peer"].append(timed(run_peer))
    return {k: {"best": min(v) * 1000, "median": float(np.median(v)) * 1000} for k, v in times.items()}


if __name__ == "__main__":
    size = int(sys.argv[1])
    r = measure(size, int(sys.argv[2]) if len(sys.argv) > 2 else 6)
    print(f"{size} px: dreamlab best {r['ours']['best']:.0f} ms, median {r['ours']['median']:.0f} | "
          f"plain script best {r['peer']['best']:.0f} ms, median {r['peer']['median']:.0f}")
