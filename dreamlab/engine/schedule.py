"""The octave schedule around a backend's compiled step, written once for every backend.

Everything here is numpy or `keras.ops`, so it runs on whichever Keras backend the process
has (dreamlab.engine.backends); only the step itself differs per backend.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import backbones
from ..errors import DreamlabError, check_stop
from ..objective import Objective
from ..settings import DreamSettings
from . import backends
from .steps import DreamStep, compiled_step

OctaveCallback = Callable[[int, np.ndarray, list], None]


@dataclass
class DreamResult:
    image: np.ndarray  # uint8 H x W x 3, the input's size
    losses: list[float]  # one per step, all octaves in order
    octave_of_step: list[int]  # the octave index of each loss
    octave_images: list[np.ndarray] = field(default_factory=list)  # uint8, after each octave
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) per octave
    seconds: float = 0.0
    # The first step of each octave size pays its compilation (a trace on TensorFlow, an XLA
    # compile on JAX): compile_seconds is what those first steps took beyond the octave's
    # typical step, steps_per_second the rate of the other steps.
    compile_seconds: float = 0.0
    steps_per_second: float = 0.0
    backend: str = ""
    deterministic: bool = True


def octave_sizes(height: int, width: int, s: DreamSettings) -> list[tuple[int, int]]:
    """Smallest first; the last `octaves_above` are larger than the input (tutorial style).
    Each rule is its reference's own arithmetic (DreamSettings.octave_sizes)."""
    below, above = s.octaves - 1 - s.octaves_above, s.octaves_above
    if s.octave_sizes == "round_previous":
        # scipy.ndimage.zoom's output size, int(round(side * zoom)), level after level.
        def chain(hw, factor, n):
            levels = []
            for _ in range(n):
                hw = tuple(int(round(side * factor)) for side in hw)
                levels.append(hw)
            return levels
        return chain((height, width), 1.0 / s.octave_scale, below)[::-1] + [(height, width)] + \
            chain((height, width), s.octave_scale, above)
    if s.octave_sizes == "floor_base_float32":
        return [(int(np.float32(height) * np.float32(s.octave_scale ** n)),
                 int(np.float32(width) * np.float32(s.octave_scale ** n))) for n in range(-below, above + 1)]
    return [(int(height / s.octave_scale ** i), int(width / s.octave_scale ** i)) for i in range(below, 0, -1)] + \
        [(int(height * s.octave_scale ** n), int(width * s.octave_scale ** n)) for n in range(0, above + 1)]


