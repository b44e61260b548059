"""Compiled steps: one per (backbone, objective, normalisation, guide, precision, determinism,
backend), built once and reused by every later picture and job of the process."""

from __future__ import annotations

import functools
import hashlib
from typing import Optional

import numpy as np

from .. import backbones
from ..errors import DreamlabError
from ..objective import Objective
from . import backends
from .maths import Maths


class DreamStep:
    """A backend's compiled step (backends.<name>.Step) with what the schedule asks of it.

    `step(x, roll, step_size, tile)`: x is the image in [-1, 1] (H, W, 3) as the backend's
    tensor; it is rolled by `roll` pixels, the objective's gradient is computed over tiles of
    at most `tile` pixels (0: the whole image at once), rolled back, normalised and added;
    returns (x, loss). Nothing in it returns to Python: the loop reads one loss per step.
    """

    def __init__(self, model, backbone: str, objective: Objective, grad_norm: str, clip: bool,
                 guide: Optional[np.ndarray] = None, deterministic: bool = True,
                 backend: Optional[str] = None):
        import keras

        self.model, self.objective = model, objective
        self.backend = backend or backends.active()
        outputs = [model.get_layer(name).output for name in objective.layers]
        self.extractor = keras.Model(model.inputs, outputs)
        maths = Maths(backbone, objective, grad_norm, clip)
        module = backends.module(self.backend)
        self.impl = module.Step(model, self.extractor, maths, guide, deterministic)

    def step(self, x, roll, step_size, tile: int = 0):
        return self.impl.step(x, roll, step_size, tile)

    @property
    def traces(self) -> int:
        return self.impl.traces

    def fits(self, side: int) -> bool:
        """Whether these layers take a picture whose shorter side is `side` px."""
        return backbones.fits(self.extractor, side)

    @functools.cached_property
    def min_size(self) -> int:
        """What these layers need, often far less than the constructor's minimum. Searched
        only to word an error: a job checks its smallest octave with one `fits`."""
        return backbones.min_size(self.extractor)


# Compiled steps, most recently used last. A step holds its model, so a step whose model left
# the model cache (backbones.MODEL_CACHE) is dropped too: memory stays bounded by the model
# cache, and the step a job is using is the most recent one, never dropped under it.
_STEPS: backbones.LRU = backbones.LRU(4 * backbones.MODEL_CACHE)


def compiled_step(backbone: str, weights: Optional[str], objective: Objective,
                  grad_norm: str, clip: bool, guide: Optional[np.ndarray] = None,
                  precision: str = "float32", deterministic: bool = True) -> DreamStep:
    """The process-wide step for this (backbone, objective, normalisation, guide, precision):
    built once, reused by every later picture and job of the process."""
    guide_id = None if guide is None else hashlib.sha256(guide.tobytes()).hexdigest()
    backend = backends.active()
    key = (backbone, weights, objective, grad_norm, clip, guide_id, precision, deterministic, backend)
    model = backbones.load(backbone, weights, precision)
    step = _STEPS.get(key)
    if step is None or step.model is not model:  # new, or its model was rebuilt since
        backbones.check_layers(model, backbone, objective.layers)
        _check_channels(model, objective)
        step = DreamStep(model, backbone, objective, grad_norm, clip, guide, deterministic, backend)
    _STEPS.put(key, step)
    alive = {id(m) for m in backbones._MODELS.values()}
    for stale in [k for k, s in _STEPS.items() if id(s.model) not in alive]:
        del _STEPS[stale]
    return step


def _check_channels(model, objective: Objective) -> None:
    for term in objective.terms:
        n = model.get_layer(term.layer).output.shape[-1]
        bad = [c for c in term.channels if not -n <= c < n]
        if bad:
            raise DreamlabError(f"layers.{term.layer}: channels {bad} out of range, the layer has "
                                f"{n} channels (0..{n - 1}, or -{n}..-1 counted from the end)")
