"""The typed Hydra schema: every option of dreamlab, its default and its meaning.

`Config` extends the engine's `DreamSettings`, so the algorithm knobs are top-level keys
(`octaves=5 steps=20`) with the same names in the engine, the MLflow params and the docs.
The YAML in conf/ only picks values; backbone options are generated from the engine's
backbone table, so adding a backbone there adds `backbone=NAME` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from . import backbones
from .settings import DreamSettings


@dataclass
class BackboneConfig:
    # A key of dreamlab.backbones.BACKBONES (InceptionV3 is inception_v3).
    name: str = "inception_v3"
    # imagenet (Keras' download and cache), null (random weights), or a .weights.h5/.h5 path.
    weights: Optional[str] = "imagenet"


@dataclass
class MlflowConfig:
    # Where runs go; MLFLOW_TRACKING_URI wins when set, as everywhere in MLflow.
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///outputs/mlflow.db}"
    experiment: str = "dreamlab"
    # false: dream without tracking (the job dir still gets dream.png).
    enabled: bool = True


@dataclass
class Config(DreamSettings):
    # The photo; the default is the bundled sample; null dreams from seeded noise.
    image: Optional[str] = "${sample_image:}"
    # Longest side after loading, in pixels (null keeps the photo's size).
    max_size: Optional[int] = 512
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # A preset of the backbone (default, tutorial, keras, ...), a layer name, a list of
    # names, or a {layer: weight} map (a weight may be {weight: W, channels: [...]}).
    layers: Any = "default"
    # A per-job progress bar on the console.
    progress: bool = True
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="dreamlab_schema", node=Config)
    for name in backbones.BACKBONES:
        cs.store(group="backbone", name=name, node=BackboneConfig(name=name))
