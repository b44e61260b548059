"""The knobs of the DeepDream algorithm: one dataclass, the single source of their names,
defaults and meanings. The defaults are the `google` recipe (conf/recipe/google.yaml), the
default of the app too.

The Hydra schema (`dreamlab.config.Config`) extends this class, so every field here is a
top-level config key (`octaves=5`), the keyword of `dreamlab.dream(...)` and the MLflow param
of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from .errors import DreamlabError

OBJECTIVES = ("mean", "mean_square", "l2")
GRAD_NORMS = ("std", "mean_abs", "mean_abs_keras", "l2")
DETAILS = ("dream", "photo", "none")
OCTAVE_SIZES = ("round_previous", "floor_base", "floor_base_float32")
RESIZES = ("align_corners", "half_pixel")
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass
class DreamSettings:
    # Octaves: the image is dreamt at `octaves` sizes, smallest first, each `octave_scale`
    # times the previous; `octaves_above` of them are larger than the input (the tutorial's 2).
    octaves: int = 4
    octave_scale: float = 1.4
    octaves_above: int = 0
    # How each octave's size is computed, exactly as each reference does it (a size one pixel
    # off changes every pixel of the dream): round_previous (Google: round(side * (1/scale))
    # of the previous level, the size scipy.ndimage.zoom gives), floor_base (Keras example:
    # int(base / scale**i)), floor_base_float32 (tutorial: int(float32(base) * scale**n),
    # computed in float32 as its tf.cast does, which differs from floor_base at some sizes).
    octave_sizes: str = "round_previous"
    # How images are resized between octaves (both bilinear): align_corners (Google's
    # scipy.ndimage.zoom(order=1): corner pixels map to corner pixels) or half_pixel
    # (tf.image.resize, the tutorial and the Keras example: pixel centres scale).
    resize: str = "align_corners"
    # Gradient-ascent steps per octave.
    steps: int = 10
    # Step size in units of the [-1, 1] image range (Google's 1.5 pixel step is 1.5/127.5);
    # the same value means the same visual strength on every backbone.
    step_size: float = 0.011764706
    # Score of a layer: mean (tutorial), mean_square (Keras example), l2 = 0.5*sum(a^2) (Google).
    objective: str = "l2"
    # Pixels left out at each border of the activation (the Keras example's 2); the divisor
    # stays the full size, as in the reference.
    objective_border: int = 0
    # Gradient normalisation: std (tutorial), mean_abs (Google: x += step_size / mean|g| * g),
    # mean_abs_keras (the Keras example: g /= mean|g|; x += step_size * g), l2 (root mean
    # square). The two mean_abs are the same maths in another order of float operations,
    # which gradient ascent amplifies: one for the other is ~28 dB from the reference.
    grad_norm: str = "mean_abs"
    # What travels up the octaves: dream (Google: the dreamt detail), photo (Keras: the
    # photo's lost detail), none (tutorial: the image is just resized).
    detail: str = "dream"
    # Random roll of at most this many pixels before every step (0 = off).
    jitter: int = 32
    # Clip to the valid pixel range after every step.
    clip: bool = True
    # Stop an octave once its loss exceeds this (the Keras example's 15); null = never.
    max_loss: Optional[float] = None
    # Octaves larger than this are computed tile by tile over a randomly rolled image, so
    # memory is bounded by the tile, not the picture (0 = always the whole image at once).
    tile_size: int = 512
    # Seeds the jitter and the noise image; same seed, config and machine: same bytes.
    seed: int = 0
    # Keep the photo's colours: only the luminance of the dream is kept.
    preserve_colors: bool = False
    # Arithmetic of the network: float32, or mixed_bfloat16 (bfloat16 activations, float32
    # weights, BatchNorm folded into the convolutions): 2.4x faster steps on CPUs with AMX,
    # but gradient ascent amplifies its rounding into a different picture (~25 dB PSNR from
    # float32), so float32 stays the default (README, Performance).
    precision: str = "float32"
    # TensorFlow's deterministic ops (same config, seed and machine: same bytes). Free on
    # CPUs; on GPUs some ops are slower and a few have no deterministic kernel at all, which
    # stops the dream with an error naming this key: false then runs it, not byte-exact.
    deterministic: bool = True

    def __post_init__(self) -> None:
        check(self.octaves >= 1, "octaves must be >= 1", "octaves=4")
        check(self.octave_scale > 1.0, "octave_scale must be > 1", "octave_scale=1.4")
        check(0 <= self.octaves_above < self.octaves or self.octaves_above == 0,
              "octaves_above must be between 0 and octaves-1", "octaves_above=0")
        check(self.octave_sizes in OCTAVE_SIZES,
              f"octave_sizes must be one of {'|'.join(OCTAVE_SIZES)}", "octave_sizes=round_previous")
        check(self.resize in RESIZES, f"resize must be one of {'|'.join(RESIZES)}", "resize=half_pixel")
        check(self.steps >= 1, "steps must be >= 1", "steps=10")
        check(self.step_size > 0, "step_size must be > 0", "step_size=0.01")
        check(self.objective in OBJECTIVES, f"objective must be one of {'|'.join(OBJECTIVES)}",
              "objective=mean_square")
        check(self.objective_border >= 0, "objective_border must be >= 0", "objective_border=0")
        check(self.grad_norm in GRAD_NORMS, f"grad_norm must be one of {'|'.join(GRAD_NORMS)}",
              "grad_norm=std")
        check(self.detail in DETAILS, f"detail must be one of {'|'.join(DETAILS)}", "detail=dream")
        check(self.jitter >= 0, "jitter must be >= 0", "jitter=32")
        check(self.tile_size >= 0, "tile_size must be >= 0 (0 = no tiling)", "tile_size=512")
        check(self.seed >= 0, "seed must be >= 0", "seed=0")
        check(self.precision in PRECISIONS, f"precision must be one of {'|'.join(PRECISIONS)}",
              "precision=mixed_bfloat16")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(DreamSettings)]


def check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise DreamlabError(f"{problem} (for example {fix})")
