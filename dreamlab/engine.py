"""The DeepDream engine: a compiled gradient-ascent step and the octave schedule around it.

Usable from a notebook with plain values, no Hydra or MLflow:

    import dreamlab
    result = dreamlab.dream(photo, backbone="mobilenet_v2", weights="w.weights.h5",
                            layers="block_12_add", octaves=3, steps=10)
    result.image, result.losses

The step is a `tf.function` whose input signature has unknown height and width, so it is
traced once per (backbone, objective, normalisation) and then reused for every octave size
and every picture of the process; the octave loop is plain Python around it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from . import backbones
from .errors import DreamlabError, first_line
from .objective import Objective, parse_layers  # noqa: F401  (engine.parse_layers, as before)
from .settings import DreamSettings

OctaveCallback = Callable[[int, np.ndarray, list], None]


@dataclass
class DreamResult:
    image: np.ndarray  # uint8 H x W x 3, the input's size
    losses: list[float]  # one per step, all octaves in order
    octave_of_step: list[int]  # the octave index of each loss
    octave_images: list[np.ndarray] = field(default_factory=list)  # uint8, after each octave
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) per octave
    seconds: float = 0.0


@functools.cache
def _tf():
    """TensorFlow, imported on first use (the step calls this every step)."""
    import tensorflow as tf

    return tf


def _set_determinism(on: bool) -> None:
    """Process-wide in TensorFlow; set before each dream, and part of the compiled step's key
    so that a step built one way is never run the other way."""
    tf = _tf()
    if on:
        tf.config.experimental.enable_op_determinism()
        return
    # TensorFlow exports only the switch on; the switch off is private (dreamlab.internals).
    from .internals import tf_disable_op_determinism

    tf_disable_op_determinism()


def _refused(exc: BaseException) -> DreamlabError:
    return DreamlabError(f"this device has no deterministic kernel for an op of the dream ({first_line(exc)}): "
                         f"set deterministic=false to run it, with pictures that may then differ "
                         f"from run to run in their last bits")


class DreamStep:
    """One gradient-ascent step of an objective on a backbone, compiled once for all sizes.

    `step(x, roll, step_size, tile)`: x is the image in [-1, 1] (H, W, 3); it is rolled by
    `roll` pixels, the objective's gradient is computed over tiles of at most `tile` pixels
    (0: the whole image at once), rolled back, normalised and added; returns (x, loss).
    Nothing in it returns to Python: the loop reads one loss per step, which it logs.
    """

    def __init__(self, model, backbone: str, objective: Objective, grad_norm: str, clip: bool,
                 guide: Optional[np.ndarray] = None):
        tf = _tf()
        import keras

        self.objective = objective
        self.model = model
        outputs = [model.get_layer(name).output for name in objective.layers]
        self.extractor = keras.Model(model.inputs, outputs)
        self.grad_norm, self.clip = grad_norm, clip
        pre = backbones.PREPROCESS[backbones.spec(backbone).preprocess]
        self._identity_input = backbones.spec(backbone).preprocess == "tf"
        self._order = list(pre["order"])
        self._mean = tf.constant(pre["mean"], tf.float32)
        self._std = tf.constant(pre["std"], tf.float32)
        # Guide features y_l (M x C) per layer, computed once: the objective then becomes
        # sum_i max_j a_i . y_j, whose gradient at the layer is Google's objective_guide.
        self.guides = None if guide is None else [
            tf.reshape(g, [-1, g.shape[-1]]) for g in (
                self._select(term, a) for term, a in zip(objective.terms, self._features(tf.constant(guide))))]
        image, roll, scalar = (tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32),
                               tf.TensorSpec([], tf.float32))
        # Two graphs, each traced once for every size: the whole picture in one pass, and the
        # tile loop. The in-graph loop may overlap tiles (a Python loop over compiled tiles
        # measured 2.0 s per 1024 px step against its 1.4-1.6 s), but a single tile inside it
        # costs ~20% more than the plain pass (the while-loop frame keeps grappler from fusing
        # and oneDNN from taking the max-pool gradients), so a picture that fits in one tile
        # never enters it.
        self._whole = tf.function(lambda x, roll, step_size: self._step(x, roll, step_size, None),
                                  input_signature=[image, roll, scalar])
        self._tiled = tf.function(self._step, input_signature=[
            image, roll, scalar, tf.TensorSpec([], tf.int32)])

    def step(self, x, roll, step_size, tile: int = 0):
        """One step; `tile` (a Python int) > 0 computes the gradient tile by tile."""
        if tile > 0:
            tf = _tf()
            return self._tiled(x, roll, step_size, tf.constant(tile, tf.int32))
        return self._whole(x, roll, step_size)

    def fits(self, side: int) -> bool:
        """Whether these layers take a picture whose shorter side is `side` px."""
        return backbones.fits(self.extractor, side)

    @functools.cached_property
    def min_size(self) -> int:
        """What these layers need, often far less than the constructor's minimum. Searched
        only to word an error: a job checks its smallest octave with one `fits`."""
        return backbones.min_size(self.extractor)

    @property
    def traces(self) -> int:
        return sum(f.experimental_get_tracing_count() for f in (self._whole, self._tiled))

    def _to_input(self, x):
        """[-1, 1] RGB to what the backbone was trained on (exactly x for the `tf` family)."""
        if self._identity_input:
            return x
        tf = _tf()
        rgb255 = (x + 1.0) * 127.5
        return (tf.gather(rgb255, self._order, axis=-1) - self._mean) / self._std

    def _features(self, x):
        activations = self.extractor(self._to_input(x)[None], training=False)
        if not isinstance(activations, (list, tuple)):
            activations = [activations]
        return activations

    @staticmethod
    def _select(term, a):
        tf = _tf()
        a = tf.cast(a, tf.float32)
        # Negative channels count from the end, as Python indices (tf.gather refuses them).
        return tf.gather(a, [c % a.shape[-1] for c in term.channels], axis=-1) if term.channels else a

    def score(self, x):
        """The objective of one image or tile (H, W, 3)."""
        tf = _tf()
        total = tf.constant(0.0)
        b = self.objective.border
        for n, (term, a) in enumerate(zip(self.objective.terms, self._features(x))):
            a = self._select(term, a)
            size = tf.cast(tf.size(a), tf.float32)
            kept = a[:, b:-b, b:-b, :] if b else a
            if self.guides is not None:
                flat = tf.reshape(kept, [-1, kept.shape[-1]])
                s = tf.reduce_sum(tf.reduce_max(tf.matmul(flat, self.guides[n], transpose_b=True), axis=1))
            elif self.objective.form == "mean":
                s = tf.reduce_sum(kept) / size
            elif self.objective.form == "mean_square":
                s = tf.reduce_sum(tf.square(kept)) / size
            else:  # l2: Google's 0.5*sum(a^2), whose gradient at the layer is a itself
                s = 0.5 * tf.reduce_sum(tf.square(kept))
            total += term.weight * s
        return total

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
        gradient exists per tile and memory is bounded by the tile (plus the image itself)."""
        tf = _tf()
        h, w = tf.shape(x)[0], tf.shape(x)[1]
        # Even tiles: n tiles per side of about h/n >= tile/2 pixels, never a sliver that the
        # network cannot take.
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
        return self._apply(x, tf.roll(g, -roll, axis=[0, 1]), step_size), loss

    def _apply(self, x, g, step_size):
        tf = _tf()
        # Each update is written in its reference's order of operations: gradient ascent
        # amplifies rounding, and a reordered product drifts to ~29 dB from the reference.
        if self.grad_norm == "std":  # the tutorial: g /= std + 1e-8; x += g * step_size
            x = x + g / (tf.math.reduce_std(g) + 1e-8) * step_size
        elif self.grad_norm == "mean_abs":  # Google: x += step_size / mean|g| * g (a 1e-6 floor)
            x = x + step_size / tf.maximum(tf.reduce_mean(tf.abs(g)), 1e-6) * g
        elif self.grad_norm == "mean_abs_keras":  # g /= max(mean|g|, 1e-6); x += step_size * g
            x = x + step_size * (g / tf.maximum(tf.reduce_mean(tf.abs(g)), 1e-6))
        else:  # l2, scaled to unit root mean square so step_size keeps its meaning
            x = x + g / (tf.sqrt(tf.reduce_mean(tf.square(g))) + 1e-8) * step_size
        if self.clip:
            x = tf.clip_by_value(x, -1.0, 1.0)
        return x


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
    key = (backbone, weights, objective, grad_norm, clip, guide_id, precision, deterministic)
    model = backbones.load(backbone, weights, precision)
    step = _STEPS.get(key)
    if step is None or step.model is not model:  # new, or its model was rebuilt since
        backbones.check_layers(model, backbone, objective.layers)
        _check_channels(model, objective)
        step = DreamStep(model, backbone, objective, grad_norm, clip, guide)
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


