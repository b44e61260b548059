"""Pictures in and out: load and size a photo, make seeded noise, save PNGs."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DreamlabError, first_line

log = logging.getLogger("dreamlab")

SAMPLE = Path(__file__).parent / "data" / "chelsea.png"


# Transparent pixels are composited on white, as image viewers and browsers show them.
BACKGROUND = (255, 255, 255)
# Memory a dream needs per pixel of its largest octave, measured with margin (float32 RGB
# copies: the picture, its pyramid and detail, the gradient, TensorFlow's buffers); used to
# refuse a size before allocating it.
BYTES_PER_PIXEL = 200


def header(path: str, what: str = "image") -> tuple[int, int]:
    """(width, height) as the picture will be seen (EXIF orientation applied), read from the
    file's header without decoding it; every unreadable-file case is one DreamlabError."""
    with _opened(path, what) as im:
        w, h = im.size
        return (h, w) if _rotates(im) else (w, h)


def _unreadable(what: str, path: str, exc: BaseException) -> DreamlabError:
    """Truncated or corrupt picture data: the reason Pillow gives, kept."""
    return DreamlabError(f"cannot read {what} {path}: {first_line(exc)}; give a complete PNG, JPEG or "
                         f"other picture Pillow can open")


def _rotates(im) -> bool:
    return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)


def target_size(size: tuple[int, int], max_size: Optional[int]) -> tuple[int, int]:
    """(width, height) after scaling the longest side to `max_size` (up or down)."""
    if not max_size:
        return size
    scale = max_size / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def load(path: str, max_size: Optional[int] = None, what: str = "image") -> np.ndarray:
    """RGB uint8 array of the picture at `path` as a viewer shows it (EXIF orientation,
    transparency on white, 16- and 32-bit grey scaled to 8 bits by `integer_range`,
    palette/CMYK/grey converted, the first frame of an animation), its longest side resized
    to `max_size`."""
    from PIL import Image, ImageOps

    with _opened(path, what) as im:
        try:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                log.info("%s %s has %d frames: dreaming its first", what, path, frames)
                im.seek(0)
            im = ImageOps.exif_transpose(im, in_place=False) or im
            rgb = _rgb(im)
        except (OSError, SyntaxError, ValueError) as exc:
            raise _unreadable(what, path, exc) from None
    size = target_size(rgb.size, max_size)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def _rgb(im):
    """8-bit RGB from any Pillow mode."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        # Integer grey deeper than 8 bits: its range onto 0..255. A plain convert("L") clips
        # at 255 and makes such a picture (almost) white.
        a = np.asarray(im, dtype=np.float64)
        full = integer_range(im.mode, float(a.max()) if a.size else 0.0)
        return _grey_rgb(a if full == 255 else a / (full / 255.0))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        return _grey_rgb(a * 255.0 if a.max() <= 1.0 else a)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("RGB", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(ground, rgba).convert("RGB")
    return im.convert("RGB")  # RGB (16-bit RGB PNGs open as 8-bit RGB), L, 1, P, CMYK, YCbCr, ...


# The largest sample of Pillow's 32-bit integer mode "I" (signed).
INT32_MAX = 2**31 - 1


def integer_range(mode: str, largest: float) -> int:
    """The sample value that is white in an integer picture of Pillow mode `mode` whose
    largest sample is `largest`: its samples are shown as fractions of this range.

    - "1", "L", "P" (and the 8-bit channels of RGB, CMYK, ...): 255.
    - "I;16", "I;16L", "I;16B", "I;16N": 65535 (16-bit PNG and TIFF; Pillow also scales a
      PGM of maxval 256..65535 to this range).
    - "I" (32-bit signed) holds 8-, 16- or 32-bit data alike (an 8-bit array, a 16-bit
      picture from an older Pillow or a 32-bit TIFF), and the file does not say which; the
      data does: the smallest of 255, 65535 and 2**31 - 1 (the mode's largest sample) that
      holds `largest`. So 32-bit samples are fractions of the whole 32-bit range, as viewers
      show them (0x7FFFFFFF is white), not of their own maximum (a dark picture stays dark).
      Negative samples are black.
    """
    if mode in ("1", "L", "P"):
        return 255
    if mode.startswith("I;16"):
        return 65535
    if mode != "I":
        raise ValueError(f"not an integer grey mode: {mode}")
    return 255 if largest <= 255 else 65535 if largest <= 65535 else INT32_MAX


def _grey_rgb(levels: np.ndarray):
    """Grey levels on the 0..255 scale (any float) as an 8-bit RGB picture."""
    from PIL import Image

    grey = np.clip(np.round(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


class _opened:
    """Image.open with dreamlab's errors: missing, a folder, not a picture, a bomb."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what

    def __enter__(self):
        import warnings

        from PIL import Image, UnidentifiedImageError

        path, what = self.path, self.what
        fix = "image=null to dream from noise" if what == "image" else f"{what}=null"
        if os.path.isdir(path):
            raise DreamlabError(f"{what}={path} is a folder, not a picture: give the path of one picture "
                                f"file (PNG, JPEG, ...)")
        if not os.path.isfile(path):
            raise DreamlabError(f"{what} not found: {path}; give {what}=PATH of a picture, or {fix}")
        try:
            with warnings.catch_warnings():
                # Pillow only warns between its limit and twice it; dreamlab refuses at the limit.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self.im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DreamlabError(f"{what} {path} is too large to open safely ({first_line(exc)}): shrink it "
                                f"first, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DreamlabError(f"cannot read {what} {path}: {first_line(exc)}; give a PNG, JPEG or other "
                                f"picture Pillow can open") from None
        return self.im

    def __exit__(self, *exc):
        self.im.close()
        return False


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
