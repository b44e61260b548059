"""Fidelity: each recipe, with jitter=0 tile_size=0, equals a literal implementation of its
reference's maths (docs/references.md and the references' published code), written
here independently of dreamlab's engine, with the real MobileNetV2, on photos of several
sizes, all found by computation: one where the reference's rounding and the naive one give
the same octave sizes, and two where they differ at some octave."""


import numpy as np
import pytest
import scipy.ndimage as nd
import tensorflow as tf
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

import dreamlab
from dreamlab import app
from dreamlab.images import psnr
from dreamlab.settings import DreamSettings

from conftest import TRAINED_WEIGHTS

LAYERS = {"block_9_add": 1.0, "block_12_add": 1.5}


def first_side(start: int, differs) -> int:
    """The first side length >= start for which `differs(side)`."""
    return next(side for side in range(start, start + 400) if differs(side))


def floor_chain(side: int, n: int, scale: float) -> list[int]:
    return [int(side * scale ** -k) for k in range(1, n)]


def zoom_chain(side: int, n: int, scale: float) -> list[int]:
    """scipy.ndimage.zoom's sizes, level after level: round(previous * (1/scale))."""
    out = [side]
    for _ in range(1, n):
        out.append(int(round(out[-1] * (1.0 / scale))))
    return out[1:]


def google_odd(s):  # round from the previous level against floor from the base (4 x 1.4)
    return zoom_chain(s, 4, 1.4) != floor_chain(s, 4, 1.4)


def tutorial_odd(s):  # its float32 product against the float64 one (1.3**n, n = -2..2)
    return any(int(np.float32(s) * np.float32(1.3 ** n)) != int(s * 1.3 ** n) for n in range(-2, 3))


def keras_odd(s):  # int(base / 1.4**i) against round (3 octaves)
    return any(int(s / 1.4 ** i) != round(s / 1.4 ** i) for i in (1, 2))


def sizes_for(odd) -> list[tuple[int, int]]:
    """A photo where the rules agree at every octave on both sides, then two (landscape and
    portrait) where they disagree on both sides, all found by computation."""
    agree = first_side(96, lambda s: not odd(s))
    agree = (agree, first_side(agree + 20, lambda s: not odd(s)))
    a = first_side(97, odd)
    b = first_side(a + 24, odd)
    c = first_side(b + 1, odd)
    return [agree, (a, b), (first_side(c + 20, odd), c)]


SIZES = {"google": sizes_for(google_odd), "tutorial": sizes_for(tutorial_odd), "keras": sizes_for(keras_odd)}


@pytest.fixture(scope="module")
def features():
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    base.load_weights(TRAINED_WEIGHTS)
    model = keras.Model(base.inputs, [base.get_layer(n).output for n in LAYERS])
    return lambda x: model(x[None], training=False)  # MobileNetV2's input is x in [-1, 1]


@pytest.fixture(scope="module")
def cat(square_photo):
    with Image.open(square_photo) as im:
        return im.convert("RGB").copy()


def sized(cat, hw) -> np.ndarray:
    return np.asarray(cat.resize((hw[1], hw[0]), Image.LANCZOS))


def recipe_dream(photo, recipe, **extra):
    """dreamlab through its own config: the recipe file plus jitter=0 tile_size=0."""
    with initialize_config_module(config_module="dreamlab.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={recipe}", "jitter=0", "tile_size=0",
                                           *[f"{k}={v}" for k, v in extra.items()]])
    conf = OmegaConf.to_object(cfg)
    knobs = {name: getattr(conf, name) for name in DreamSettings.names()}
    return dreamlab.dream(photo, backbone="mobilenet_v2", weights=str(TRAINED_WEIGHTS),
                          layers=LAYERS, **knobs), conf


def unit(photo):
    return tf.constant(photo.astype(np.float32) / 127.5 - 1.0)