def zoom_bilinear(img, hw):
    """scipy.ndimage.zoom(img, ..., order=1), the resize of Google's notebook, to the bit.
    Output pixel i samples the input at c = i * (n_in - 1) / (n_out - 1) (corners on
    corners) with weights 1 - t and t, t = c - floor(c), and the four neighbours are summed
    in float64 in scipy's order, (v * w_row) * w_col, row-major. As scipy does
    (mode='constant', cval=0), a c that float rounding puts past the last pixel (480 px / 1.4:
    127.00000000000001 of 127) gives 0 there: a row or column of the backbone's zero (mid
    grey) in that pyramid level. TensorFlow's align_corners kernel interpolates in float32,
    7e-6 away, and the separable float64 form is 1 ulp off at a few pixels: gradient ascent
    amplified either into a ~28 dB difference from the notebook."""
    tf = _tf()
    v = tf.cast(img, tf.float64)
    taps = []
    for axis, n_out in enumerate(hw):
        n_in = int(v.shape[axis])
        c = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
        i0 = np.floor(c).astype(np.int64)
        t = c - i0
        outside = c > n_in - 1
        shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]
        weights = [tf.reshape(tf.constant(np.where(outside, 0.0, w)), shape) for w in (1.0 - t, t)]
        taps.append((np.minimum(i0, n_in - 1), np.minimum(i0 + 1, n_in - 1), weights))
    (r0, r1, wr), (c0, c1, wc) = taps
    rows = [tf.gather(v, r, axis=0) for r in (r0, r1)]
    out = tf.zeros([hw[0], hw[1], v.shape[-1]], tf.float64)
    for a in range(2):
        for b, cols in enumerate((c0, c1)):
            out = out + tf.gather(rows[a], cols, axis=1) * wr[a] * wc[b]
    return tf.cast(out, tf.float32)


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


