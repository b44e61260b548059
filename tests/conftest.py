"""Shared fixtures: small pictures, a temporary MLflow store, and the real CLI in a subprocess.

Everything is real (TensorFlow, Hydra, MLflow on SQLite); only sizes and step counts are
small so the suite stays fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# dreamlab's layer-name cache (backbones.known_layers) changes where an unknown layer fails
# (before or after building): each test starts without one, and the user's stays untouched.
os.environ["DREAMLAB_CACHE"] = tempfile.mkdtemp(prefix="dreamlab-cache-")
# The trained MobileNetV2 that ships inside dreamlab (backbone.weights=bundled): the tests read
# nothing outside the repository.
TRAINED_WEIGHTS = ROOT / "dreamlab" / "data" / "mobilenet_v2_imagenet_notop.weights.h5"


@pytest.fixture(scope="session")
def square_photo(tmp_path_factory) -> Path:
    """A 300x300 crop of the bundled cat photo: square, so every octave keeps its size."""
    from dreamlab.images import SAMPLE

    path = tmp_path_factory.mktemp("photos") / "cat.png"
    with Image.open(SAMPLE) as im:
        im.convert("RGB").crop((75, 0, 375, 300)).save(path)
    return path


@pytest.fixture(scope="session")
def small_array(square_photo) -> np.ndarray:
    with Image.open(square_photo) as im:
        return np.asarray(im.resize((96, 96), Image.LANCZOS))


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 900):
    """`python -m dreamlab ARGS` as a user runs it; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DREAMLAB_CACHE"] = str(Path(cwd) / ".dreamlab-cache")  # this test's own
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "dreamlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def store_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


def error_lines(stderr: str) -> list[str]:
    """dreamlab's own error lines (TensorFlow prints start-up noise on stderr too)."""
    return [line for line in stderr.splitlines() if line.startswith("dreamlab: error:")]
