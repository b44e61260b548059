"""The GPU box recipe, on this machine: `make wheelhouse` for Python 3.12 manylinux minus what
the box has (tests/data/gpu-box-pip-list.txt, a copy of the box's package list), then
`make gpu-check CPU=1` in a stand-in for the box: a Python 3.12 virtual environment with the
box's JAX 0.11.2 and numpy 2.5.2 and the listed packages dreamlab relies on, and no
TensorFlow, Keras, Hydra or MLflow. The check installs the wheelhouse with no index and runs
its real sweep on the CPU.

Needs the package index (the wheelhouse is made online, as on any connected machine) and
Python 3.12 (pyenv's, or DREAMLAB_PYTHON312).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, error_lines

HAVE = ROOT / "tests" / "data" / "gpu-box-pip-list.txt"
PYTHON312 = Path(os.environ.get("DREAMLAB_PYTHON312", Path.home() / ".pyenv/versions/3.12.1/bin/python3"))
SOURCES = ("pyproject.toml", "README.md", "dreamlab", "conf", "sweeps", "hydra_plugins")
# What the box has of what dreamlab's wheels rely on (wheelhouse.json's relies_on), at the
# box's versions where its list gives them.
BOX = ["jax==0.11.2", "numpy==2.5.2", "pandas", "matplotlib", "pillow", "pyyaml", "requests", "rich",
       "tabulate", "tqdm", "h5py", "protobuf", "packaging", "typing-extensions", "click", "cloudpickle",
       "certifi", "urllib3", "zipp", "absl-py", "anyio", "h11", "markupsafe", "annotated-doc", "ml-dtypes"]
MB = 1e6


def make(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "KERAS_BACKEND")}
    # `ARGS=` first: a `make test ARGS=...` around the suite hands its ARGS (pytest's arguments)
    # to every make below it; a caller's own ARGS=..., later on the line, still wins.
    return subprocess.run(["make", "--no-print-directory", "ARGS=", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> dict:
    """{out, manifest, stdout}: make wheelhouse PYTHON_VERSION=3.12 HAVE=the box's list, made
    from a copy of the checkout (its build folders stay out of the repository)."""
    base = tmp_path_factory.mktemp("wheelhouse")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    out = base / "wheelhouse"
    done = make("wheelhouse", f"PYTHON={sys.executable}", "PYTHON_VERSION=3.12", f"HAVE={HAVE}",
                f"WHEELHOUSE={out}", f"ARGS=--source {src}")
    assert done.returncode == 0, done.stderr + done.stdout
    return {"out": out, "manifest": json.loads((out / "wheelhouse.json").read_text()), "stdout": done.stdout}


def test_wheelhouse_for_the_gpu_box_is_within_its_budget(wheelhouse):
    manifest, files = wheelhouse["manifest"], sorted(p.name for p in wheelhouse["out"].glob("*.whl"))
    names = {f.split("-")[0].lower() for f in files}
    # What the box lacks, and nothing it has or that a JAX-only install leaves out.
    assert {"dreamlab", "keras", "hydra_core", "omegaconf", "mlflow_skinny", "sqlalchemy", "alembic"} <= names
    assert not names & {"tensorflow", "jax", "jaxlib", "numpy", "pandas", "matplotlib", "pyarrow", "mlflow"}, names
    # Every compiled wheel is one the box can run: CPython 3.12 (or the stable ABI), manylinux x86_64.
    for f in files:
        if not f.endswith("-none-any.whl"):
            assert ("-cp312-" in f or "-abi3-" in f) and "manylinux" in f and f.endswith("x86_64.whl"), f
    size = sum(p.stat().st_size for p in wheelhouse["out"].glob("*.whl"))
    assert size == manifest["size_bytes"] and size < 60 * MB, size
    assert manifest["relies_on"]["jax"] == "0.11.2" and manifest["relies_on"]["numpy"] == "2.5.2"
    assert f"{len(files)} wheels, {size / MB:.1f} MB for Python 3.12 manylinux_2_28_x86_64" in wheelhouse["stdout"]


def test_wheelhouse_mistakes_are_one_line(tmp_path):
    done = make("wheelhouse", f"PYTHON={sys.executable}", f"HAVE={tmp_path / 'nothing.txt'}",
                f"WHEELHOUSE={tmp_path / 'wh'}")
    lines = error_lines(done.stderr)
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert "nothing.txt: no such file" in lines[0] and "pip list --format=freeze" in lines[0]
    assert not (tmp_path / "wh").exists()


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KERAS_BACKEND")}
    done = subprocess.run([sys.executable, "-m", "dreamlab.gpucheck", "--wheelhouse", "", "--out", str(tmp_path / "o")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("dreamlab: error: no GPU: JAX") and "make gpu-check CPU=1" in done.stderr


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Path:
    """A stand-in for the GPU box's Python: 3.12, its JAX and numpy, no dreamlab stack."""
    if not PYTHON312.exists():
        pytest.skip(f"no Python 3.12 at {PYTHON312} (set DREAMLAB_PYTHON312)")
    venv = tmp_path_factory.mktemp("box") / "venv"
    subprocess.run([str(PYTHON312), "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-qq", *BOX], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return python


def test_gpu_check_on_the_cpu_installs_offline_and_dreams(wheelhouse, box, tmp_path):
    out = tmp_path / "gpu-check"
    done = make("gpu-check", f"PYTHON={box}", f"WHEELHOUSE={wheelhouse['out']}", f"OUT={out}", "CPU=1",
                "ARGS=--steps 4")
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads((out / "gpucheck.json").read_text())
    # Installed from the wheelhouse alone, the box's own JAX and numpy kept, no TensorFlow.
    assert result["install"]["kept"] == {"jax": "0.11.2", "jaxlib": "0.11.2", "numpy": "2.5.2"}
    assert {"keras", "hydra-core", "mlflow-skinny"} <= set(result["install"]["added"])
    assert "tensorflow" not in result["install"]["added"]
    assert result["python"].startswith("3.12") and result["jax"] == "0.11.2"
    (row,) = result["per_device"]
    assert row["device"] == "cpu" and row["backend"] == "jax 0.11.2" and row["identical"] is True
    nets = row["networks"]
    assert nets["mobilenet_v2"]["jobs"] == 4 and nets["inception_v3"]["jobs"] == 1
    for net in nets.values():
        assert net["max_size"] == 512 and net["steps_per_second"] > 0 and net["compile_seconds"] > 0
    # The jobs' own store: every job FINISHED on JAX on the CPU, pictures that changed.
    check = subprocess.run([str(box), "-c", (
        "import sys, mlflow; c = mlflow.MlflowClient(sys.argv[1]); e = c.get_experiment_by_name('gpu-check');"
        "rs = [r for r in c.search_runs([e.experiment_id]) if 'dreamlab.job' in r.data.tags and 'reproduces' not in r.data.tags];"
        "print(len(rs), sorted({r.info.status for r in rs}), sorted({r.data.tags['env.device'][:4] for r in rs}))"),
        f"sqlite:///{out / 'mlflow.db'}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.stdout.split("\n")[0] == "5 ['FINISHED'] ['cpu:']", check.stderr + check.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("cpu ")]
    assert len(lines) == 1 and "repeated job byte-identical: yes" in lines[0], done.stdout
    assert "inception_v3 512 px" in lines[0] and "mobilenet_v2 512 px" in lines[0]
    # The box's JAX still starts and sees its devices after the install.
    # dreamlab is the wheel's, installed into the box's own environment.
    devices = subprocess.run([str(box), "-c", "import jax, dreamlab; print(jax.devices()[0].platform, dreamlab.__file__)"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    platform, where = devices.stdout.split()
    assert platform == "cpu" and where.startswith(str(box.parent.parent / "lib")), devices.stderr
