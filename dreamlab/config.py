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
from .settings import DreamSettings, check


@dataclass
class BackboneConfig:
    # A key of dreamlab.backbones.BACKBONES (InceptionV3 is inception_v3).
    name: str = "inception_v3"
    # imagenet (Keras' download and cache), bundled (the trained weights shipped inside
    # dreamlab, mobilenet_v2 only: no download), null (random weights), or a .weights.h5/.h5 path.
    # A custom model keeps the weights saved in its file unless a path is given.
    weights: Optional[str] = "imagenet"
    # backbone=custom: the user's own Keras model file (.keras, loaded with safe_mode) and
    # the pixels it expects: tf ([-1, 1]), caffe, torch, raw (0..255) or unit (0..1).
    path: Optional[str] = None
    preprocess: str = "tf"


@dataclass
class MlflowConfig:
    # Where runs go; MLFLOW_TRACKING_URI wins when set, as everywhere in MLflow.
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///outputs/mlflow.db}"
    experiment: str = "dreamlab"
    # false: dream without tracking (the job dir still gets dream.png).
    enabled: bool = True

    def __post_init__(self) -> None:
        check(bool(self.experiment.strip()), "mlflow.experiment must not be empty", "mlflow.experiment=dreamlab")
        check(bool(self.tracking_uri.strip()), "mlflow.tracking_uri must not be empty",
              "mlflow.tracking_uri=sqlite:///outputs/mlflow.db")


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
    # A picture whose features the layers pull toward (Google's objective_guide); null: none.
    guide: Optional[str] = None
    # Google's zoom video: frames > 0 dreams each frame from the previous one zoomed in by
    # `zoom` (0.05 = 5%), saved as frames/*.png and zoom.gif.
    frames: int = 0
    zoom: float = 0.05
    # In a multirun, skip a job whose exact work (config, input photo, weights) already has a
    # FINISHED run in the experiment; false reruns everything.
    resume: bool = True
    # A per-job progress bar on the console.
    progress: bool = True
    # TensorFlow's intra-op threads per job. The picture's bytes depend on it (oneDNN splits
    # some gradients by thread), so it is a config key with one default everywhere: with 1,
    # a job gives the same picture in process, in a parallel worker, on SLURM or on Ray, and
    # the other cores of a process still work through inter-op parallelism (dreamlab.slots).
    threads: int = 1
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_size is None or self.max_size >= 8, "max_size must be >= 8 or null", "max_size=512")
        check(self.frames >= 0, "frames must be >= 0 (0 = a single picture)", "frames=30")
        check(0 < self.zoom < 0.5, "zoom must be between 0 and 0.5", "zoom=0.05")
        check(self.threads >= 1, "threads must be >= 1", "threads=1")


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="dreamlab_schema", node=Config)
    # Plain dicts, typed by the schema's `backbone` field when merged: Hydra deep-copies the
    # whole store for every config group it lists or composes, and 40 structured nodes made
    # `--help` take 2 s and every job of a sweep 0.3 s longer.
    for name in backbones.BACKBONES:
        cs.store(group="backbone", name=name, node={"name": name})
    cs.store(group="backbone", name=backbones.CUSTOM, node={"name": backbones.CUSTOM, "weights": None})
