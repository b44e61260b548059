"""The DeepDream engine: a compiled gradient-ascent step and the octave schedule around it.

Usable from a notebook with plain values, no Hydra or MLflow:

    import dreamlab
    result = dreamlab.dream(photo, backbone="mobilenet_v2", weights="w.weights.h5",
                            layers="block_12_add", octaves=3, steps=10)
    result.image, result.losses

Its parts: `schedule` (octave sizes, resizes, detail, colours, the loop: written once, on
numpy and keras.ops), `maths` (input normalisation, objective, gradient normalisation:
written once, on keras.ops), `steps` (the process-wide cache of compiled steps) and
`backends/` (one small module per Keras backend: the compiled gradient step, its tile loop,
threads, devices and determinism). As Keras keeps one trainer and a small one per backend.
"""

from ..objective import Objective, parse_layers  # noqa: F401  (engine.parse_layers, as before)
from .schedule import (DreamResult, check_sizes, dream, dream_zoom, octave_sizes, to_uint8,  # noqa: F401
                       to_unit, zoom, zoom_bilinear)
from .steps import _STEPS, DreamStep, compiled_step  # noqa: F401
