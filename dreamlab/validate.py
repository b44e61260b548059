"""Everything about a job that can be checked before it costs anything: before TensorFlow is
imported (~7 s) and before an MLflow run exists. A mistake here is one line and no run.

`job(cfg)` returns the typed config (the schema's types and every knob's values, checked by
`DreamSettings`) and the decoded pictures, after checking the files it names (image, guide,
weights, custom model),
the memory the largest octave needs, and the tracking store (its scheme, that a local store's
folder is writable, that a server answers within 5 s).
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from typing import Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from . import backbones, config, images, slots
from .errors import DreamlabError, first_line
from .settings import DreamSettings

# The tracking URI schemes MLflow 3 stores runs in.
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
SERVER_TIMEOUT_S = 5.0


@dataclass
class Job:
    """A job's checked config and its pictures, decoded once (None: image=null / no guide)."""

    conf: config.Config
    photo: Optional[np.ndarray]
    guide: Optional[np.ndarray]


def job(cfg: DictConfig) -> Job:
    conf: config.Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config.Config), cfg))
    photo, guide = pictures(conf)
    _weights(conf)
    _layers(conf)
    if conf.mlflow.enabled:
        tracking_store(conf.mlflow.tracking_uri)
    return Job(conf, photo, guide)


def pictures(conf: config.Config) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The photo and the guide, decoded whole (a truncated file fails here), after checking
    from the photo's header alone that its largest octave fits in memory."""
    settings = DreamSettings(**{name: getattr(conf, name) for name in DreamSettings.names()})
    photo = guide = None
    if conf.image is None:
        side = conf.max_size or 512
        fits_memory((side, side), settings, "image=null")
    else:
        fits_memory(images.target_size(images.header(conf.image), conf.max_size), settings,
                    f"max_size={conf.max_size}" if conf.max_size else "max_size=null (the photo's own size)")
        photo = images.load(conf.image, conf.max_size)
    if conf.guide is not None:
        guide = images.load(conf.guide, conf.max_size, what="guide")
    return photo, guide


def fits_memory(size: tuple[int, int], settings: DreamSettings, cause: str) -> None:
    """Refuse a picture whose largest octave needs more memory than the machine has free."""
    from .engine import octave_sizes

    h, w = size[1], size[0]
    largest = max(octave_sizes(h, w, settings), key=lambda hw: hw[0] * hw[1])
    need = largest[0] * largest[1] * images.BYTES_PER_PIXEL
    free = slots.available_memory()
    if free and need > free:
        fit = int(max(size) * (free / need) ** 0.5 * 0.9)
        raise DreamlabError(
            f"{cause} makes a {w}x{h} px picture whose largest octave ({largest[1]}x{largest[0]} px) needs "
            f"about {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB this machine has free: "
            f"use max_size={max(fit, 8)} or less")


def _layers(conf: config.Config) -> None:
    """Layer names, when this backbone's list is known without building it (cached by an
    earlier job of this machine); otherwise the built network checks them."""
    names = backbones.known_layers(conf.backbone.name)
    if names is None:
        return
    layers = OmegaConf.to_container(conf.layers) if OmegaConf.is_config(conf.layers) else conf.layers
    backbones.check_layer_names(names, conf.backbone.name,
                                [t.layer for t in backbones.layer_terms(conf.backbone.name, layers)])


def _weights(conf: config.Config) -> None:
    name, weights = conf.backbone.name, conf.backbone.weights
    if name == backbones.CUSTOM:
        path = conf.backbone.path
        if not path or not os.path.isfile(path):
            raise DreamlabError(f"backbone=custom needs backbone.path=FILE of a .keras model; "
                                f"{'no such file: ' + str(path) if path else 'none was given'}")
        if weights == "bundled":
            raise DreamlabError("backbone.weights=bundled is MobileNetV2's: a custom model keeps the weights "
                                "saved in its file (backbone.weights=null) or loads a weights file")
        return
    resolved = backbones.resolve_weights(name, weights)
    if resolved not in (None, "imagenet") and not os.path.isfile(resolved):
        what = "is a folder" if os.path.isdir(resolved) else "not found"
        raise DreamlabError(f"weights file {what}: {resolved}; give backbone.weights=PATH of a .weights.h5 or "
                            f".h5 file, or backbone.weights=imagenet (download), backbone.weights=bundled (mobilenet_v2) "
                            f"or backbone.weights=null (random)")


def store(mlflow: DictConfig) -> None:
    """A sweep's store, before its parent run: the schema's checks of the mlflow keys, then
    the store itself."""
    checked: config.MlflowConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config.MlflowConfig), mlflow))
    tracking_store(checked.tracking_uri)


def tracking_store(uri: str) -> None:
    """The store must be one MLflow knows, writable, and (a server) answering."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    example = ("use sqlite:///PATH.db (a local store), http://HOST:PORT (a tracking server) or "
               "postgresql://... (a database)")
    if scheme not in SCHEMES:
        raise DreamlabError(f"mlflow.tracking_uri={uri} is not a tracking store MLflow knows "
                            f"({'scheme ' + repr(scheme) if scheme else 'no scheme'}): {example}")
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path:
            raise DreamlabError(f"mlflow.tracking_uri={uri}: a SQLite store is sqlite:///PATH.db")
        _writable(os.path.dirname(os.path.abspath(path)) or ".", f"the MLflow store {uri}")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise DreamlabError(f"the MLflow store {uri} is read-only: make {path} writable or set "
                                f"mlflow.tracking_uri to another store")
    elif scheme in ("http", "https"):
        reason = server_unreachable(uri)
        if reason:
            raise DreamlabError(f"no MLflow tracking server answers at {uri} ({reason}): start it (make server, "
                                f"or mlflow server) or fix mlflow.tracking_uri")


def server_unreachable(uri: str, timeout: float = SERVER_TIMEOUT_S) -> Optional[str]:
    """None when the server's health endpoint answers (an HTTP error status counts: it is
    there, and asks for credentials or has no /health), else why not."""
    import urllib.error

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except Exception as exc:
        return str(getattr(exc, "reason", "") or first_line(exc)) or type(exc).__name__


def _writable(folder: str, what: str) -> None:
    """The folder exists (or can be made) and can be written to."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DreamlabError(f"cannot create the folder of {what}: {first_line(exc)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DreamlabError(f"cannot write {what}: the folder {folder} is not writable; make it writable "
                            f"or choose another place")
