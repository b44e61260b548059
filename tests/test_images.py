"""Grey pictures of every integer depth are read as viewers show them: their samples are
fractions of the range their mode and data imply (images.integer_range), never clipped at
255 into a white picture."""

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

from dreamlab import images

H, W = 48, 64


def ramp(top: int, dtype) -> np.ndarray:
    """A horizontal-and-vertical ramp from 0 to `top`, both ends included."""
    return np.round(np.linspace(0, top, H * W)).reshape(H, W).astype(dtype)


def expected(samples: np.ndarray, full: int) -> np.ndarray:
    return np.clip(np.round(samples.astype(np.float64) * 255.0 / full), 0, 255).astype(np.uint8)


GREYS = [  # (what, samples, file, Pillow mode it opens as, white)
    ("8-bit L", ramp(255, np.uint8), "png", "L", 255),
    ("8-bit values in mode I", ramp(255, np.int32), "tif", "I", 255),
    ("16-bit PNG", ramp(65535, np.uint16), "png", "I;16", 65535),
    ("16-bit values in mode I", ramp(65535, np.int32), "tif", "I", 65535),
    ("32-bit", ramp(2**31 - 1, np.int32), "tif", "I", 2**31 - 1),
    ("32-bit, dark", ramp(2**30, np.int32), "tif", "I", 2**31 - 1),
]


@pytest.mark.parametrize("what, samples, ext, mode, white", GREYS, ids=[g[0] for g in GREYS])
def test_integer_greys_are_scaled_by_their_range(tmp_path, what, samples, ext, mode, white):
    path = tmp_path / f"grey.{ext}"
    Image.fromarray(samples).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
        assert images.integer_range(im.mode, float(np.asarray(im).max())) == white
    rgb = images.load(str(path))
    assert rgb.shape == (H, W, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    want = expected(samples, white)
    assert np.abs(rgb[..., 0].astype(int) - want).max() <= 1, what
    assert abs(rgb.mean() - want.mean()) < 0.5 and rgb.mean() < 200  # not white
    assert rgb.min() == 0


def test_negative_32_bit_samples_are_black(tmp_path):
    samples = np.array([[-5, 0, 2**31 - 1]], np.int32).repeat(4, axis=0)
    Image.fromarray(samples).save(tmp_path / "signed.tif")
    assert images.load(str(tmp_path / "signed.tif"))[0, :, 0].tolist() == [0, 0, 255]


def test_a_32_bit_grey_dreams_from_its_grey_not_white(tmp_path):
    """The real command on a 32-bit grey TIFF: one small step leaves the picture near the
    photo's greys (a mean near 127), where the old reading (clipped at 255) was white."""
    Image.fromarray(ramp(2**31 - 1, np.int32)).save(tmp_path / "grey32.tif")
    proc = run_cli(["backbone=mobilenet_v2", "backbone.weights=bundled", "max_size=64", "octaves=1", "steps=1",
                    "progress=false", f"image={tmp_path / 'grey32.tif'}", "mlflow.enabled=false",
                    "hydra.run.dir=run"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(tmp_path / "run" / "dream.png") as im:
        dreamt = np.asarray(im.convert("RGB"), np.float64)
    assert dreamt.shape == (H, W, 3)
    assert abs(dreamt.mean() - expected(ramp(2**31 - 1, np.int32), 2**31 - 1).mean()) < 8
