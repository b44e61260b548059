"""Pictures in and out: load and size a photo, make seeded noise, save PNGs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DreamlabError

SAMPLE = Path(__file__).parent / "data" / "chelsea.png"


def load(path: str, max_size: Optional[int] = None) -> np.ndarray:
    """RGB uint8 array of the photo at `path`, its longest side resized to `max_size`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DreamlabError(f"image not found: {path}; give image=PATH of a photo, "
                            f"or image=null to dream from noise")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max_size:
                scale = max_size / max(im.size)
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                if size != im.size:
                    im = im.resize(size, Image.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DreamlabError(f"cannot read image {path} ({exc.__class__.__name__}): "
                            f"give a PNG, JPEG or other picture Pillow can open") from None


def noise(size: int, seed: int) -> np.ndarray:
    """A seeded grey-noise square to dream from when there is no photo."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(96, 160, size=(size, size, 3))).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return path


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 12) -> Path:
    """An endless animation of the frames (Pillow's GIF writer: no extra dependency)."""
    from PIL import Image

    path = Path(path)
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(path, save_all=True, append_images=rest, duration=int(1000 / fps), loop=0)
    return path


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures of one shape, in dB (inf: identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