def gradient(score, x):
    """d score / d x, compiled as a graph like any TensorFlow DeepDream (the tutorial and
    the Keras example both wrap their step in tf.function): eager and graph execution round
    differently (oneDNN fuses ops in graphs), and gradient ascent amplifies rounding."""
    if score not in _compiled:
        @tf.function(reduce_retracing=True)
        def grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                s = score(x)
            return s, tape.gradient(s, x)
        _compiled[score] = grad
    return _compiled[score](x)


_compiled = {}


# A bias hides behind a good PSNR: >= 40 dB allows an RMS difference of 2.55 levels, and a
# picture shifted by one level everywhere scores 48 dB. The biases a wrong 8-bit conversion
# makes are fractions of a level: rounding instead of truncating, +0.5; one truncation where
# the tutorial makes two (truncate, resize, x255.5/255, truncate), +(0.5 - mean/510), 0.28 on
# the cat. The mean level is held to under a fifth of the smallest of them.
MEAN_LEVELS = 0.05


def check(recipe, hw, result, literal, sizes):
    """The same octave sizes, the same picture to >= 40 dB and the same mean level to
    MEAN_LEVELS (reported per size)."""
    assert [tuple(s) for s in result.sizes] == sizes, (recipe, hw)
    assert result.image.shape == literal.shape
    value = psnr(result.image, literal)
    bias = float(result.image.astype(np.float64).mean() - literal.astype(np.float64).mean())
    differing = int(np.any(result.image != literal, axis=-1).sum())
    print(f"{recipe} {hw[0]}x{hw[1]} octaves {sizes}: PSNR {value:.1f} dB, mean {bias:+.3f} levels, "
          f"{differing} pixels differ")
    assert value >= 40, (recipe, hw, value)
    assert abs(bias) <= MEAN_LEVELS, (recipe, hw, bias)


