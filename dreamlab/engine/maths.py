"""The step's maths, written once on `keras.ops`: the backbone's input normalisation, the
objective of each layer (with its channels and guide) and the normalised update. Each
backend's step (dreamlab.engine.backends) calls these inside its compiled function and adds
only the gradient itself.

On TensorFlow each `keras.ops` call here is the very TensorFlow op the engine used before
(tf.reduce_sum, tf.math.reduce_std, tf.gather, tf.clip_by_value, ...), so the pictures are
the same bytes; tests/test_engine.py holds them to that.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import backbones
from ..objective import Objective


class Maths:
    """What the step computes besides the gradient, for one backbone and objective."""

    def __init__(self, backbone: str, objective: Objective, grad_norm: str, clip: bool):
        info = backbones.spec(backbone)
        pre = backbones.PREPROCESS[info.preprocess]
        self.objective, self.grad_norm, self.clip = objective, grad_norm, clip
        self.identity_input = info.preprocess == "tf"
        self.order = list(pre["order"])
        self.mean = np.asarray(pre["mean"], np.float32)
        self.std = np.asarray(pre["std"], np.float32)
        self.guides: Optional[list] = None

    def to_input(self, x):
        """[-1, 1] RGB to what the backbone was trained on (exactly x for the `tf` family)."""
        if self.identity_input:
            return x
        from keras import ops

        rgb255 = (x + 1.0) * 127.5
        return (ops.take(rgb255, self.order, axis=-1) - self.mean) / self.std

    @staticmethod
    def select(term, a):
        from keras import ops

        a = ops.cast(a, "float32")
        # Negative channels count from the end, as Python indices.
        return ops.take(a, [c % a.shape[-1] for c in term.channels], axis=-1) if term.channels else a

    def set_guide(self, features: Sequence) -> None:
        """Guide features y_l (M x C) per layer, from the guide picture's activations: the
        objective then becomes sum_i max_j a_i . y_j, whose gradient at the layer is Google's
        objective_guide. Stored transposed (C x M) for the product."""
        from keras import ops

        self.guides = [ops.transpose(ops.reshape(g, [-1, g.shape[-1]])) for g in (
            self.select(term, a) for term, a in zip(self.objective.terms, features))]

    def score(self, activations: Sequence):
        """The objective of one image or tile, from its layers' activations."""
        from keras import ops

        total = 0.0
        b = self.objective.border
        for n, (term, a) in enumerate(zip(self.objective.terms, activations)):
            a = self.select(term, a)
            size = ops.cast(ops.size(a), "float32")
            kept = a[:, b:-b, b:-b, :] if b else a
            if self.guides is not None:
                flat = ops.reshape(kept, [-1, kept.shape[-1]])
                s = ops.sum(ops.max(ops.matmul(flat, self.guides[n]), axis=1))
            elif self.objective.form == "mean":
                s = ops.sum(kept) / size
            elif self.objective.form == "mean_square":
                s = ops.sum(ops.square(kept)) / size
            else:  # l2: Google's 0.5*sum(a^2), whose gradient at the layer is a itself
                s = 0.5 * ops.sum(ops.square(kept))
            total += term.weight * s
        return total

    def apply(self, x, g, step_size):
        """x moved up the normalised gradient g (and clipped)."""
        from keras import ops

        # Each update is written in its reference's order of operations: gradient ascent
        # amplifies rounding, and a reordered product drifts to ~29 dB from the reference.
        if self.grad_norm == "std":  # the tutorial: g /= std + 1e-8; x += g * step_size
            x = x + g / (ops.std(g) + 1e-8) * step_size
        elif self.grad_norm == "mean_abs":  # Google: x += step_size / mean|g| * g (a 1e-6 floor)
            x = x + step_size / ops.maximum(ops.mean(ops.abs(g)), 1e-6) * g
        elif self.grad_norm == "mean_abs_keras":  # g /= max(mean|g|, 1e-6); x += step_size * g
            x = x + step_size * (g / ops.maximum(ops.mean(ops.abs(g)), 1e-6))
        else:  # l2, scaled to unit root mean square so step_size keeps its meaning
            x = x + g / (ops.sqrt(ops.mean(ops.square(g))) + 1e-8) * step_size
        if self.clip:
            x = ops.clip(x, -1.0, 1.0)
        return x


def tile_bounds(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Even tiles: n tiles per side of about h/n >= tile/2 pixels, never a sliver that the
    network cannot take; at most two tile heights and two widths per picture size, so a
    backend that compiles per shape compiles at most four tile shapes per octave."""
    ny, nx = -(-h // tile), -(-w // tile)
    return [(i * h // ny, (i + 1) * h // ny, j * w // nx, (j + 1) * w // nx)
            for i in range(ny) for j in range(nx)]
