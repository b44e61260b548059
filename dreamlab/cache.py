"""dreamlab's cache folder: $DREAMLAB_CACHE, by default ~/.cache/dreamlab (or under
$XDG_CACHE_HOME). It holds what a machine learns once and reuses: backbones' layer names
(layers/) and JAX's compiled steps (jax/, JAX's persistent compilation cache). Deleting it
only costs that work again."""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    return Path(os.environ.get("DREAMLAB_CACHE")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreamlab")