@pytest.mark.parametrize("hw", SIZES["google"], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_google_recipe_is_the_notebook(features, cat, hw):
    """dream.ipynb's deepdream(), in the backbone's [-1, 1] space and H x W x C order: the
    pyramid and the detail's upscaling made by scipy.ndimage.zoom(order=1) itself."""
    def score(x):  # L2 objective: the gradient sent back from each layer is a itself
        return sum(w * 0.5 * tf.reduce_sum(tf.square(a)) for w, a in zip(LAYERS.values(), features(x)))

    def make_step(x):
        _, g = gradient(score, tf.constant(x))
        x = x + (1.5 / 127.5) / tf.reduce_mean(tf.abs(g)) * g
        return tf.clip_by_value(x, -1.0, 1.0).numpy()

    photo = sized(cat, hw)
    octaves = [unit(photo).numpy()]
    for _ in range(3):
        octaves.append(nd.zoom(octaves[-1], (1.0 / 1.4, 1.0 / 1.4, 1), order=1))
    detail = np.zeros_like(octaves[-1])
    for octave, octave_base in enumerate(octaves[::-1]):
        h, w = octave_base.shape[:2]
        if octave > 0:
            h1, w1 = detail.shape[:2]
            detail = nd.zoom(detail, (1.0 * h / h1, 1.0 * w / w1, 1), order=1)
        x = octave_base + detail
        for _ in range(10):
            x = make_step(x)
        detail = x - octave_base
    literal = np.uint8(np.clip((x + 1) * 127.5, 0, 255))

    result, conf = recipe_dream(photo, "google")
    assert (conf.objective, conf.grad_norm, conf.detail, conf.octaves, conf.steps) == ("l2", "mean_abs", "dream", 4, 10)
    check("google", hw, result, literal, [o.shape[:2] for o in octaves[::-1]])


@pytest.mark.parametrize("hw", SIZES["tutorial"], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_tutorial_recipe_is_the_tutorial(features, cat, hw):
    steps = 20  # the tutorial's 100 per octave, shortened for the test suite

    def calc_loss(img):
        return tf.reduce_sum([tf.reduce_mean(a) * w for w, a in zip(LAYERS.values(), features(img))])

    photo = sized(cat, hw)
    img = unit(photo)
    base_shape = tf.shape(img)[:-1]
    sizes = []
    for n in range(-2, 3):
        new_size = tf.cast(tf.cast(base_shape, tf.float32) * (1.3 ** n), tf.int32)
        sizes.append(tuple(int(v) for v in new_size.numpy()))
        img = tf.image.resize(img, new_size)
        for _ in range(steps):
            _, g = gradient(calc_loss, img)
            g /= tf.math.reduce_std(g) + 1e-8
            img = tf.clip_by_value(img + g * 0.01, -1, 1)
    # As published: run_deep_dream_with_octaves returns deprocess(img), 8 bits at the largest
    # octave; the last cell resizes that to the photo's size and converts it again.
    img = tf.cast(255 * (img + 1.0) / 2.0, tf.uint8)
    img = tf.image.resize(img, base_shape)
    literal = tf.image.convert_image_dtype(img / 255.0, dtype=tf.uint8).numpy()

    result, conf = recipe_dream(photo, "tutorial", steps=steps)
    assert (conf.objective, conf.grad_norm, conf.detail, conf.octaves_above, conf.octave_scale) == ("mean", "std", "none", 2, 1.3)
    assert conf.final_resize == "uint8"
    check("tutorial", hw, result, literal, sizes)


@pytest.mark.parametrize("hw", SIZES["keras"], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_keras_recipe_is_the_keras_example(features, cat, hw):
    def compute_loss(img):
        loss = tf.zeros(shape=())
        for coeff, activation in zip(LAYERS.values(), features(img)):
            scaling = tf.reduce_prod(tf.cast(tf.shape(activation), "float32"))
            loss += coeff * tf.reduce_sum(tf.square(activation[:, 2:-2, 2:-2, :])) / scaling
        return loss

    photo = sized(cat, hw)
    original = unit(photo)
    original_shape = original.shape[:2]
    successive_shapes = [tuple(original_shape)]
    for i in range(1, 3):
        successive_shapes.append(tuple([int(dim / (1.4 ** i)) for dim in original_shape]))
    successive_shapes = successive_shapes[::-1]
    shrunk = tf.image.resize(original, successive_shapes[0])
    img = tf.identity(original)
    stopped_early = False
    for shape in successive_shapes:
        img = tf.image.resize(img, shape)
        for _ in range(20):
            loss, grads = gradient(compute_loss, img)
            grads /= tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-6)
            img += 0.01 * grads
            if loss > 15:
                stopped_early = True
                break
        img += tf.image.resize(original, shape) - tf.image.resize(shrunk, shape)
        shrunk = tf.image.resize(original, shape)
    x = img.numpy()
    x /= 2.0
    x += 0.5
    x *= 255.0
    literal = np.clip(x, 0, 255).astype("uint8")

    result, conf = recipe_dream(photo, "keras")
    assert (conf.max_loss, conf.objective_border, conf.clip, conf.detail, conf.grad_norm) == (15.0, 2, False, "photo", "mean_abs_keras")
    assert stopped_early == (len(result.losses) < 60)
    check("keras", hw, result, literal, successive_shapes)


def test_octave_sizes_follow_each_reference():
    """The sizes of algorithms.md's examples, computed as each reference computes them."""
    from dreamlab.engine import octave_sizes

    google = DreamSettings()
    assert octave_sizes(480, 640, google) == [(175, 233), (245, 326), (343, 457), (480, 640)]
    tutorial = DreamSettings(octaves=5, octave_scale=1.3, octaves_above=2, octave_sizes="floor_base_float32")
    assert octave_sizes(117, 169, tutorial)[:2] == [(69, 100), (90, 130)]  # float64: (69, 99), (89, 130)
    keras = DreamSettings(octaves=3, octave_sizes="floor_base")
    assert octave_sizes(480, 640, keras) == [(244, 326), (342, 457), (480, 640)]
