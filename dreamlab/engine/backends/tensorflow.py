"""The TensorFlow step: a `tf.function` whose input signature has unknown height and width,
so it is traced once per (backbone, objective, normalisation) and reused for every octave
size and every picture of the process, and its in-graph tile loop.

It is not XLA-compiled (`jit_compile`): on a CPU that measured 316 ms against 251 ms per
InceptionV3 step at 512 px, and on a GPU XLA has no deterministic kernel for the max-pool
gradient (tensorflow/tensorflow#69417), which TensorFlow's own kernels have.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from ...errors import DreamlabError, first_line
from ..maths import Maths

NAME = "tensorflow"


@functools.cache
def _tf():
    import tensorflow as tf

    return tf


def set_determinism(on: bool) -> None:
    """Process-wide in TensorFlow; set before each dream, and part of the compiled step's key
    so that a step built one way is never run the other way."""
    tf = _tf()
    if on:
        tf.config.experimental.enable_op_determinism()
        return
    # TensorFlow exports only the switch on; the switch off is private (dreamlab.internals).
    from ...internals import tf_disable_op_determinism

    tf_disable_op_determinism()


def configure(threads: int, cores: list[int], cache_dir: Optional[str] = None,
              shared_gpu: bool = False) -> dict[str, str]:
    """Size TensorFlow's pools for this process: intra-op `threads` (it shapes a picture's
    last bits: oneDNN splits some gradients by thread), inter-op the cores it may use.
    `cache_dir` is unused: a tf.function traces per process, and nothing is compiled ahead.
    GPU memory grows on demand whether or not the GPU is shared."""
    del cache_dir, shared_gpu
    tf = _tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(len(cores))
    except RuntimeError:  # TensorFlow already ran an op (a notebook, a test): keep its pools
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:  # two workers may share a GPU; without growth the first one takes all its memory
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    return {"env.threads": str(tf.config.threading.get_intra_op_parallelism_threads() or threads),
            "env.inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads() or len(cores)),
            "env.gpu_memory": "growth"}


def gpus() -> list[str]:
    return [d.name for d in _tf().config.list_physical_devices("GPU")]


def on_gpu() -> bool:
    return bool(gpus())


def peak_memory_mb() -> Optional[float]:
    tf = _tf()
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def refusal(exc: BaseException) -> Optional[BaseException]:
    """The one-line error for a device without a deterministic kernel, or None."""
    if isinstance(exc, _tf().errors.UnimplementedError) and "determinis" in str(exc):
        return deterministic_refused(exc)
    return None


def deterministic_refused(exc: BaseException) -> DreamlabError:
    return DreamlabError(f"this device has no deterministic kernel for an op of the dream ({first_line(exc)}): "
                         f"set deterministic=false to run it, with pictures that may then differ "
                         f"from run to run in their last bits")


class Step:
    """One gradient-ascent step of an objective on a backbone, compiled once for all sizes.

    `step(x, roll, step_size, tile)`: x is the image in [-1, 1] (H, W, 3); it is rolled by
    `roll` pixels, the objective's gradient is computed over tiles of at most `tile` pixels
    (0: the whole image at once), rolled back, normalised and added; returns (x, loss).
    Nothing in it returns to Python: the loop reads one loss per step, which it logs.
    """

    def __init__(self, model, extractor, maths: Maths, guide: Optional[np.ndarray] = None,
                 deterministic: bool = True):
        # TensorFlow's determinism is process-wide (set_determinism), set before each dream.
        del deterministic
        tf = _tf()
        self.model, self.extractor, self.maths = model, extractor, maths
        if guide is not None:
            maths.set_guide(self._features(tf.constant(guide)))
        image, roll, scalar = (tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                               tf.TensorSpec([], tf.float32))
        # Two graphs, each traced once for every size: the whole picture in one pass, and the
        # tile loop. The in-graph loop may overlap tiles (a Python loop over compiled tiles
        # measured 2.0 s per 1024 px step against its 1.4-1.6 s), but a single tile inside it
        # costs ~20% more than the plain pass (the while-loop frame keeps grappler from fusing
        # and oneDNN from taking the max-pool gradients), so a picture that fits in one tile
        # never enters it.
        # The whole-picture graph has no loop or branch on a tensor (every `if` in it is on
        # the config), so AutoGraph, which rewrites the Python it calls before tracing, has
        # nothing to convert: off, the first step (trace included) takes 1.38 s instead of
        # 2.03 s (InceptionV3 mixed3+mixed5, 2 threads, AMD EPYC), the same bytes out. A
        # branch on a tensor added there would fail at the trace, not change the graph.
        self._whole = tf.function(lambda x, roll, step_size: self._step(x, roll, step_size, None),
                                  input_signature=[image, roll, scalar], autograph=False)
        self._tiled = tf.function(self._step, input_signature=[
            image, roll, scalar, tf.TensorSpec([], tf.int32)])

    def step(self, x, roll, step_size, tile: int = 0):
        """One step; `tile` (a Python int) > 0 computes the gradient tile by tile."""
        tf = _tf()
        roll = tf.constant(roll, tf.int32)
        if tile > 0:
            return self._tiled(x, roll, step_size, tf.constant(tile, tf.int32))
        return self._whole(x, roll, step_size)

    @property
    def traces(self) -> int:
        return sum(f.experimental_get_tracing_count() for f in (self._whole, self._tiled))

    def _features(self, x):
        activations = self.extractor(self.maths.to_input(x)[None], training=False)
        if not isinstance(activations, (list, tuple)):
            activations = [activations]
        return activations

    def score(self, x):
        """The objective of one image or tile (H, W, 3)."""
        return self.maths.score(self._features(x))

    def _gradient(self, x):
        """The objective of x and its gradient with respect to x."""
        tf = _tf()
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = self.score(x)
        return score, tape.gradient(score, x)

    def _tiled_gradient(self, x, tile):
        """Loss and gradient over the whole image, tile by tile: each tile's gradient is taken
        with respect to the tile alone and the tiles are stitched back, so no full-size
        gradient exists per tile and memory is bounded by the tile (plus the image itself).
        The tiles are maths.tile_bounds, computed in the graph for any size."""
        tf = _tf()
        h, w = tf.shape(x)[0], tf.shape(x)[1]
        ny, nx = (h + tile - 1) // tile, (w + tile - 1) // tile
        rows = tf.TensorArray(tf.float32, size=ny, infer_shape=False)
        loss = tf.constant(0.0)
        for i in tf.range(ny):
            y0, y1 = i * h // ny, (i + 1) * h // ny
            # Tiles of a row are stored transposed, so that TensorArray.concat (axis 0)
            # joins them side by side.
            row = tf.TensorArray(tf.float32, size=nx, infer_shape=False)
            for j in tf.range(nx):
                x0, x1 = j * w // nx, (j + 1) * w // nx
                score, g = self._gradient(x[y0:y1, x0:x1])
                row = row.write(j, tf.transpose(g, [1, 0, 2]))
                loss += score
            rows = rows.write(i, tf.transpose(row.concat(), [1, 0, 2]))
        return loss, tf.reshape(rows.concat(), tf.shape(x))

    def _step(self, x, roll, step_size, tile):
        tf = _tf()
        rolled = tf.roll(x, roll, axis=[0, 1])
        loss, g = self._gradient(rolled) if tile is None else self._tiled_gradient(rolled, tile)
        return self.maths.apply(x, tf.roll(g, -roll, axis=[0, 1]), step_size), loss

