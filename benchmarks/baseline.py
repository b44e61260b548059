"""The usual DeepDream script: one picture per process, as the references are run.

    python benchmarks/baseline.py OUT.png --layers mixed3 --octaves 3 [--steps 10] [--max-size 256]
                                  [--structure keras|tutorial]

It follows the Keras example (keras-io examples/generative/deep_dream.py) top to bottom:
build the model, build a feature extractor, a `@tf.function` gradient-ascent step without an
input signature (so, as in the example, it is traced again for every octave size), the
octave loop, save. Nothing is reused from one picture to the next: each picture is a new
process that imports TensorFlow and builds the model again.

The arithmetic is dreamlab's default recipe (google: 0.5*sum(a^2) per layer, gradient
divided by its mean absolute value, a random roll of up to 32 px before each step, the
dreamt detail carried up the octaves, clipping), on InceptionV3 with random weights drawn
from the same seed, so that both sides of `make bench` do the same work. It logs nothing:
the comparison favours the baseline. Like dreamlab's default (`threads` = the cores the
process was given), it runs each op on that many intra-op threads (--threads), so that the
pictures of both sides can be compared byte for byte.

--structure tutorial is the strongest one-script peer, the TensorFlow tutorial's structure:
the step is a tf.function with an unknown-size input signature, traced once for every
octave size; still one process per picture.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "dreamlab", "data", "chelsea.png")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("out")
parser.add_argument("--image", default=SAMPLE)
parser.add_argument("--layers", default="mixed3")
parser.add_argument("--octaves", type=int, default=3)
parser.add_argument("--octave-scale", type=float, default=1.4)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--step-size", type=float, default=1.5 / 127.5)
parser.add_argument("--jitter", type=int, default=32)
parser.add_argument("--max-size", type=int, default=256)
parser.add_argument("--structure", choices=("keras", "tutorial"), default="keras")
parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
args = parser.parse_args()
tf.config.threading.set_intra_op_parallelism_threads(args.threads)

# The picture, in [-1, 1].
with Image.open(args.image) as im:
    im = im.convert("RGB")
    im.thumbnail((args.max_size, args.max_size), Image.LANCZOS)
    original = np.asarray(im, np.float32) / 127.5 - 1.0

# The model and its feature extractor, built for this picture alone.
keras.utils.set_random_seed(0)
model = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(None, None, 3))
names = args.layers.split(",")
feature_extractor = keras.Model(model.inputs, [model.get_layer(n).output for n in names])


def compute_loss(image):
    features = feature_extractor(image[None], training=False)
    features = features if isinstance(features, (list, tuple)) else [features]
    return tf.add_n([0.5 * tf.reduce_sum(tf.square(a)) for a in features])


def gradient_ascent_step(image, roll, step_size):
    image = tf.roll(image, roll, axis=[0, 1])
    with tf.GradientTape() as tape:
        tape.watch(image)
        loss = compute_loss(image)
    grads = tf.roll(tape.gradient(loss, image), -roll, axis=[0, 1])
    image = tf.roll(image, -roll, axis=[0, 1])
    image = image + step_size / tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-6) * grads
    return loss, tf.clip_by_value(image, -1.0, 1.0)


if args.structure == "tutorial":  # traced once for all sizes
    gradient_ascent_step = tf.function(gradient_ascent_step, input_signature=[
        tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)])
else:  # the Keras example: traced again for every new size
    gradient_ascent_step = tf.function(gradient_ascent_step)


rng = np.random.default_rng(0)
h, w = original.shape[:2]
shapes = [(int(h / args.octave_scale ** n), int(w / args.octave_scale ** n))
          for n in reversed(range(args.octaves))]
pyramid = [tf.image.resize(original, shapes[-1])]
for shape in reversed(shapes[:-1]):
    pyramid.insert(0, tf.image.resize(pyramid[0], shape))
detail = tf.zeros_like(pyramid[0])
step_size = tf.constant(args.step_size)
for k, shape in enumerate(shapes):
    img = pyramid[k] + tf.image.resize(detail, shape)
    for i in range(args.steps):
        roll = tf.constant(rng.integers(-args.jitter, args.jitter + 1, size=2), tf.int32)
        began = time.perf_counter()
        loss, img = gradient_ascent_step(img, roll, step_size)
        loss = float(loss)  # the loss read, as the print below would; the clock stops after it
        print(f"octave {k} step {i}: loss {loss:.4g} ({(time.perf_counter() - began) * 1000:.1f} ms)")
    detail = img - pyramid[k]

picture = np.clip(np.round((img.numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)
Image.fromarray(picture).save(args.out)