def check_sizes(sizes, step: DreamStep, backbone: str, objective: Objective, s: DreamSettings) -> None:
    """Fail before any compute when an octave (or a tile) is too small for the layers, with
    a value that works: the most octaves that fit, found by shape inference."""
    if not step.fits(min(min(hw) for hw in sizes)):
        base = sizes[s.octaves - 1 - s.octaves_above]
        fitting = next((n for n in range(s.octaves - 1, 0, -1) if step.fits(min(min(hw) for hw in octave_sizes(
            *base, dataclasses.replace(s, octaves=n, octaves_above=min(s.octaves_above, n - 1)))))), None)
        fix = (f"use octaves={fitting} (the most that fit this photo), a larger max_size or a smaller "
               f"octave_scale" if fitting else
               f"the photo itself is too small: use a larger max_size or a photo of at least {step.min_size} px")
        raise DreamlabError(
            f"the smallest octave is {sizes[0][1]}x{sizes[0][0]} px but backbone={backbone} with "
            f"layers {','.join(objective.layers)} needs at least {step.min_size} px: {fix}")
    if 0 < s.tile_size and max(sizes[-1]) > s.tile_size and not step.fits(s.tile_size // 2):
        raise DreamlabError(f"tile_size={s.tile_size} makes tiles smaller than the {step.min_size} px "
                            f"these layers need: use tile_size>={2 * step.min_size} or tile_size=0")


def zoom_bilinear(img, hw) -> np.ndarray:
    """scipy.ndimage.zoom(img, ..., order=1), the resize of Google's notebook, to the bit, in
    numpy float64 on every backend. Output pixel i samples the input at
    c = i * (n_in - 1) / (n_out - 1) (corners on corners) with weights 1 - t and t,
    t = c - floor(c), and the four neighbours are summed in float64 in scipy's order,
    (v * w_row) * w_col, row-major. As scipy does (mode='constant', cval=0), a c that float
    rounding puts past the last pixel (480 px / 1.4: 127.00000000000001 of 127) gives 0 there:
    a row or column of the backbone's zero (mid grey) in that pyramid level. TensorFlow's
    align_corners kernel interpolates in float32, 7e-6 away, and the separable float64 form
    is 1 ulp off at a few pixels: gradient ascent amplified either into a ~28 dB difference
    from the notebook."""
    v = np.asarray(img, np.float64)
    taps = []
    for axis, n_out in enumerate(hw):
        n_in = int(v.shape[axis])
        c = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
        i0 = np.floor(c).astype(np.int64)
        t = c - i0
        outside = c > n_in - 1
        shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
        weights = [np.where(outside, 0.0, w).reshape(shape) for w in (1.0 - t, t)]
        taps.append((np.minimum(i0, n_in - 1), np.minimum(i0 + 1, n_in - 1), weights))
    (r0, r1, wr), (c0, c1, wc) = taps
    rows = [np.take(v, r, axis=0) for r in (r0, r1)]
    out = np.zeros([hw[0], hw[1], v.shape[-1]], np.float64)
    for a in range(2):
        for b, cols in enumerate((c0, c1)):
            out = out + np.take(rows[a], cols, axis=1) * wr[a] * wc[b]
    return out.astype(np.float32)


def to_unit(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    # In place: at 4096 px every extra float copy of the picture is 200 MB.
    out = np.array(x, dtype=np.float32)
    out += 1.0
    out *= 127.5
    # Truncated, not rounded, as all three references do (np.uint8(np.clip(a, 0, 255)),
    # tf.cast(..., tf.uint8), .astype("uint8")); in float32, (x + 1) * 127.5 has the same
    # bits as the tutorial's 255 * (x + 1) / 2 and the Keras example's (x / 2 + 0.5) * 255.
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def resizer(rule: str):
    """The bilinear resize between octaves: `align_corners` (Google's scipy zoom, in numpy)
    or `half_pixel` (tf.image.resize's, through keras.ops on every backend)."""
    from keras import ops

    def resize(img, hw):
        if tuple(img.shape[:2]) == tuple(hw):
            return img  # bilinear resizing to the same size is the identity
        if rule == "align_corners":
            return ops.convert_to_tensor(zoom_bilinear(img, hw))
        return ops.image.resize(img, tuple(hw), interpolation="bilinear", antialias=False)
    return resize


def dream(image: Any, *, backbone: str = "inception_v3", weights: Optional[str] = "imagenet",
          layers: Any = "default", guide: Any = None, progress: bool = False,
          on_octave: Optional[OctaveCallback] = None, **settings) -> DreamResult:
    """Dream on `image` (uint8 H x W x 3 array or PIL image); the keywords of
    `DreamSettings` (octaves, steps, step_size, backend, ...) set the algorithm.

    guide: an optional picture (uint8 array); the layers then pull the image toward the
    guide's features (Google's objective_guide) instead of amplifying their own.
    on_octave(octave, image_uint8, octave_losses) is called after each octave, so that a
    tracker can log while the next octave computes.
    backend: set before Keras is first imported; a process then keeps it (backends.use).
    """
    s = DreamSettings(**settings)
    backend = backends.module(backends.use(s.backend))
    from keras import ops

    deterministic = s.deterministic if s.deterministic is not None else not backend.on_gpu()
    backend.set_determinism(deterministic)
    base = to_unit(image)
    if base.ndim != 3 or base.shape[-1] != 3:
        raise DreamlabError(f"the image must be H x W x 3 RGB, got shape {base.shape}")
    objective = Objective(backbones.layer_terms(backbone, layers), s.objective, s.objective_border)
    step = compiled_step(backbone, weights, objective, s.grad_norm, s.clip,
                         None if guide is None else to_unit(guide), s.precision, deterministic)
    sizes = octave_sizes(base.shape[0], base.shape[1], s)
    check_sizes(sizes, step, backbone, objective, s)

    started = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    base_t = ops.convert_to_tensor(base)
    base_shape = base.shape[:2]
    del base  # the tensor is the one copy kept of the photo
    resize = resizer(s.resize)

    if s.detail == "dream":  # Google's pyramid: each level the next larger one zoomed down
        pyramid = [resize(base_t, sizes[-1])]
        for hw in reversed(sizes[:-1]):
            pyramid.insert(0, resize(pyramid[0], hw))
        detail = ops.zeros_like(pyramid[0])

    result = DreamResult(image=None, losses=[], octave_of_step=[], sizes=list(sizes),
                         backend=backends.version(backend.NAME), deterministic=deterministic)
    bar = _progress_bar(len(sizes) * s.steps) if progress else None
    x = None
    step_size = np.float32(s.step_size)
    first_steps, later_steps, later_count = 0.0, 0.0, 0
    for k, hw in enumerate(sizes):
        if s.detail == "dream":
            x = pyramid[k] + resize(detail, hw)
        else:
            x = resize(base_t if k == 0 else x, hw)
        tiled = s.tile_size > 0 and max(hw) > s.tile_size
        # With tiles, a roll of up to a whole tile moves the seams at every step.
        reach = max(s.jitter, s.tile_size) if tiled else s.jitter
        tile = s.tile_size if tiled else 0
        octave_losses, times = [], []
        if bar is not None:
            bar.set_description(f"octave {k + 1}/{len(sizes)}", refresh=False)
        for _ in range(s.steps):
            roll = rng.integers(-reach, reach + 1, size=2) if reach else (0, 0)
            began = time.perf_counter()
            try:
                x, loss = step.step(x, roll, step_size, tile)
                loss = float(loss)
            except Exception as exc:
                refused = backend.refusal(exc) if deterministic else None
                if refused is not None:
                    raise refused from None
                raise
            times.append(time.perf_counter() - began)
            check_stop()
            octave_losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                bar.update()
            if s.max_loss is not None and loss > s.max_loss:
                break  # as in the Keras example, after the step that crossed it
        typical = float(np.median(times[1:])) if len(times) > 1 else 0.0
        first_steps += max(times[0] - typical, 0.0)
        later_steps, later_count = later_steps + sum(times[1:]), later_count + len(times) - 1
        if s.detail == "dream":
            detail = x - pyramid[k]
        elif s.detail == "photo":
            # The Keras example adds, after the octave's ascent, what upscaling the photo from
            # the previous size lost (nothing at the first octave).
            previous = sizes[max(k - 1, 0)]
            # x + (lost detail), in the example's order: (x + a) - b rounds differently.
            x = x + (resize(base_t, hw) - resize(resize(base_t, previous), hw))
        result.losses += octave_losses
        result.octave_of_step += [k] * len(octave_losses)
        picture = _finish(x, base_t, s.preserve_colors)
        result.octave_images.append(picture)
        if on_octave is not None:
            on_octave(k, picture, octave_losses)
    if bar is not None:
        bar.close()
    if tuple(sizes[-1]) == tuple(base_shape):
        result.image = result.octave_images[-1]  # already converted after the last octave
    elif s.final_resize == "uint8":
        # The tutorial's last cell: the 8-bit picture of the largest octave resized (float
        # again), then tf.image.convert_image_dtype(img / 255.0, tf.uint8), which multiplies
        # by 255.5 and saturates to 0..255, truncating.
        small = resize(ops.convert_to_tensor(result.octave_images[-1].astype(np.float32)), base_shape)
        scaled = np.asarray(small / 255.0, np.float32) * np.float32(255.5)
        result.image = np.clip(scaled, 0, 255).astype(np.uint8)
    else:
        result.image = _finish(resize(x, base_shape), base_t, s.preserve_colors)
    result.seconds = time.perf_counter() - started
    result.compile_seconds = first_steps
    result.steps_per_second = later_count / later_steps if later_steps > 0 else 0.0
    return result


# tf.image.rgb_to_yuv's and yuv_to_rgb's kernels, applied as they apply them (tensordot on
# the channel axis), so that every backend mixes colours as TensorFlow did.
_RGB_TO_YUV = np.array([[0.299, -0.14714119, 0.61497538], [0.587, -0.28886916, -0.51496512],
                        [0.114, 0.43601035, -0.10001026]], np.float32)
_YUV_TO_RGB = np.array([[1, 1, 1], [0, -0.394642334, 2.03206185], [1.13988303, -0.58062185, 0]], np.float32)


def _finish(x, photo, preserve_colors: bool) -> np.ndarray:
    """The uint8 picture; with preserve_colors, the dream's luminance in the photo's colours."""
    if not preserve_colors:
        return to_uint8(x)
    from keras import ops

    x = ops.clip(x, -1.0, 1.0)
    colours = ops.image.resize(photo, tuple(x.shape[:2]), interpolation="bilinear", antialias=False)
    dreamt = ops.tensordot((x + 1.0) / 2.0, _RGB_TO_YUV, axes=[[2], [0]])
    original = ops.tensordot((colours + 1.0) / 2.0, _RGB_TO_YUV, axes=[[2], [0]])
    mixed = ops.concatenate([dreamt[..., :1], original[..., 1:]], axis=-1)
    return to_uint8(ops.tensordot(mixed, _YUV_TO_RGB, axes=[[2], [0]]) * 2.0 - 1.0)


def zoom(image: np.ndarray, amount: float) -> np.ndarray:
    """Zoom in about the centre by `amount` (0.05: the centre 95% fills the frame)."""
    from PIL import Image

    h, w = image.shape[:2]
    dy, dx = h * amount / 2, w * amount / 2
    with Image.fromarray(image) as im:
        return np.asarray(im.resize((w, h), Image.BILINEAR, box=(dx, dy, w - dx, h - dy)))


def dream_zoom(image: np.ndarray, frames: int, amount: float, **kwargs):
    """Google's zoom video: frame i is the dream of frame i-1 zoomed in; yields each result.
    Every frame reuses the seed, so the jitter sequence does not add flicker."""
    current = image
    for _ in range(frames):
        result = dream(current, **kwargs)
        yield result
        current = zoom(result.image, amount)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)
