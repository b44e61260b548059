"""The typed Hydra schema: every option of dreamlab, its default and its meaning.

`Config` extends the engine's `DreamSettings`, so the algorithm knobs are top-level keys
(`octaves=5 steps=20`) with the same names in the engine, the MLflow params and the docs.
The YAML in conf/ only picks values; backbone options are generated from the engine's
backbone table, so adding a backbone there adds `backbone=NAME` here.
"""

from __future__ import annotations

import functools
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Mapping, Optional

from hydra.core.config_store import ConfigStore

from . import backbones
from .settings import PLACE, WORK, DreamSettings, check, option


@dataclass
class BackboneConfig:
    name: str = option("inception_v3", "the network: a key of dreamlab.backbones.BACKBONES "
                                       "(python -m dreamlab.layers lists them), or custom")
    # A custom model keeps the weights saved in its file unless a path is given.
    weights: Optional[str] = option(
        "imagenet", "imagenet (Keras' download and cache), bundled (the MobileNetV2 weights shipped in "
        "dreamlab), null (random weights), or a .weights.h5/.h5 path")
    path: Optional[str] = option(None, "backbone=custom: the user's own Keras model file (.keras, loaded "
                                       "with safe_mode)")
    preprocess: str = option("tf", "backbone=custom: the pixels it expects: tf ([-1, 1]), caffe, torch, "
                                   "raw (0..255) or unit (0..1)")


@dataclass
class MlflowConfig:
    # MLFLOW_TRACKING_URI wins when set, as everywhere in MLflow.
    tracking_uri: str = option("${oc.env:MLFLOW_TRACKING_URI,sqlite:///outputs/mlflow.db}",
                               "where runs go (MLFLOW_TRACKING_URI wins when set)", role=PLACE)
    experiment: str = option("dreamlab", "the MLflow experiment of the runs", role=PLACE)
    enabled: bool = option(True, "false: dream without tracking (the job folder still gets dream.png)",
                           role=PLACE)

    def __post_init__(self) -> None:
        check(bool(self.experiment.strip()), "mlflow.experiment must not be empty", "mlflow.experiment=dreamlab")
        check(bool(self.tracking_uri.strip()), "mlflow.tracking_uri must not be empty",
              "mlflow.tracking_uri=sqlite:///outputs/mlflow.db")


@dataclass
class Config(DreamSettings):
    image: Optional[str] = option("${dreamlab.sample_image:}", "the photo (default: the bundled sample); "
                                  "null dreams from seeded noise", by_content=True)
    max_size: Optional[int] = option(512, "longest side after loading, in pixels (null keeps the photo's size)")
    backbone: BackboneConfig = option(help="the network whose layers are amplified", factory=BackboneConfig)
    # A weight may be {weight: W, channels: [...]}.
    layers: Any = option("default", "a preset of the backbone (default, tutorial, keras, ...), a layer "
                                    "name, a list of names, or a {layer: weight} map")
    guide: Optional[str] = option(None, "a picture whose features the layers pull toward (Google's "
                                        "objective_guide); null: none", by_content=True)
    frames: int = option(0, "zoom video: frames > 0 dreams each frame from the previous one zoomed in by "
                            "zoom (frames/*.png, zoom.gif)")
    zoom: float = option(0.05, "zoom per frame of the zoom video (0.05 = 5%)")
    # The run's own config supplies what shapes the picture; the id itself only says where
    # it came from, so it is a place key (a grown job's resume fingerprint is its work).
    from_run: Optional[str] = option(None, "an MLflow run id: start from that run's exact resolved config, "
                                           "photo and guide, the command line's overrides on top", role=PLACE)
    resume: bool = option(True, "in a multirun, skip a job whose exact work already has a FINISHED run; "
                                "false reruns everything", role=PLACE)
    progress: bool = option(True, "a per-job progress bar on the console", role=PLACE)
    # oneDNN splits some gradients by thread, so the count shapes a picture's last bits: the
    # count used is recorded (param and config.yaml) and `reproduce` sets it again; a resumed
    # sweep does not redo a job for it (same experiment, other machine: a place key).
    threads: Optional[int] = option(None, "TensorFlow's intra-op threads per job; null: the cores the job was "
                                          "given (recorded in the run)", role=PLACE)
    mlflow: MlflowConfig = option(help="where and how runs are tracked", role=PLACE, factory=MlflowConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_size is None or self.max_size >= 8, "max_size must be >= 8 or null", "max_size=512")
        check(self.frames >= 0, "frames must be >= 0 (0 = a single picture)", "frames=30")
        check(0 < self.zoom < 0.5, "zoom must be between 0 and 0.5", "zoom=0.05")
        check(self.threads is None or self.threads >= 1, "threads must be >= 1 or null (the cores the job "
              "was given)", "threads=2")


