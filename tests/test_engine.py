"""The engine as a notebook uses it: plain values in, a picture and its losses out."""

import numpy as np
import pytest

import dreamlab
from dreamlab import backbones, engine
from dreamlab.errors import DreamlabError

from conftest import TRAINED_WEIGHTS

# The real trained MobileNetV2: an untrained one's gradients are ~1e-14, below the
# references' normalisation epsilon, so it barely moves a picture (see README).
TRAINED = dict(backbone="mobilenet_v2", weights=str(TRAINED_WEIGHTS))
RANDOM = dict(backbone="mobilenet_v2", weights=None)


def test_dream_changes_the_picture_and_raises_the_loss(small_array):
    result = dreamlab.dream(small_array, **TRAINED, layers="block_9_add", octaves=2, steps=6,
                            jitter=0)
    assert result.image.shape == small_array.shape and result.image.dtype == np.uint8
    assert np.abs(result.image.astype(int) - small_array).mean() > 1.0
    assert len(result.losses) == 12 and result.octave_of_step == [0] * 6 + [1] * 6
    for k in range(2):
        octave = [l for l, o in zip(result.losses, result.octave_of_step) if o == k]
        assert octave[-1] > octave[0]
    assert len(result.octave_images) == 2 and result.octave_images[0].shape[0] < 96


def test_step_is_traced_once_for_every_size_and_picture(small_array):
    layers = {"block_5_add": 1.0, "block_9_add": 0.5}
    dreamlab.dream(small_array, **TRAINED, layers=layers, octaves=3, steps=2)
    other = np.ascontiguousarray(small_array[:80, :64])
    dreamlab.dream(other, **TRAINED, layers=layers, octaves=2, steps=2, octave_scale=1.2)
    steps = [s for key, s in engine._STEPS.items() if key[2].layers == list(layers)]
    assert len(steps) == 1
    assert steps[0].traces == 1


def test_same_seed_same_picture_other_seed_other_picture(small_array):
    a = dreamlab.dream(small_array, **TRAINED, layers="block_9_add", octaves=2, steps=3, seed=7)
    b = dreamlab.dream(small_array, **TRAINED, layers="block_9_add", octaves=2, steps=3, seed=7)
    c = dreamlab.dream(small_array, **TRAINED, layers="block_9_add", octaves=2, steps=3, seed=8)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def test_unknown_layer_names_the_closest_before_any_compute(small_array):
    with pytest.raises(DreamlabError) as err:
        dreamlab.dream(small_array, **RANDOM, layers="block_12_ad", steps=1)
    message = str(err.value)
    assert "unknown layer 'block_12_ad'" in message and "block_12_add" in message
    assert "python -m dreamlab.layers backbone=mobilenet_v2" in message
    assert not any(key[2].layers == ["block_12_ad"] for key in engine._STEPS)


def test_too_small_octave_says_the_sizes_and_the_fix(small_array):
    with pytest.raises(DreamlabError) as err:
        dreamlab.dream(small_array, backbone="inception_v3", weights=None, layers="mixed5",
                       octaves=5, steps=1)
    message = str(err.value)
    # 96 px in 4 zooms of 1/1.4 (round from the previous level): 69, 49, 35, 25.
    assert "smallest octave is 25x25 px" in message and "at least 43 px" in message
    assert "use octaves=3 (the most that fit this photo)" in message and "max_size" in message
    # The proposed value works.
    assert dreamlab.dream(small_array, backbone="inception_v3", weights=None, layers="mixed5",
                          octaves=3, steps=1).image.shape == small_array.shape


def test_weighted_layers_channels_and_negative_weights(small_array):
    pull = dreamlab.dream(small_array, **TRAINED, layers={"block_9_add": {"weight": 1.0, "channels": [3, 5]}},
                          octaves=1, steps=3, jitter=0)
    push = dreamlab.dream(small_array, **TRAINED, layers={"block_9_add": {"weight": -1.0, "channels": [3, 5]}},
                          octaves=1, steps=3, jitter=0)
    assert pull.losses[-1] > pull.losses[0]
    assert push.losses[-1] > push.losses[0]  # the score of -1 x channels rises too
    assert pull.image.tobytes() != push.image.tobytes()


@pytest.mark.parametrize("bad, words", [
    (dict(octaves=0), "octaves must be >= 1"),
    (dict(objective="cube"), "objective must be one of mean|mean_square|l2"),
    (dict(precision="float16"), "precision must be one of float32|mixed_bfloat16"),
    (dict(layers={"block_9_add": {"weight": 1, "chanels": [1]}}), "unknown keys ['chanels']"),
    (dict(layers={"block_9_add": {"channels": [4000]}}), "channels [4000] out of range"),
])
def test_bad_values_say_what_to_do(small_array, bad, words):
    with pytest.raises(DreamlabError) as err:
        dreamlab.dream(small_array, **RANDOM, **{"layers": "block_9_add", **bad})
    assert words in str(err.value)


def test_tiled_gradients_leave_no_seams(square_photo):
    """Tiles of 64 px over a 192 px photo: the random roll moves the tile borders at every
    step, so the change to the picture shows no lines along the tile grid."""
    from PIL import Image

    with Image.open(square_photo) as im:
        photo = np.asarray(im.resize((192, 192), Image.LANCZOS))
    result = dreamlab.dream(photo, **TRAINED, layers="block_9_add", octaves=1, steps=8, tile_size=64)
    change = np.abs(result.image.astype(float) - photo).mean(axis=(0, 2))  # per column
    grid = [c for c in (63, 64, 127, 128)]
    assert change.mean() > 2.0
    assert change[grid].mean() < 1.5 * change.mean()
    rows = np.abs(result.image.astype(float) - photo).mean(axis=(1, 2))
    assert rows[grid].mean() < 1.5 * rows.mean()



def test_model_and_step_caches_are_bounded_and_keep_the_step_in_use(monkeypatch):
    """A sweep over many backbones in one process holds at most MODEL_CACHE models (and only
    their steps); the models that left the cache are freed, and a step in use is reused."""
    import gc
    import weakref

    monkeypatch.setattr(backbones, "_MODELS", backbones.LRU(2))
    from dreamlab.engine import steps as cache  # where the step cache lives

    monkeypatch.setattr(cache, "_STEPS", backbones.LRU(8))
    photo = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    names = ["mobilenet_v2", "mobilenet", "mobilenet_v3_small"]
    models = []
    for name in names:
        dreamlab.dream(photo, backbone=name, weights=None, layers="default", octaves=1, steps=1, jitter=0)
        models.append(weakref.ref(backbones._MODELS[(name, None, "float32")]))
    gc.collect()
    assert models[0]() is None and models[1]() is not None and models[2]() is not None
    assert [key[0] for key in backbones._MODELS] == names[1:]
    assert {key[0] for key in cache._STEPS} == set(names[1:])
    last = next(s for key, s in cache._STEPS.items() if key[0] == names[-1])
    traces = last.traces
    dreamlab.dream(photo, backbone=names[-1], weights=None, layers="default", octaves=1, steps=1, jitter=0)
    assert next(s for key, s in cache._STEPS.items() if key[0] == names[-1]) is last
    assert last.traces == traces  # not compiled again
