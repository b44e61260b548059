"""Fidelity: each recipe, with jitter=0 tile_size=0, equals a literal implementation of its
reference's maths (shared/docs/algorithms.md and the references' published code), written
here independently of dreamlab's engine, on a small photo with the real MobileNetV2."""


import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import dreamlab
from dreamlab import app
from dreamlab.images import psnr
from dreamlab.settings import DreamSettings

from conftest import SHARED_WEIGHTS

LAYERS = {"block_9_add": 1.0, "block_12_add": 1.5}


@pytest.fixture(scope="module")
def features():
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    base.load_weights(SHARED_WEIGHTS)
    model = keras.Model(base.inputs, [base.get_layer(n).output for n in LAYERS])
    return lambda x: model(x[None], training=False)  # MobileNetV2's input is x in [-1, 1]


@pytest.fixture(scope="module")
def photo(square_photo):
    with Image.open(square_photo) as im:
        return np.asarray(im.resize((128, 96), Image.LANCZOS))


def recipe_dream(photo, recipe, **extra):
    """dreamlab through its own config: the recipe file plus jitter=0 tile_size=0."""
    with initialize_config_dir(config_dir=app.CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"recipe={recipe}", "jitter=0", "tile_size=0",
                                           *[f"{k}={v}" for k, v in extra.items()]])
    conf = OmegaConf.to_object(cfg)
    knobs = {name: getattr(conf, name) for name in DreamSettings.names()}
    return dreamlab.dream(photo, backbone="mobilenet_v2", weights=str(SHARED_WEIGHTS),
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


def test_google_recipe_is_the_notebook(features, photo):
    def score(x):  # L2 objective: the gradient sent back from each layer is a itself
        return sum(w * 0.5 * tf.reduce_sum(tf.square(a)) for w, a in zip(LAYERS.values(), features(x)))

    def make_step(x):
        _, g = gradient(score, x)
        x = x + (1.5 / 127.5) / tf.reduce_mean(tf.abs(g)) * g
        return tf.clip_by_value(x, -1.0, 1.0)

    octaves = [unit(photo)]
    for _ in range(3):  # each level the previous one zoomed by 1/1.4
        h, w = octaves[-1].shape[:2]
        octaves.append(tf.image.resize(octaves[-1], (int(h / 1.4), int(w / 1.4))))
    detail = tf.zeros_like(octaves[-1])
    for base in reversed(octaves):
        detail = tf.image.resize(detail, base.shape[:2])
        x = base + detail
        for _ in range(10):
            x = make_step(x)
        detail = x - base
    literal = np.clip(np.round((x.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)

    result, conf = recipe_dream(photo, "google")
    assert (conf.objective, conf.grad_norm, conf.detail, conf.octaves, conf.steps) == ("l2", "mean_abs", "dream", 4, 10)
    value = psnr(result.image, literal)
    print(f"google PSNR {value:.1f} dB")
    assert value >= 40


def test_tutorial_recipe_is_the_tutorial(features, photo):
    steps = 20  # the tutorial's 100 per octave, shortened for the test suite

    def calc_loss(img):
        return tf.reduce_sum([tf.reduce_mean(a) * w for w, a in zip(LAYERS.values(), features(img))])

    img = unit(photo)
    base_shape = tf.shape(img)[:-1]
    for n in range(-2, 3):
        new_size = tf.cast(tf.cast(base_shape, tf.float32) * (1.3 ** n), tf.int32)
        img = tf.image.resize(img, new_size)
        for _ in range(steps):
            _, g = gradient(calc_loss, img)
            g /= tf.math.reduce_std(g) + 1e-8
            img = tf.clip_by_value(img + g * 0.01, -1, 1)
    img = tf.image.resize(img, base_shape)
    literal = np.clip(np.round((img.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)

    result, conf = recipe_dream(photo, "tutorial", steps=steps)
    assert (conf.objective, conf.grad_norm, conf.detail, conf.octaves_above, conf.octave_scale) == ("mean", "std", "none", 2, 1.3)
    value = psnr(result.image, literal)
    print(f"tutorial PSNR {value:.1f} dB")
    assert value >= 40


def test_keras_recipe_is_the_keras_example(features, photo):
    def compute_loss(img):
        loss = tf.zeros(shape=())
        for coeff, activation in zip(LAYERS.values(), features(img)):
            scaling = tf.reduce_prod(tf.cast(tf.shape(activation), "float32"))
            loss += coeff * tf.reduce_sum(tf.square(activation[:, 2:-2, 2:-2, :])) / scaling
        return loss

    original = unit(photo)
    original_shape = original.shape[:2]
    shapes = [tuple(int(d / 1.4 ** i) for d in original_shape) for i in range(3)][::-1]
    shrunk = tf.image.resize(original, shapes[0])
    img = tf.identity(original)
    stopped_early = False
    for shape in shapes:
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
    literal = np.clip((img.numpy() / 2 + 0.5) * 255, 0, 255).astype("uint8")

    result, conf = recipe_dream(photo, "keras")
    assert (conf.max_loss, conf.objective_border, conf.clip, conf.detail) == (15.0, 2, False, "photo")
    assert stopped_early == (len(result.losses) < 60)
    value = psnr(result.image, literal)
    print(f"keras PSNR {value:.1f} dB")
    assert value >= 40
