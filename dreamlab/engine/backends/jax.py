"""The JAX step: `jax.value_and_grad` over the extractor's `stateless_call` (as in Keras'
custom-JAX-workflow example), under `jax.jit`.

`jax.jit` compiles per input shape, and every octave size is a shape: a step compiles each
(model, objective, shape) once per process, and JAX's persistent compilation cache
(`configure`'s folder) keeps the compiled code across processes and jobs, so a sweep on one
photo compiles each size once. The weights are arguments of the compiled function, not
constants folded into it, so compiling does not copy the network into the program.

Tiles: the same even tiles as TensorFlow's (maths.tile_bounds: at most two heights and two
widths per octave, so at most four compiled tile shapes), each tile's gradient compiled
alone and taken in a Python loop, so that memory stays bounded by the tile.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ...errors import DreamlabError, first_line
from ..maths import Maths, tile_bounds

NAME = "jax"
# XLA's flag: its GPU kernels without a deterministic form (select-and-scatter, the max-pool
# gradient, among them) then fail to compile instead of running nondeterministically.
DETERMINISTIC_OPTION = "xla_gpu_deterministic_ops"
PREALLOCATE_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE"
FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
ALLOCATOR_ENV = "XLA_PYTHON_CLIENT_ALLOCATOR"


def set_determinism(on: bool) -> None:
    """Per compiled step on JAX (`Step(deterministic=)`): nothing process-wide to set."""
    del on


def configure(threads: int, cores: list[int], cache_dir: Optional[str] = None,
              shared_gpu: bool = False) -> dict[str, str]:
    """Before JAX starts its runtime. Threads: XLA sizes its CPU thread pool by the cores the
    process may use (its affinity; jax-ml/jax#1539 calls that the way to limit it), so
    `threads` fewer than those cores pins the process to the first `threads` of them; the
    count changes a picture's last bits on JAX too (measured: InceptionV3, 256 px, 1 and 2
    cores), and JAX cannot run more threads than cores. GPU memory: JAX takes 75% of the GPU
    when it starts, so a process that shares its GPU (`shared_gpu`) allocates on demand
    instead, unless the user set XLA_PYTHON_CLIENT_* already. The persistent compilation
    cache goes to `cache_dir`."""
    if threads < len(cores) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores[:threads])
    if shared_gpu and not any(k in os.environ for k in (PREALLOCATE_ENV, FRACTION_ENV, ALLOCATOR_ENV)):
        os.environ[PREALLOCATE_ENV] = "false"
    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Every step compiles in well over this; smaller programs are not worth a file.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    used = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else threads
    return {"env.threads": str(used), "env.inter_op_threads": str(used),
            "env.gpu_memory": gpu_memory() if on_gpu() else f"{gpu_memory()} (no GPU found)"}


def gpu_memory() -> str:
    """How this process takes GPU memory: JAX's default (75% at start), on demand, or a fraction."""
    if os.environ.get(ALLOCATOR_ENV) == "platform":
        return "on demand (platform allocator)"
    if os.environ.get(PREALLOCATE_ENV, "").lower() == "false":
        return "on demand (no preallocation)"
    return f"preallocate {os.environ.get(FRACTION_ENV, '0.75')}"


def gpus() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()
            if d.platform != "cpu"]


def peak_memory_mb() -> Optional[float]:
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return stats["peak_bytes_in_use"] / 2 ** 20 if stats and "peak_bytes_in_use" in stats else None


def on_gpu() -> bool:
    import jax

    return jax.devices()[0].platform != "cpu"


def refusal(exc: BaseException) -> Optional[BaseException]:
    """XLA's refusal of an op with no deterministic GPU kernel, as one line; else None."""
    text = str(exc)
    if "determinis" in text.lower() and ("XlaRuntimeError" in type(exc).__name__ or "UNIMPLEMENTED" in text
                                         or "INVALID_ARGUMENT" in text):
        return DreamlabError(f"this GPU has no deterministic kernel for an op of the dream "
                             f"({first_line(exc)[:300]}): set deterministic=false to run it (XLA's "
                             f"{DETERMINISTIC_OPTION} is then off and the last bits may differ "
                             f"from run to run)")
    return None


class Step:
    """The JAX twin of backends.tensorflow.Step: `step(x, roll, step_size, tile)` -> (x, loss)."""

    def __init__(self, model, extractor, maths: Maths, guide: Optional[np.ndarray] = None,
                 deterministic: bool = True):
        import jax
        import jax.numpy as jnp

        self.model, self.extractor, self.maths = model, extractor, maths
        self._tv = [v.value for v in extractor.trainable_variables]
        self._ntv = [v.value for v in extractor.non_trainable_variables]

        def features(x, tv, ntv):
            out, _ = extractor.stateless_call(tv, ntv, maths.to_input(x)[None], training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        if guide is not None:
            maths.set_guide(jax.jit(features)(jnp.asarray(guide), self._tv, self._ntv))

        self._traced = 0

        def score(x, tv, ntv):
            self._traced += 1  # runs once per trace, never in the compiled program
            return maths.score(features(x, tv, ntv))

        gradient = jax.value_and_grad(score)

        def whole(x, roll, step_size, tv, ntv):
            loss, g = gradient(jnp.roll(x, roll, axis=(0, 1)), tv, ntv)
            return maths.apply(x, jnp.roll(g, -roll, axis=(0, 1)), step_size), loss

        def finish(x, g, roll, step_size):
            return maths.apply(x, jnp.roll(g, -roll, axis=(0, 1)), step_size)

        options = {DETERMINISTIC_OPTION: True} if deterministic and on_gpu() else None
        self._whole = jax.jit(whole, compiler_options=options)
        self._tile = jax.jit(gradient, compiler_options=options)
        self._roll = jax.jit(lambda x, roll: jnp.roll(x, roll, axis=(0, 1)))
        self._finish = jax.jit(finish, compiler_options=options)
        self._jnp = jnp

    def step(self, x, roll, step_size, tile: int = 0):
        roll = np.asarray(roll, np.int32)
        if tile <= 0:
            return self._whole(x, roll, step_size, self._tv, self._ntv)
        jnp = self._jnp
        rolled = self._roll(x, roll)
        h, w = x.shape[:2]
        loss, rows, row, last = 0.0, [], [], None
        for y0, y1, x0, x1 in tile_bounds(h, w, tile):
            if last is not None and y0 != last:
                rows.append(jnp.concatenate(row, axis=1))
                row = []
            score, g = self._tile(rolled[y0:y1, x0:x1], self._tv, self._ntv)
            row.append(g)
            loss, last = loss + score, y0
        rows.append(jnp.concatenate(row, axis=1))
        return self._finish(x, jnp.concatenate(rows, axis=0), roll, step_size), loss

    @property
    def traces(self) -> int:
        """How often the objective was traced: once per step shape and tile shape seen."""
        return self._traced
