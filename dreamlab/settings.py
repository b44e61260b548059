"""The knobs of the DeepDream algorithm: one dataclass, the single source of their names,
defaults and meanings. The defaults are the `google` recipe (conf/recipe/google.yaml), the
default of the app too.

The Hydra schema (`dreamlab.config.Config`) extends this class, so every field here is a
top-level config key (`octaves=5`), the keyword of `dreamlab.dream(...)` and the MLflow param
of the same name.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Optional

from .errors import DreamlabError

OBJECTIVES = ("mean", "mean_square", "l2")
GRAD_NORMS = ("std", "mean_abs", "mean_abs_keras", "l2")
DETAILS = ("dream", "photo", "none")
OCTAVE_SIZES = ("round_previous", "floor_base", "floor_base_float32")
RESIZES = ("align_corners", "half_pixel")
FINAL_RESIZES = ("float", "uint8")
PRECISIONS = ("float32", "mixed_bfloat16")
BACKENDS = ("tensorflow", "jax")  # the modules of dreamlab.engine.backends

# What a key is to a run, declared once per field (`option(..., role=)`): the resume
# fingerprint, `compare` and `reproduce` all read it from here.
WORK = "work"    # shapes the picture: in the resume fingerprint, shown by compare
PLACE = "place"  # where or how a job ran or is tracked, not what it dreamt: neither
ROLES = (WORK, PLACE)


def option(default: Any = MISSING, help: str = "", *, role: str = WORK, by_content: bool = False,
           factory: Any = MISSING):
    """A schema field with its one-line meaning (the docs' options reference and `--help` are
    generated from it) and its role. `by_content`: a file path whose content, not its name,
    shapes the picture (the fingerprint hashes the file instead of the path)."""
    if not help or role not in ROLES:
        raise ValueError(f"option needs a one-line help and a role in {ROLES}: {help!r}, {role!r}")
    meta = {"help": help, "role": role, "by_content": by_content}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DreamSettings:
    # Octaves: the image is dreamt at `octaves` sizes, smallest first, each `octave_scale`
    # times the previous.
    octaves: int = option(4, "number of scales the image is dreamt at, smallest first")
    octave_scale: float = option(1.4, "size ratio between two successive octaves")
    octaves_above: int = option(0, "how many octaves are larger than the input (the tutorial's 2)")
    # A size one pixel off changes every pixel of the dream, so each reference's own
    # arithmetic is kept; floor_base_float32 differs from floor_base at some sizes.
    octave_sizes: str = option(
        "round_previous", "octave size rule: round_previous (Google: round(side / scale) of the previous "
        "level), floor_base (Keras: int(base / scale**i)), floor_base_float32 (tutorial, in float32)")
    resize: str = option(
        "align_corners", "bilinear resize between octaves: align_corners (Google's scipy.ndimage.zoom) "
        "or half_pixel (tf.image.resize: the tutorial and the Keras example)")
    # Only where the last octave is not the photo's size (octaves_above > 0). The tutorial's
    # two truncations and 255.5 scale leave its picture ~0.3 levels darker than one truncation.
    final_resize: str = option(
        "float", "back to the photo's size after the last octave: float (resize, then 8 bits once) or uint8 "
        "(tutorial: 8 bits, resize, then convert_image_dtype's x255.5 and truncation)")
    steps: int = option(10, "gradient-ascent steps per octave")
    # In units of the [-1, 1] range, so one value means the same visual strength on every
    # backbone (Google's 1.5 pixel step is 1.5/127.5).
    step_size: float = option(0.011764706, "step size, in units of the [-1, 1] image range")
    objective: str = option(
        "l2", "score of a layer: mean (tutorial), mean_square (Keras example), l2 = 0.5*sum(a^2) (Google)")
    # The divisor stays the full size, as in the Keras reference.
    objective_border: int = option(0, "pixels left out at each border of the activation (the Keras example's 2)")
    # The two mean_abs are the same maths in another order of float operations, which
    # gradient ascent amplifies: one for the other is ~28 dB from the reference.
    grad_norm: str = option(
        "mean_abs", "gradient normalisation: std (tutorial), mean_abs (Google: x += step_size / mean|g| * g), "
        "mean_abs_keras (Keras: g /= mean|g|; x += step_size * g), l2 (root mean square)")
    detail: str = option(
        "dream", "what travels up the octaves: dream (Google: the dreamt detail), photo (Keras: the photo's "
        "lost detail), none (tutorial: the image is just resized)")
    jitter: int = option(32, "random roll of at most this many pixels before every step (0 = off)")
    clip: bool = option(True, "clip to the valid pixel range after every step")
    max_loss: Optional[float] = option(None, "stop an octave once its loss exceeds this (the Keras example's 15); "
                                             "null = never")
    # Memory is then bounded by the tile, not the picture.
    tile_size: int = option(512, "octaves larger than this are dreamt tile by tile over a randomly rolled "
                                 "image (0 = never)")
    seed: int = option(0, "seeds the jitter and the noise image; same seed, config and machine: same bytes")
    preserve_colors: bool = option(False, "keep the photo's colours: only the dream's luminance is kept")
    # Gradient ascent amplifies bfloat16's rounding into a different picture (~25 dB PSNR from
    # float32), so float32 stays the default (docs: Performance).
    precision: str = option(
        "float32", "network arithmetic: float32, or mixed_bfloat16 (bfloat16 activations, BatchNorm folded; "
        "faster on CPUs with AMX)")
    # On GPUs some ops are slower and a few have no deterministic kernel at all (XLA's max-pool
    # gradient, which InceptionV3 needs), which stops the dream with an error naming this
    # key: so the default is on where every op has one (CPUs), off on GPUs. The value used is
    # recorded (param and config.yaml), as threads.
    deterministic: Optional[bool] = option(
        None, "deterministic ops (same config, seed and machine: same bytes); null: true on a CPU, false on "
              "a GPU (docs: Backends)")
    # Keras reads KERAS_BACKEND once per process, so a process keeps one backend; the value
    # used is recorded and part of the resume fingerprint (another backend, other kernels).
    backend: Optional[str] = option(
        None, "the Keras backend: tensorflow or jax; null: KERAS_BACKEND when set, else tensorflow "
              "(docs: Backends)")

    def __post_init__(self) -> None:
        check(self.octaves >= 1, "octaves must be >= 1", "octaves=4")
        check(self.octave_scale > 1.0, "octave_scale must be > 1", "octave_scale=1.4")
        check(0 <= self.octaves_above < self.octaves or self.octaves_above == 0,
              "octaves_above must be between 0 and octaves-1", "octaves_above=0")
        check(self.octave_sizes in OCTAVE_SIZES,
              f"octave_sizes must be one of {'|'.join(OCTAVE_SIZES)}", "octave_sizes=round_previous")
        check(self.resize in RESIZES, f"resize must be one of {'|'.join(RESIZES)}", "resize=half_pixel")
        check(self.final_resize in FINAL_RESIZES, f"final_resize must be one of {'|'.join(FINAL_RESIZES)}",
              "final_resize=float")
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
        check(self.backend in (None,) + BACKENDS, f"backend must be one of {'|'.join(BACKENDS)} or null",
              "backend=jax")
        check(self.precision in PRECISIONS, f"precision must be one of {'|'.join(PRECISIONS)}",
              "precision=mixed_bfloat16")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(DreamSettings)]


def check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise DreamlabError(f"{problem} (for example {fix})")