def dream(image: Any, *, backbone: str = "inception_v3", weights: Optional[str] = "imagenet",
          layers: Any = "default", guide: Any = None, progress: bool = False,
          on_octave: Optional[OctaveCallback] = None, **settings) -> DreamResult:
    """Dream on `image` (uint8 H x W x 3 array or PIL image); the keywords of
    `DreamSettings` (octaves, steps, step_size, ...) set the algorithm.

    guide: an optional picture (uint8 array); the layers then pull the image toward the
    guide's features (Google's objective_guide) instead of amplifying their own.
    on_octave(octave, image_uint8, octave_losses) is called after each octave, so that a
    tracker can log while the next octave computes.
    """
    s = DreamSettings(**settings)
    tf = _tf()
    _set_determinism(s.deterministic)
    base = to_unit(image)
    if base.ndim != 3 or base.shape[-1] != 3:
        raise DreamlabError(f"the image must be H x W x 3 RGB, got shape {base.shape}")
    objective = Objective(backbones.layer_terms(backbone, layers), s.objective, s.objective_border)
    step = compiled_step(backbone, weights, objective, s.grad_norm, s.clip,
                         None if guide is None else to_unit(guide), s.precision, s.deterministic)
    sizes = octave_sizes(base.shape[0], base.shape[1], s)
    check_sizes(sizes, step, backbone, objective, s)

    started = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    base_t = tf.constant(base)
    base_shape = base.shape[:2]
    del base  # the tensor is the one copy kept of the photo

    def resize(img, hw):
        if tuple(img.shape[:2]) == tuple(hw):
            return img  # bilinear resizing to the same size is the identity
        if s.resize == "align_corners":
            return zoom_bilinear(img, hw)
        return tf.image.resize(img, hw, method="bilinear")

    if s.detail == "dream":  # Google's pyramid: each level the next larger one zoomed down
        pyramid = [resize(base_t, sizes[-1])]
        for hw in reversed(sizes[:-1]):
            pyramid.insert(0, resize(pyramid[0], hw))
        detail = tf.zeros_like(pyramid[0])

    result = DreamResult(image=None, losses=[], octave_of_step=[], sizes=list(sizes))
    bar = _progress_bar(len(sizes) * s.steps) if progress else None
    x = None
    step_size = tf.constant(s.step_size, tf.float32)
    for k, hw in enumerate(sizes):
        if s.detail == "dream":
            x = pyramid[k] + resize(detail, hw)
        else:
            x = resize(base_t if k == 0 else x, hw)
        tiled = s.tile_size > 0 and max(hw) > s.tile_size
        # With tiles, a roll of up to a whole tile moves the seams at every step.
        reach = max(s.jitter, s.tile_size) if tiled else s.jitter
        tile = s.tile_size if tiled else 0
        octave_losses = []
        if bar is not None:
            bar.set_description(f"octave {k + 1}/{len(sizes)}", refresh=False)
        for _ in range(s.steps):
            roll = rng.integers(-reach, reach + 1, size=2) if reach else (0, 0)
            try:
                x, loss = step.step(x, tf.constant(roll, tf.int32), step_size, tile)
                loss = float(loss)
            except tf.errors.UnimplementedError as exc:
                if s.deterministic and "determinis" in str(exc):
                    raise _refused(exc) from None
                raise
            octave_losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                bar.update()
            if s.max_loss is not None and loss > s.max_loss:
                break  # as in the Keras example, after the step that crossed it
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
        # by 255.5 and truncates.
        small = resize(tf.cast(tf.constant(result.octave_images[-1]), tf.float32), base_shape)
        result.image = tf.image.convert_image_dtype(small / 255.0, dtype=tf.uint8).numpy()
    else:
        result.image = _finish(resize(x, base_shape), base_t, s.preserve_colors)
    result.seconds = time.perf_counter() - started
    return result


def _finish(x, photo, preserve_colors: bool) -> np.ndarray:
    """The uint8 picture; with preserve_colors, the dream's luminance in the photo's colours."""
    if not preserve_colors:
        return to_uint8(x)
    tf = _tf()
    x = tf.clip_by_value(x, -1.0, 1.0)
    colours = tf.image.resize(photo, tf.shape(x)[:2], method="bilinear")
    dreamt = tf.image.rgb_to_yuv((x + 1.0) / 2.0)
    original = tf.image.rgb_to_yuv((colours + 1.0) / 2.0)
    mixed = tf.concat([dreamt[..., :1], original[..., 1:]], axis=-1)
    return to_uint8(tf.image.yuv_to_rgb(mixed) * 2.0 - 1.0)


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
