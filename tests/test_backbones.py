"""Every Keras Applications backbone dreams: one step at the smallest size its default
layers can take, with random weights (shapes and plumbing, not pictures)."""

import numpy as np
import pytest

import dreamlab
from dreamlab import backbones, engine


# One backbone of each family (its constructor, preprocessing and layer naming) dreams a real
# step; the other members of a family differ only in width and depth, which the shape
# inference below covers for every row of the table without compiling a step.
DREAMED = ["inception_v3", "inception_resnet_v2", "xception", "vgg16", "resnet50", "resnet50_v2",
           "densenet121", "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
           "efficientnet_v2_b0", "convnext_tiny"]


@pytest.fixture
def fresh_caches(monkeypatch):
    # A fresh cache per backbone, so the suite never holds forty models at once.
    monkeypatch.setattr(backbones, "_MODELS", backbones.LRU(backbones.MODEL_CACHE))
    monkeypatch.setattr(engine, "_STEPS", backbones.LRU(4 * backbones.MODEL_CACHE))


@pytest.mark.parametrize("name", DREAMED)
def test_one_backbone_of_each_family_dreams_a_step_at_its_smallest_size(name, fresh_caches):
    objective = engine.Objective(engine.parse_layers("default", backbones.presets(name)))
    step = engine.compiled_step(name, None, objective, "mean_abs", True)
    side = step.min_size
    assert side <= 256, f"{name} needs {side} px"
    photo = np.random.default_rng(0).integers(0, 256, (side, side + 3, 3), dtype=np.uint8)
    result = dreamlab.dream(photo, backbone=name, weights=None, layers="default", octaves=1,
                            steps=1, jitter=0)
    assert result.image.shape == photo.shape and np.isfinite(result.losses[0])
    with pytest.raises(dreamlab.DreamlabError, match="smallest octave"):
        dreamlab.dream(photo[: side - 1], backbone=name, weights=None, layers="default", octaves=1, steps=1)


@pytest.mark.parametrize("name", sorted(set(backbones.BACKBONES) - set(DREAMED)))
def test_every_other_backbone_has_its_preset_layers_and_takes_small_pictures(name, fresh_caches):
    """Shape inference only: the model is built, every preset's layers exist, and the default
    layers take a picture of at most 256 px (and not one pixel less than their minimum)."""
    import keras

    model = backbones.load(name, None)
    for preset, layers in backbones.presets(name).items():
        backbones.check_layers(model, name, list(layers))
    extractor = keras.Model(model.inputs, [model.get_layer(layer).output
                                           for layer in backbones.presets(name)["default"]])
    side = backbones.min_size(extractor)
    assert side <= 256, f"{name} needs {side} px"
    assert backbones.fits(extractor, side) and (side == 1 or not backbones.fits(extractor, side - 1))


def test_nasnet_is_left_out_because_it_cannot_take_variable_sizes():
    """If a future Keras fixes this, NASNet can join the table."""
    import keras

    model = keras.applications.NASNetMobile(include_top=False, weights=None, input_shape=(None, None, 3))
    for side in (224, 256, 331):
        with pytest.raises(Exception, match="incompatible shapes"):
            model.compute_output_shape((1, side, side, 3))
    assert "nasnet_mobile" not in backbones.BACKBONES


def test_a_users_own_keras_model_dreams_through_the_cli(tmp_path, square_photo):
    import keras

    from conftest import run_cli

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    keras.Model(inputs, x).save(tmp_path / "mine.keras")
    proc = run_cli(["backbone=custom", f"backbone.path={tmp_path / 'mine.keras'}", "backbone.preprocess=unit",
                    "layers=conv2", f"image={square_photo}", "max_size=64", "octaves=2", "steps=2",
                    "mlflow.enabled=false", "hydra.run.dir=out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "dream.png").is_file()


def test_a_custom_model_with_code_in_it_is_refused_by_safe_mode(tmp_path, small_array):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    keras.Model(inputs, x).save(tmp_path / "lambda.keras")
    name = backbones.custom(str(tmp_path / "lambda.keras"), "tf")
    with pytest.raises(dreamlab.DreamlabError) as err:
        dreamlab.dream(small_array, backbone=name, weights=None, layers="conv", octaves=1, steps=1)
    message = str(err.value)
    # One whole sentence that names the problem and dreamlab's own options.
    assert message.startswith("the custom model ") and "stores Python code" in message
    assert "backbone=inception_v3, mobilenet_v2" in message and "\n" not in message
    assert message.count(":") <= 3 and message.endswith("lists them)")


def test_layer_listing_shows_shapes_and_marks_presets():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dreamlab.layers", "backbone=mobilenet_v2", "grep=_add"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "14x14x64" in rows["block_9_add"] and "default" in rows["block_9_add"]
    assert "fur" in rows["block_14_add"] and "default" not in rows["block_14_add"]
    bad = subprocess.run([sys.executable, "-m", "dreamlab.layers", "backbone=mobilenetv2"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "did you mean mobilenet_v2" in bad.stderr
