"""dreamlab: config-driven DeepDream experiments (Hydra configs, Keras backbones, MLflow)."""

from .engine import DreamResult, dream
from .errors import DreamlabError
from .settings import DreamSettings

__all__ = ["dream", "DreamResult", "DreamSettings", "DreamlabError"]
__version__ = "0.2.0"
