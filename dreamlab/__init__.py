"""dreamlab: config-driven DeepDream experiments (Hydra configs, Keras backbones, MLflow)."""

from .engine import DreamResult, dream
from .errors import DreamlabError
from .settings import DreamSettings

__all__ = ["dream", "DreamResult", "DreamSettings", "DreamlabError"]

try:  # one version, pyproject.toml's, read from the installed package's metadata
    from importlib.metadata import version as _version

    __version__ = _version("dreamlab")
except Exception:  # run from a source tree that was never installed
    __version__ = "0+unknown"
