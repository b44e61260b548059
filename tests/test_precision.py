"""precision=mixed_bfloat16: a bfloat16 copy of the backbone with BatchNorm folded into the
convolutions, which must compute the same features as the float32 model within bfloat16's
rounding, and dream."""

import numpy as np

import dreamlab
from dreamlab import backbones, engine

from conftest import TRAINED_WEIGHTS

WEIGHTS = str(TRAINED_WEIGHTS)


def features(model, layer: str, picture: np.ndarray) -> np.ndarray:
    import keras

    extractor = keras.Model(model.inputs, model.get_layer(layer).output)
    x = picture[None].astype(np.float32) / 127.5 - 1.0
    return np.asarray(extractor(x, training=False), np.float32)


def test_bfloat16_copy_folds_batchnorm_and_keeps_the_features(small_array):
    import keras

    f32 = backbones.load("mobilenet_v2", WEIGHTS)
    bf16 = backbones.load("mobilenet_v2", WEIGHTS, "mixed_bfloat16")
    assert backbones.load("mobilenet_v2", WEIGHTS, "mixed_bfloat16") is bf16  # built once
    # Same layers under the same names (the input layer aside), so objectives carry over.
    assert [l.name for l in bf16.layers[1:]] == [l.name for l in f32.layers[1:]]
    # Every BatchNormalization after a plain Conv2D is folded (MobileNetV2: the 1x1
    # expand/project convolutions and the stem); those after depthwise ones stay.
    folded = [l.name for l in bf16.layers if type(l).__name__ == "Folded"]
    after_conv = [l.name for l in f32.layers if isinstance(l, keras.layers.BatchNormalization)
                  and type(l.input._keras_history[0]) is keras.layers.Conv2D]
    assert folded == after_conv and len(folded) > 15
    assert bf16.compute_dtype == "bfloat16" or bf16.layers[1].compute_dtype == "bfloat16"
    # The fold is exact up to float32 rounding. bfloat16's error depends on the CPU's kernels
    # (AMX, AVX-512 BF16 and plain AVX-512 round differently: 0.08 here, 0.11 seen on an AMD
    # EPYC), so the bound is this machine's own: Keras' mixed_bfloat16 policy on the unfolded
    # model rounds each convolution's weights and output to bfloat16 once, as the folded copy
    # does, so both errors are of one size; 2x leaves room for the folded weights' own rounding.
    exact = backbones.fold_batchnorm(f32)
    unfolded = keras.models.clone_model(f32, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": "mixed_bfloat16"}))
    unfolded.set_weights(f32.get_weights())
    for layer in (folded[3], "block_9_add"):
        a = features(f32, layer, small_array)
        error = lambda model: np.linalg.norm(features(model, layer, small_array) - a) / np.linalg.norm(a)
        assert error(exact) < 1e-5
        assert 0 < error(bf16) < 2 * error(unfolded), (layer, error(bf16), error(unfolded))


def test_mixed_bfloat16_dreams(small_array):
    result = dreamlab.dream(small_array, backbone="mobilenet_v2", weights=WEIGHTS,
                            layers="block_9_add", octaves=2, steps=5, jitter=0,
                            precision="mixed_bfloat16")
    assert np.abs(result.image.astype(int) - small_array).mean() > 1.0
    octave = result.losses[5:]
    assert octave[-1] > octave[0]
    keys = [key for key in engine._STEPS if "mixed_bfloat16" in key]
    assert keys and all(key[0] == "mobilenet_v2" for key in keys)
