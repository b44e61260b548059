"""Keras Applications convnets as dream backbones: how to build each one, how it wants its
pixels, and which layers dream well.

Every backbone sees the same image space in the engine, RGB in [-1, 1]; `to_input` maps that
onto the backbone's own input (for VGG/ResNet: BGR minus the ImageNet mean) inside the
compiled graph, so clipping, step sizes and the saved picture mean the same on every backbone.
Built models are cached per process: the next job of a sweep reuses them.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import DreamlabError, first_line

# The preprocessing families of keras.applications, as (scale, offset) of RGB 0..255 pixels
# per channel plus a channel flip: input = (rgb255[..., order] - mean) / std.
PREPROCESS = {
    "tf": dict(order=(0, 1, 2), mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
    "caffe": dict(order=(2, 1, 0), mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    "torch": dict(order=(0, 1, 2), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    # The model normalises its input itself (EfficientNet, ConvNeXt, MobileNetV3, custom).
    "raw": dict(order=(0, 1, 2), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    "unit": dict(order=(0, 1, 2), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0)),
}


@dataclass(frozen=True)
class BackboneSpec:
    constructor: str  # attribute of keras.applications
    preprocess: str  # key of PREPROCESS
    min_size: int  # smallest input side the constructor accepts (deep layers need more)
    presets: dict = field(default_factory=dict)  # named {layer: weight} maps; "default" first


def _two(a: str, b: str) -> dict:
    return {"default": {a: 1.0, b: 1.0}}


BACKBONES: dict[str, BackboneSpec] = {
    "inception_v3": BackboneSpec("InceptionV3", "tf", 75, {
        "default": {"mixed3": 1.0, "mixed5": 1.0},
        "tutorial": {"mixed3": 1.0, "mixed5": 1.0},
        "keras": {"mixed4": 1.0, "mixed5": 1.5, "mixed6": 2.0, "mixed7": 2.5},
        "dlwp": {"mixed2": 0.2, "mixed3": 3.0, "mixed4": 2.0, "mixed5": 1.5},
    }),
    "inception_resnet_v2": BackboneSpec("InceptionResNetV2", "tf", 75, _two("mixed_6a", "block17_10_ac")),
    "xception": BackboneSpec("Xception", "tf", 71, _two("block4_pool", "block8_sepconv3_act")),
    "vgg16": BackboneSpec("VGG16", "caffe", 32, _two("block4_conv3", "block5_conv2")),
    "vgg19": BackboneSpec("VGG19", "caffe", 32, _two("block4_conv4", "block5_conv2")),
    "resnet50": BackboneSpec("ResNet50", "caffe", 32, _two("conv3_block4_out", "conv4_block6_out")),
    "resnet101": BackboneSpec("ResNet101", "caffe", 32, _two("conv3_block4_out", "conv4_block12_out")),
    "resnet152": BackboneSpec("ResNet152", "caffe", 32, _two("conv3_block8_out", "conv4_block18_out")),
    "resnet50_v2": BackboneSpec("ResNet50V2", "tf", 32, _two("conv3_block4_out", "conv4_block6_out")),
    "resnet101_v2": BackboneSpec("ResNet101V2", "tf", 32, _two("conv3_block4_out", "conv4_block12_out")),
    "resnet152_v2": BackboneSpec("ResNet152V2", "tf", 32, _two("conv3_block8_out", "conv4_block18_out")),
    "densenet121": BackboneSpec("DenseNet121", "torch", 32, _two("conv3_block12_concat", "conv4_block12_concat")),
    "densenet169": BackboneSpec("DenseNet169", "torch", 32, _two("conv3_block12_concat", "conv4_block16_concat")),
    "densenet201": BackboneSpec("DenseNet201", "torch", 32, _two("conv3_block12_concat", "conv4_block24_concat")),
    "mobilenet": BackboneSpec("MobileNet", "tf", 32, _two("conv_pw_6_relu", "conv_pw_10_relu")),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf", 32, {
        "default": {"block_9_add": 1.0, "block_12_add": 1.0},
        "fur": {"block_12_add": 1.0, "block_14_add": 1.0},
    }),
    # MobileNetV3, EfficientNet(V2) and ConvNeXt rescale their 0..255 input themselves.
    "mobilenet_v3_small": BackboneSpec("MobileNetV3Small", "raw", 32, _two("expanded_conv_5_add", "expanded_conv_9_add")),
    "mobilenet_v3_large": BackboneSpec("MobileNetV3Large", "raw", 32, _two("expanded_conv_7_add", "expanded_conv_11_add")),
    **{f"efficientnet_b{i}": BackboneSpec(f"EfficientNetB{i}", "raw", 32, _two("block4c_add", "block5c_add"))
       for i in range(8)},
    **{f"efficientnet_v2_{v.lower()}": BackboneSpec(f"EfficientNetV2{v}", "raw", 32, _two("block4c_add", "block5c_add"))
       for v in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"convnext_{size}": BackboneSpec(f"ConvNeXt{size.title().replace('Xl', 'XL')}", "raw", 32, _two(
        f"convnext_{size}_stage_2_block_2_identity", f"convnext_{size}_stage_2_block_5_identity"))
       for size in ("tiny", "small", "base", "large", "xlarge")},
}
# Left out: NASNet. Keras aligns its cells from the static input shape; built for any size
# (None, None, 3) its cells do not fit together at any size (tests/test_backbones.py).


CUSTOM = "custom"


def custom(path: str, preprocess: str) -> str:
    """Register the user's own Keras model file as a backbone; returns its name.

    The model must take images of any size (input shape (None, None, 3)), as convolutional
    feature extractors do; `preprocess` says which pixels it was trained on.
    """
    if preprocess not in PREPROCESS:
        raise DreamlabError(f"backbone.preprocess must be one of {'|'.join(PREPROCESS)} for a custom "
                            f"model, not {preprocess!r} (tf: [-1, 1], caffe: BGR minus mean, torch: "
                            f"ImageNet mean/std, raw: 0..255, unit: 0..1)")
    if not path or not os.path.isfile(path):
        raise DreamlabError(f"custom model not found: {path}; give backbone.path=PATH of a .keras file")
    name = f"{CUSTOM}:{os.path.abspath(path)}"
    BACKBONES[name] = BackboneSpec("", preprocess, 1, {})
    return name


def spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DreamlabError(f"unknown backbone '{name}'{hint} (known: {', '.join(BACKBONES)})")
    return BACKBONES[name]


# The recipes name InceptionV3 layer sets; on another backbone they mean its default set.
RECIPES = ("tutorial", "keras")


def presets(name: str) -> dict:
    table = dict(spec(name).presets)
    for recipe in RECIPES:
        if "default" in table:
            table.setdefault(recipe, table["default"])
    return table


def layer_terms(name: str, layers: Any) -> tuple:
    """The objective's terms of `layers` (a preset of this backbone, a name, a list or a map),
    refusing a preset name the backbone does not have."""
    from .objective import parse_layers

    table = presets(name)
    if isinstance(layers, str) and layers in ("default",) + RECIPES and layers not in table:
        raise DreamlabError(f"this backbone has no '{layers}' layer preset: name its layers, for "
                            f"example layers=NAME (python -m dreamlab.layers lists them)")
    return parse_layers(layers, table)


# Trained weights shipped inside the package (dreamlab/data/README.md: origin, licence), for a
# first dream with no download: backbone.weights=bundled.
BUNDLED = {"mobilenet_v2": Path(__file__).resolve().parent / "data" / "mobilenet_v2_imagenet_notop.weights.h5"}


def resolve_weights(name: str, weights: Optional[str]) -> Optional[str]:
    """`bundled` is the file shipped for this backbone; any other value is itself."""
    if weights != "bundled":
        return weights
    if name not in BUNDLED:
        raise DreamlabError(f"backbone={name} has no bundled weights: dreamlab ships trained weights for "
                            f"{', '.join(BUNDLED)} only (backbone=mobilenet_v2 backbone.weights=bundled); "
                            f"use backbone.weights=imagenet or a weights file")
    return str(BUNDLED[name])


class LRU(collections.OrderedDict):
    """A dict that keeps only its `limit` most recently used entries: a process-wide cache
    that a long sweep over many backbones cannot grow without end."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return self.put(key, make())

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
        return value


