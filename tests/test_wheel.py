"""dreamlab as a user installs it: a wheel built from this checkout, installed (not editable)
into a new virtual environment, run from a folder that has nothing of the repository.

Offline: the new environment reuses the test environment's installed libraries through a
.pth line, and only dreamlab itself comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, store_uri

# What a wheel is built from (the rest of the checkout stays out of the build).
SOURCES = ("pyproject.toml", "README.md", "dreamlab", "conf", "sweeps", "hydra_plugins")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{python, wheel, env}: a virtual environment with dreamlab installed from its wheel."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True, timeout=300)
    wheel = next(dist.glob("dreamlab-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The test environment's libraries, after the new environment's own site-packages (so the
    # wheel's dreamlab wins; the editable install's finder is a .pth that is not read there).
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    return {"python": python, "wheel": wheel, "site": site}


def run(installed: dict, args: list[str], cwd: Path, module: str = "dreamlab", timeout: int = 600):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env["DREAMLAB_CACHE"] = str(cwd / ".dreamlab-cache")
    return subprocess.run([str(installed["python"]), "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_ships_the_config_and_the_bundled_weights(installed, tmp_path):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for name in ("dreamlab/conf/config.yaml", "dreamlab/conf/recipe/tutorial.yaml",
                 "dreamlab/conf/sweep/starter.yaml", "dreamlab/conf/hydra/launcher/ray.yaml",
                 "dreamlab/data/mobilenet_v2_imagenet_notop.weights.h5",
                 "hydra_plugins/dreamlab_launcher/parallel_launcher.py"):
        assert name in names, name
    where = subprocess.run([str(installed["python"]), "-c", "import dreamlab; print(dreamlab.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed["site"])), where


def test_installed_wheel_dreams_sweeps_and_reads_the_users_own_sweep_from_any_folder(installed, tmp_path):
    uri = store_uri(tmp_path)
    common = ["backbone=mobilenet_v2", "backbone.weights=bundled", "layers=block_9_add", "max_size=64",
              "octaves=1", "steps=2", f"mlflow.tracking_uri={uri}", "progress=false"]
    helped = run(installed, ["--help"], tmp_path)
    assert helped.returncode == 0 and "octave_scale" in helped.stdout and "starter" in helped.stdout

    one = run(installed, common, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "picture: outputs/runs/" in one.stdout

    # The user's own sweep, in their own folder, beside the packaged ones.
    (tmp_path / "mine" / "sweep").mkdir(parents=True)
    (tmp_path / "mine" / "sweep" / "two_seeds.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      seed: 1,2\n")
    grid = run(installed, ["-m", "--config-dir", "mine", "+sweep=two_seeds", *common,
                           "hydra/launcher=parallel"], tmp_path)
    assert grid.returncode == 0, grid.stderr[-3000:]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dreamlab")
    runs = client.search_runs([exp.experiment_id], max_results=20)
    parents = [r for r in runs if r.data.tags.get("dreamlab.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["seed"] for r in children) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and r.data.params["backbone.weights"] == "bundled" for r in children)
    single = [r for r in runs if r not in parents and r not in children]
    assert len(single) == 1 and single[0].data.tags["env.dreamlab"] == "0.3.0"

    for launcher in ("parallel", "ray", "submitit_slurm"):  # every launcher config resolves
        shown = run(installed, [f"hydra/launcher={launcher}", "--cfg", "hydra", "-p", "hydra.launcher"],
                    tmp_path)
        assert shown.returncode == 0 and "_target_" in shown.stdout, (launcher, shown.stderr[-2000:])
    compared = run(installed, ["--sweep", parents[0].info.run_id, "--tracking-uri", uri, "--out", "cmp"],
                   tmp_path, module="dreamlab.compare")
    assert compared.returncode == 0 and (tmp_path / "cmp").is_dir(), compared.stderr[-2000:]
    cleaned = run(installed, ["cleanup", "--tracking-uri", uri], tmp_path, module="dreamlab.runs")
    assert cleaned.returncode == 0, cleaned.stderr[-2000:]
    assert run(installed, ["--help"], tmp_path, module="dreamlab.server").returncode == 0
    listed = run(installed, ["backbone=mobilenet_v2", "backbone.weights=bundled", "grep=block_9"], tmp_path,
                 module="dreamlab.layers")
    assert listed.returncode == 0 and "block_9_add" in listed.stdout, listed.stderr[-2000:]

    again = run(installed, [single[0].info.run_id, "--tracking-uri", uri], tmp_path, module="dreamlab.reproduce")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "identical" in again.stdout
