"""Where backbone weights come from: Keras' ImageNet download (simulated offline at Keras'
own download function), a user's weights file, and the real trained MobileNetV2."""

import urllib.error

import numpy as np
import pytest

import dreamlab
from dreamlab import backbones
from dreamlab.errors import DreamlabError

from conftest import TRAINED_WEIGHTS


@pytest.fixture
def fresh_models(monkeypatch, tmp_path):
    """An empty model cache and an empty Keras cache folder (KERAS_HOME) for this test."""
    from keras.src.backend import config

    monkeypatch.setattr(backbones, "_MODELS", backbones.LRU(backbones.MODEL_CACHE))
    # Keras reads KERAS_HOME once, at import (its private _KERAS_DIR); dreamlab reads it
    # when it needs it (dreamlab.internals.keras_home): both, as a fresh process would.
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


def test_failed_imagenet_download_names_the_file_where_to_put_it_and_the_alternatives(fresh_models, monkeypatch):
    from keras.src.utils import file_utils

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(DreamlabError) as err:
        backbones.load("mobilenet_v2", "imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message
    assert str(fresh_models / "keras_home" / "models") in message
    assert "backbone.weights=PATH" in message and "backbone.weights=null" in message


def test_successful_imagenet_download_is_loaded_into_the_backbone(fresh_models, monkeypatch):
    import keras
    from keras.src.utils import file_utils

    donor = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    kernel = donor.get_layer("Conv1").kernel
    kernel.assign(np.full(kernel.shape, 0.125, np.float32))
    path = fresh_models / "downloaded.weights.h5"
    donor.save_weights(path)
    asked = []

    def downloaded(fname=None, origin=None, *args, **kwargs):
        asked.append(fname)
        return str(path)

    monkeypatch.setattr(file_utils, "get_file", downloaded)
    model = backbones.load("mobilenet_v2", "imagenet")
    assert asked and asked[0].startswith("mobilenet_v2_weights")
    assert np.all(model.get_layer("Conv1").kernel.numpy() == 0.125)


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_weights_file_keras3_and_legacy_h5(fresh_models, suffix):
    import keras

    donor = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    bias = donor.get_layer("block1_conv1").bias
    bias.assign(np.arange(bias.shape[0], dtype=np.float32))
    path = fresh_models / f"vgg{suffix}"
    if suffix == ".h5":
        donor.save(path)  # the legacy HDF5 format of Keras 2 days
    else:
        donor.save_weights(path)
    model = backbones.load("vgg16", str(path))
    assert np.array_equal(model.get_layer("block1_conv1").bias.numpy(), np.arange(64))


def test_wrong_weights_file_says_so(fresh_models):
    with pytest.raises(DreamlabError) as err:
        backbones.load("mobilenet_v2", str(TRAINED_WEIGHTS).replace("mobilenet_v2", "nothing"))
    assert "weights file not found" in str(err.value)
    with pytest.raises(DreamlabError) as err:
        backbones.load("vgg16", str(TRAINED_WEIGHTS))
    assert "cannot load weights" in str(err.value) and "include_top=False" in str(err.value)


def test_trained_network_dreams_far_harder_than_random_weights(small_array):
    """The same short dream: the real ImageNet MobileNetV2 raises its objective by a large
    factor; an untrained one barely moves it."""
    args = dict(backbone="mobilenet_v2", layers="block_12_add", octaves=1, steps=8, jitter=0)
    trained = dreamlab.dream(small_array, weights=str(TRAINED_WEIGHTS), **args)
    random = dreamlab.dream(small_array, weights=None, **args)
    gain_trained = trained.losses[-1] / trained.losses[0]
    gain_random = random.losses[-1] / random.losses[0]
    assert gain_trained > 1.5
    assert gain_trained - 1 > 10 * (gain_random - 1)