# A job uses one model (two with precision=mixed_bfloat16: the bfloat16 copy is made from the
# float32 one); three keep a sweep that alternates two backbones from rebuilding either, and
# bound the memory of a sweep over many (InceptionV3 is ~90 MB of weights, ConvNeXt-XL 1.4 GB).
MODEL_CACHE = 3
_MODELS = LRU(MODEL_CACHE)


def load(name: str, weights: Optional[str] = "imagenet", precision: str = "float32"):
    """The Keras model of backbone `name` without its classifier, for any image size.

    weights: "imagenet" (Keras' own download and cache), "bundled" (the file shipped in the
    package, `BUNDLED`), None (random, fixed seed) or the path of a `.weights.h5` / legacy
    `.h5` file. precision: float32, or mixed_bfloat16
    (a bfloat16 copy of the float32 model, see `mixed_bfloat16`).
    """
    weights = resolve_weights(name, weights)
    key = (name, weights if weights in ("imagenet", None) else os.path.abspath(weights), precision)
    if precision == "float32":
        return _MODELS.get_or_make(key, lambda: _build(name, weights))
    return _MODELS.get_or_make(key, lambda: mixed_bfloat16(load(name, weights), name))


def mixed_bfloat16(model, name: str = "the model"):
    """A copy of `model` that computes in bfloat16 (Keras' mixed_bfloat16 policy: float32
    weights, bfloat16 activations), with every BatchNormalization folded into the Conv2D
    before it (`fold_batchnorm`).

    The folding is exact in real arithmetic (inference BN is an affine map per channel) and
    is what makes bfloat16 pay on a CPU: Keras computes BN in float32, so an unfolded
    bfloat16 model casts every activation to float32 and back around each BN, forward and
    backward, and that round trip ate most of the gain (InceptionV3 at 512 px: 1.25x
    unfolded, 2.4x folded). A folded BN becomes a pass-through layer of the same name, so
    objectives naming it see the same values."""
    return fold_batchnorm(model, "mixed_bfloat16", name)