@dataclass
class Environment:
    """The `env.*` tags of every run: what it ran on. `work` ones can change a picture's bytes
    (reproduce reports them when they differ); `place` ones only say where it ran."""
    dreamlab: str = option("", "dreamlab's version")
    git_commit: str = option("", "dreamlab's commit, when run from a git checkout")
    python: str = option("", "Python's version")
    backend: str = option("", "the Keras backend and its version (tensorflow 2.21.0, jax 0.10.2)")
    tensorflow: str = option("", "TensorFlow's version (none when not installed)")
    keras: str = option("", "Keras' version")
    cpu: str = option("", "the CPU model (kernels and their rounding differ between CPUs)")
    gpu: str = option("", "the GPUs the backend sees, or none")
    threads: str = option("", "the intra-op threads the job used")
    deterministic: str = option("", "whether deterministic ops were on (TensorFlow's op determinism, XLA's "
                                    "xla_gpu_deterministic_ops)")
    device: str = option("", "the slot: cpu:CORES or gpu:N", role=PLACE)
    inter_op_threads: str = option("", "TensorFlow's inter-op threads (on JAX, the cores XLA may use)",
                                   role=PLACE)
    gpu_memory: str = option("", "how the job takes GPU memory: growth (TensorFlow), preallocate FRACTION or "
                                 "on demand (JAX)", role=PLACE)
    cuda_visible_devices: str = option("", "CUDA_VISIBLE_DEVICES of the job", role=PLACE)
    slurm_job_id: str = option("", "the SLURM job that ran it", role=PLACE)


@dataclass(frozen=True)
class Option:
    """One config key as the docs and `--help` show it."""
    key: str
    type: str
    default: str
    help: str
    role: str
    by_content: bool


def options(schema: Optional[type] = None, prefix: str = "") -> list[Option]:
    """Every key of the schema (default `Config`), nested groups flattened (`backbone.weights`),
    in order."""
    out = []
    for f in fields(schema or Config):
        key = prefix + f.name
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):  # a group
            group = f.default_factory
            out.extend(Option(o.key, o.type, o.default, o.help, f.metadata["role"] if f.metadata["role"] == PLACE
                              else o.role, o.by_content) for o in options(group, key + "."))
            continue
        out.append(Option(key, _type_name(f.type), _cli(f.default), f.metadata["help"], f.metadata["role"],
                          f.metadata["by_content"]))
    return out


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _cli(value: Any) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def role(key: str, schema: Optional[type] = None) -> str:
    """The role of a dotted key; keys the schema does not know (another version's params) are
    work, so nothing that might shape a picture is ever left out."""
    return _roles(schema or Config).get(key, (WORK, False))[0]


@functools.lru_cache(maxsize=None)
def _roles(schema: type) -> dict[str, tuple[str, bool]]:
    return {o.key: (o.role, o.by_content) for o in options(schema)}


def work(resolved: Mapping[str, Any], schema: Optional[type] = None, prefix: str = "") -> dict[str, Any]:
    """The resolved config less its place keys and by-content paths: what the resume
    fingerprint hashes (beside the files' content)."""
    roles = _roles(schema or Config)
    out = {}
    for key, value in resolved.items():
        name = prefix + key
        if isinstance(value, Mapping) and value:
            kept = work(value, schema, name + ".")
            if kept:
                out[key] = kept
        elif roles.get(name, (WORK, False)) == (WORK, False):
            out[key] = value
    return out


def place_tags(schema: Optional[type] = None) -> tuple[str, ...]:
    """The `env.*` tags that only say where a job ran (`Environment`'s place fields)."""
    return tuple(f"env.{f.name}" for f in fields(schema or Environment) if f.metadata["role"] == PLACE)


def options_help() -> str:
    """The options list of `python -m dreamlab --help`, from the schema."""
    width = max(len(o.key) for o in options())
    return "\n".join(f"  {o.key:<{width}}  {o.help} [{o.default}]" for o in options())


def register() -> None:
    from omegaconf import OmegaConf

    # `$` escaped: Hydra fills the help template with string.Template.
    OmegaConf.register_new_resolver("dreamlab.options", lambda: options_help().replace("$", "$$"), replace=True)
    cs = ConfigStore.instance()
    cs.store(name="dreamlab_schema", node=Config)
    # Plain dicts, typed by the schema's `backbone` field when merged: Hydra deep-copies the
    # whole store for every config group it lists or composes, and 40 structured nodes made
    # `--help` take 2 s and every job of a sweep 0.3 s longer.
    for name in backbones.BACKBONES:
        cs.store(group="backbone", name=name, node={"name": name})
    cs.store(group="backbone", name=backbones.CUSTOM, node={"name": backbones.CUSTOM, "weights": None})
