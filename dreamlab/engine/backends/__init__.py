"""The Keras backends a dream can run on, and the one this process runs.

Keras reads `KERAS_BACKEND` once, when it is first imported, so a process keeps one backend
(as TensorFlow keeps its thread pools): `use(name)` sets it before that import, or checks
that the Keras already imported runs it. Each backend's module here holds only what differs
between them: the compiled gradient step (and its tile loop), thread and device set-up, and
determinism. Everything else of the algorithm is written once (dreamlab.engine.maths and
dreamlab.engine.schedule).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional

from ...errors import DreamlabError
from ...settings import BACKENDS

# Each backend is the package of its name, and the extra of its name installs it
# (pip install 'dreamlab[jax]'). On a CPU TensorFlow is the faster (docs/backends.md).
DEFAULT = "tensorflow"


def requested(name: Optional[str] = None) -> str:
    """The backend a job asks for: `name`, else KERAS_BACKEND (Keras' own switch), else
    TensorFlow (on a CPU the faster of the two: docs/backends.md)."""
    name = name or os.environ.get("KERAS_BACKEND") or DEFAULT
    if name not in BACKENDS:
        raise DreamlabError(f"backend={name} is not one of {'|'.join(BACKENDS)} (for example backend=jax)")
    return name


def use(name: Optional[str] = None) -> str:
    """Make `name` (see `requested`) this process's Keras backend; returns it. Before Keras is
    imported this sets KERAS_BACKEND; after, it checks that Keras runs that backend."""
    name = requested(name)
    if importlib.util.find_spec(name) is None:
        raise DreamlabError(f"backend={name} needs {name}, which is not installed: "
                            f"pip install 'dreamlab[{name}]' (or choose backend={_other(name)})")
    if "keras" in sys.modules:
        running = sys.modules["keras"].backend.backend()
        if running != name:
            raise DreamlabError(
                f"backend={name} but this process already runs Keras on {running}: a process keeps "
                f"one backend, so run each backend as its own command (or sweep backend with "
                f"hydra/launcher=parallel, which gives each backend its own workers)")
        return name
    os.environ["KERAS_BACKEND"] = name
    return name


def active() -> str:
    """The backend of the Keras this process imported (importing it if need be)."""
    import keras

    return keras.backend.backend()


def module(name: Optional[str] = None):
    """The module of backend `name` (default: the active one)."""
    name = name or active()
    if name not in BACKENDS:
        raise DreamlabError(f"Keras runs on {name}, for which dreamlab has no dream step: "
                            f"set KERAS_BACKEND or backend= to one of {'|'.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def version(name: str) -> str:
    """`name VERSION`, from the package metadata (importing nothing)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return f"{name} {dist_version(name)}"
    except PackageNotFoundError:
        return f"{name} (not installed)"


def _other(name: str) -> str:
    return next(b for b in BACKENDS if b != name)