def fold_batchnorm(model, dtype: str = "float32", name: str = "the model"):
    """A copy of `model` under the dtype policy `dtype`, each BatchNormalization that alone
    reads a linear Conv2D folded into that convolution's kernel and bias."""
    import keras

    folds = _batchnorm_folds(model)
    folded = {bn for bn, _, _ in folds.values()}

    def clone(layer):
        if layer.name in folded:
            return _folded()(name=layer.name, dtype=dtype)
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as exc:
        raise DreamlabError(f"cannot make a {dtype} copy of {name}: {first_line(exc)[:200]} "
                            f"(use precision=float32)") from None
    for layer in copy.layers:
        if layer.name in folds:
            layer.set_weights(list(folds[layer.name][1:]))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def _batchnorm_folds(model) -> dict:
    """{conv name: (bn name, kernel, bias)} for each BatchNormalization that alone reads a
    linear channels-last Conv2D; computed in float64, stored as float32."""
    import keras
    import numpy as np

    # Which layer made each tensor, and how many layers (or model outputs) read it: the
    # public `layer.input` / `layer.output` (a layer called more than once has neither).
    producer, readers = {}, collections.Counter()
    for layer in model.layers:
        try:
            outputs = layer.output
            inputs = [] if isinstance(layer, keras.layers.InputLayer) else layer.input
        except (AttributeError, ValueError):
            continue
        for tensor in keras.tree.flatten(outputs):
            producer[id(tensor)] = layer
        for tensor in keras.tree.flatten(inputs):
            readers[id(tensor)] += 1
    for tensor in keras.tree.flatten(model.outputs):
        readers[id(tensor)] += 1
    folds = {}
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        conv = producer.get(id(bn.input))
        if (type(conv) is not keras.layers.Conv2D or readers[id(bn.input)] != 1
                or conv.activation is not keras.activations.linear
                or conv.data_format != "channels_last"):
            continue
        w = {v.path.rsplit("/", 1)[-1]: np.asarray(v.numpy(), np.float64) for v in bn.weights}
        scale = (w["gamma"] if bn.scale else 1.0) / np.sqrt(w["moving_variance"] + bn.epsilon)
        kernel, *bias = (np.asarray(v.numpy(), np.float64) for v in conv.weights)
        shift = (bias[0] if bias else 0.0) - w["moving_mean"]
        folds[conv.name] = (bn.name, (kernel * scale).astype(np.float32),
                            (shift * scale + (w["beta"] if bn.center else 0.0)).astype(np.float32))
    return folds


