"""The first five minutes: `make dream`'s command on a machine without InceptionV3's weights
(an empty HOME, downloads refused) makes a real dream with the bundled MobileNetV2; the
console carries dreamlab's lines, the progress bar and where things are, not the libraries'
start-up chatter; an error is printed once; -v shows everything."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import error_lines, run_cli, store_uri

from dreamlab import fallback, images

# What must not reach the console by default: absl/TensorFlow C++ lines (I0000, E0000 ...),
# oneDNN and CUDA notices, MLflow's database set-up, matplotlib's font cache.
CHATTER = re.compile(r"^[IWEF]\d{4} |absl|oneDNN|cuda|cuInit|TensorFlow|mlflow\.store|alembic|"
                     r"Matplotlib|font cache|Creating initial MLflow", re.IGNORECASE)
BAR = re.compile(r"^(octave \d+/\d+: )?\s*\d+%\|")


def console_lines(text: str) -> list[str]:
    """Lines as a terminal ends up showing them (tqdm redraws with carriage returns)."""
    return [part.strip() for line in text.splitlines() for part in line.split("\r") if part.strip()]


@pytest.fixture(scope="module")
def first_dream(tmp_path_factory):
    """`make dream` with no ARGS: `python -m dreamlab $(python -m dreamlab.fallback)`, with an
    empty HOME (no Keras cache) in a fresh folder."""
    work = tmp_path_factory.mktemp("first")
    # Offline on any machine: downloads go to a proxy on a closed loopback port (port 9,
    # discard), so a CI machine that can reach Google's storage gives the same first dream.
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KERAS_HOME")},
           "HOME": str(work / "home"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    (work / "home").mkdir()
    found = subprocess.run([sys.executable, "-m", "dreamlab.fallback"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    overrides = found.stdout.split()
    proc = subprocess.run([sys.executable, "-m", "dreamlab", *overrides], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    return work, found, proc


def test_make_dream_falls_back_to_the_bundled_network_in_one_line(first_dream):
    _, found, _ = first_dream
    assert found.stdout.split() == ["backbone=mobilenet_v2", "backbone.weights=bundled"]
    lines = found.stderr.strip().splitlines()
    assert len(lines) == 1 and "InceptionV3's ImageNet weights" in lines[0] and "bundled MobileNetV2" in lines[0]


def test_the_first_dream_is_a_real_dream_and_its_run_finished(first_dream):
    work, _, proc = first_dream
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    assert out[-2].startswith("picture: outputs/runs/") and out[-2].endswith("dream.png")
    assert out[-1].startswith("run ") and "make ui, then http://127.0.0.1:5000/#/experiments/" in out[-1]
    dream = np.asarray(Image.open(work / out[-2].split(": ", 1)[1]), float)
    photo = images.load(str(images.SAMPLE), 512).astype(float)
    assert dream.shape == photo.shape and np.abs(dream - photo).mean() > 6  # changed markedly (a re-encoded copy: < 1)
    run_id = out[-1].split()[1].rstrip(":")
    client = MlflowClient(f"sqlite:///{work / 'outputs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["backbone.weights"] == "bundled"
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert losses[-1] > losses[0]


def test_the_console_shows_dreamlab_not_the_libraries(first_dream):
    work, _, proc = first_dream
    noisy = [line for line in console_lines(proc.stderr) + console_lines(proc.stdout) if CHATTER.search(line)]
    assert not noisy, noisy[:5]
    # stderr is the progress bar and nothing else; dreamlab's lines are on stdout.
    assert all(BAR.match(line) for line in console_lines(proc.stderr)), console_lines(proc.stderr)[:5]
    assert any(re.match(r"\[\d\d:\d\d:\d\d\] octave 4/4 ", line) for line in proc.stdout.splitlines())
    # What was held back is in the job's log file.
    log = next((work / "outputs" / "runs").glob("*/*/dreamlab.log")).read_text()
    assert "native start-up output" in log


def test_an_error_is_printed_once_and_nothing_else(tmp_path):
    proc = run_cli(["backbone=mobilenet_v2", "backbone.weights=bundled", "layers=nope", "max_size=64",
                    f"mlflow.tracking_uri={store_uri(tmp_path)}"], cwd=tmp_path)
    assert proc.returncode == 1
    lines = console_lines(proc.stderr) + console_lines(proc.stdout)
    assert error_lines(proc.stderr) == [line for line in lines if "nope" in line]
    assert len(error_lines(proc.stderr)) == 1 and lines == error_lines(proc.stderr), lines


def test_verbose_shows_everything(tmp_path):
    proc = run_cli(["-v", "backbone=mobilenet_v2", "backbone.weights=bundled", "max_size=64", "octaves=1",
                    "steps=1", "progress=false", f"mlflow.tracking_uri={store_uri(tmp_path)}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(CHATTER.search(line) for line in proc.stderr.splitlines())


def test_bundled_weights_exist_for_mobilenet_v2_only(tmp_path):
    proc = run_cli(["backbone=vgg16", "backbone.weights=bundled", "max_size=64",
                    f"mlflow.tracking_uri={store_uri(tmp_path)}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "dreamlab: error: backbone=vgg16 has no bundled weights: dreamlab ships trained weights for "
        "mobilenet_v2 only (backbone=mobilenet_v2 backbone.weights=bundled); use "
        "backbone.weights=imagenet or a weights file"]


def test_the_fallback_keeps_inception_when_its_weights_are_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / fallback.FILE).write_bytes(b"cached")
    assert fallback.main() == 0
    assert capsys.readouterr() == ("", "")
    # Not cached and not reachable: the reason is kept.
    monkeypatch.setattr(fallback, "ORIGIN", "http://127.0.0.1:9/" + fallback.FILE)
    assert "refused" in fallback.unreachable(timeout=2).lower()