@functools.cache
def _folded():
    """The layer that stands for a folded BatchNormalization: it passes its input through.
    Made on first use, so that importing this module does not import Keras."""
    import keras

    @keras.saving.register_keras_serializable(package="dreamlab")
    class Folded(keras.layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

    return Folded


def _build(name: str, weights: Optional[str]):
    import keras

    info = spec(name)
    if name.startswith(CUSTOM + ":"):
        return _load_custom(name.split(":", 1)[1], weights)
    constructor = getattr(keras.applications, info.constructor)

    def make(w):
        return constructor(include_top=False, weights=w, input_shape=(None, None, 3))

    if weights == "imagenet":
        with _download_errors(name):
            return make("imagenet")
    # Random weights are drawn from a fixed seed so that `weights=null` dreams are
    # reproducible across processes and machines.
    keras.utils.set_random_seed(0)
    model = make(None)
    if weights is not None:
        load_weights(model, weights, f"backbone={name}")
    return model


def _load_custom(path: str, weights: Optional[str]):
    import keras

    try:
        # safe_mode refuses Lambda layers and other code stored in the file.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise DreamlabError(
                f"the custom model {path} stores Python code (a Lambda layer or a function), which "
                f"dreamlab does not run from a model file (Keras' safe_mode): rebuild it without that "
                f"code and save it with model.save('model.keras'), or dream with one of dreamlab's own "
                f"backbones (backbone=inception_v3, mobilenet_v2, ...: python -m dreamlab --help lists them)") from None
        raise DreamlabError(f"cannot load the custom model {path}: {first_line(exc)[:300]}; save it with "
                            f"model.save('model.keras')") from None
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or any(d is not None for d in shape[1:3]):
        raise DreamlabError(f"the custom model's input shape is {shape}: a dream needs any image "
                            f"size, so build it with input shape (None, None, 3)")
    if weights not in (None, "imagenet"):
        load_weights(model, weights, f"the custom model {path}")
    return model


def load_weights(model, path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise DreamlabError(
            f"weights file not found: {path}; give the path of a .weights.h5 or .h5 file, "
            f"or backbone.weights=imagenet (download) or backbone.weights=null (random)")
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras raises ValueError/OSError/KeyError for a wrong file
        first = first_line(exc)
        raise DreamlabError(
            f"cannot load weights {path} into {what}: {first[:300]}; the file must hold "
            f"weights of this exact architecture without its top (include_top=False)") from None


@contextlib.contextmanager
def _download_errors(name: str):
    """Turn a failed ImageNet download into one message naming the missing file, where to
    put it, and the alternatives. The file name is taken from the address in Keras' own
    download error, so it is right for every backbone and Keras version."""
    from urllib.parse import urlsplit

    from . import internals

    try:
        yield
    except Exception as exc:
        origin = internals.keras_download_origin(exc)
        if origin is None:
            raise
        fname = os.path.basename(urlsplit(origin).path)
        where = internals.keras_download_dir("models")  # keras.applications' cache_subdir
        reason = first_line(exc)
        raise DreamlabError(
            f"could not download the ImageNet weights of backbone={name} ({reason[:200]}): "
            f"put the file {fname} in {where}/ (KERAS_HOME sets the folder), or pass "
            f"backbone.weights=PATH to a weights file, or backbone.weights=null for random "
            f"weights") from None


def fits(extractor, side: int) -> bool:
    """Whether a square input of `side` px gives every output of `extractor` at least 1x1:
    shape inference only, no compute."""
    try:
        shapes = extractor.compute_output_shape((1, side, side, 3))
    except Exception:  # Keras raises ValueError or TF errors for a negative dimension
        return False
    shapes = shapes if isinstance(shapes, (list, tuple)) and isinstance(shapes[0], (list, tuple)) else [shapes]
    return all(d is None or d >= 1 for shape in shapes for d in shape[1:3])


def min_size(extractor, limit: int = 1024) -> int:
    """The smallest square input that `extractor` takes: a binary search over `fits`."""
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(extractor, mid) else (mid + 1, hi)
    return lo


def weights_identity(name: str, weights: Optional[str]) -> str:
    """What the weights are, for telling whether two jobs did the same work: a file by its
    SHA-256 (a custom model by its file's), Keras' ImageNet weights by the Keras version."""
    import keras

    from .images import sha256 as digest

    weights = resolve_weights(name, weights)
    parts = []
    if name.startswith(CUSTOM + ":") and os.path.isfile(name.split(":", 1)[1]):
        parts.append("model:" + digest(name.split(":", 1)[1]))
    if weights is None:
        parts.append("random")
    elif weights == "imagenet":
        parts.append(f"imagenet:keras-{keras.__version__}")
    else:
        parts.append("file:" + (digest(weights) if os.path.isfile(weights) else "missing"))
    return ",".join(parts)


def layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


def check_layers(model, name: str, wanted) -> None:
    """Fail before any compute when a layer name is not in the backbone, naming the closest;
    the names are kept (`known_layers`) so that later jobs check them before building."""
    names = layer_names(model)
    remember_layers(name, names)
    check_layer_names(names, name, wanted)


def check_layer_names(names: list[str], name: str, wanted) -> None:
    for layer in wanted:
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise DreamlabError(
                f"unknown layer '{layer}' for backbone={name}{hint} "
                f"(python -m dreamlab.layers backbone={name} lists them all)")


def _layer_cache(name: str) -> Optional[Path]:
    """Where a Keras Applications backbone's layer names are kept once it has been built
    ($DREAMLAB_CACHE/layers, by default ~/.cache/dreamlab/layers or under $XDG_CACHE_HOME):
    per Keras version, which names them."""
    if name not in BACKBONES or name.startswith(CUSTOM + ":"):  # a user's file may change
        return None
    from importlib import metadata

    try:
        version = metadata.version("keras")
    except metadata.PackageNotFoundError:
        return None
    from . import cache

    return cache.root() / "layers" / f"{name}-keras{version}.json"


def known_layers(name: str) -> Optional[list[str]]:
    """The backbone's layer names when a job of this machine has built it before, else None."""
    import json

    path = _layer_cache(name)
    try:
        return json.loads(path.read_text()) if path and path.is_file() else None
    except (OSError, ValueError):
        return None


def remember_layers(name: str, names: list[str]) -> None:
    import json

    path = _layer_cache(name)
    if path is None or path.is_file():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, path)  # atomic: parallel workers may write it at once
    except OSError:
        pass  # a read-only home: the check then happens after the build, as before
