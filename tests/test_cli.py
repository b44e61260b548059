"""The command line as users type it: real Hydra multirun, real MLflow store (SQLite)."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TRAINED_WEIGHTS, error_lines, run_cli, store_uri

PARENT = "mlflow.parentRunId"


def runs(uri: str, where: str = ""):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dreamlab")
    return client, client.search_runs([exp.experiment_id], where, max_results=100)


# Session scope: xdist may interleave other modules on this worker, which would tear a
# module fixture down and build it again.
@pytest.fixture(scope="session")
def literal_sweep(tmp_path_factory, square_photo):
    """The mission's 2x2 grid, literally, plus size, steps, weights and store overrides.
    168 px is the smallest square whose 5th octave (168/1.4^4 = 43 px) InceptionV3's mixed3
    and mixed5 can take."""
    work = tmp_path_factory.mktemp("sweep")
    uri = store_uri(work)
    proc = run_cli(["-m", "layers=mixed3,mixed5", "octaves=3,5", f"image={square_photo}",
                    "max_size=168", "steps=2", "backbone.weights=null",
                    f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"], cwd=work)
    return proc, uri, work


def test_literal_sweep_makes_one_parent_and_four_finished_children(literal_sweep):
    proc, uri, _ = literal_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, all_runs = runs(uri)
    parents = [r for r in all_runs if r.data.tags.get("dreamlab.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "layers=mixed3,mixed5" in parent.data.params["command"]
    assert parent.data.params["swept"] == "layers=mixed3,mixed5 octaves=3,5"
    assert parent.data.params["jobs"] == "4"
    children = [r for r in all_runs if r.data.tags.get(PARENT) == parent.info.run_id]
    assert len(children) == 4 and len(all_runs) == 5
    assert {r.info.run_name for r in children} == {
        "layers=mixed3,octaves=3", "layers=mixed3,octaves=5",
        "layers=mixed5,octaves=3", "layers=mixed5,octaves=5"}
    assert all(r.info.status == "FINISHED" for r in children)


def test_each_child_has_params_losses_octave_images_and_artifacts(literal_sweep):
    _, uri, work = literal_sweep
    client, children = runs(uri, f"tags.`{PARENT}` != ''")
    for run in children:
        p = run.data.params
        octaves = int(p["octaves"])
        assert run.info.run_name == f"layers={p['layers']},octaves={octaves}"
        assert p["steps"] == "2" and p["max_size"] == "168" and p["backbone.name"] == "inception_v3"
        assert p["backbone.weights"] == "null" and p["step_size"] == "0.011764706" and p["seed"] == "0"
        assert p["mlflow.tracking_uri"] == uri and p["recipe"] == "google"
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == list(range(octaves * 2))
        octave = client.get_metric_history(run.info.run_id, "octave")
        assert [m.value for m in sorted(octave, key=lambda m: m.step)] == [
            float(k) for k in range(octaves) for _ in range(2)]
        root = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"dream.png", "config.yaml", "overrides.yaml", "images"} <= root
        pictures = [a.path for a in client.list_artifacts(run.info.run_id, "images")
                    if a.path.endswith(".png")]
        assert sorted(int(path.split("+step+")[1].split("+")[0]) for path in pictures) == list(range(octaves))
        job = run.data.tags["dreamlab.job"]
        assert (work / "sweep" / job / "dream.png").is_file()
        assert (work / "sweep" / job / ".hydra" / "config.yaml").is_file()
        logged = Path(client.download_artifacts(run.info.run_id, "dream.png", str(work / f"dl{job}")))
        assert logged.read_bytes() == (work / "sweep" / job / "dream.png").read_bytes()


def test_a_failing_job_spoils_nothing_and_the_sweep_exits_non_zero(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    proc = run_cli(["-m", "+sweep=layers_x_octaves", "layers=mixed3,mixd5", "octaves=1",
                    "steps=1", "max_size=64", f"image={square_photo}", "backbone.weights=null",
                    "progress=false", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"],
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert any("unknown layer 'mixd5'" in line and "mixed5" in line
               for line in error_lines(proc.stderr))
    client, all_runs = runs(uri)
    parent = next(r for r in all_runs if r.data.tags.get("dreamlab.role") == "sweep")
    assert parent.data.params["sweep"] == "layers_x_octaves"
    assert parent.info.status == "FAILED"
    by_name = {r.info.run_name: r for r in all_runs if r.data.tags.get(PARENT)}
    assert by_name["layers=mixed3,octaves=1"].info.status == "FINISHED"
    # Job 0 built InceptionV3, so job 1's wrong name is found before its run would exist: no
    # run, the error in its record, the summary and the parent's job table.
    assert "layers=mixd5,octaves=1" not in by_name
    record = json.loads((tmp_path / "sweep" / "1" / "job.json").read_text())
    assert record["status"] == "FAILED" and "unknown layer 'mixd5'" in record["error"]
    assert "| 1 | FAILED | - |" in parent.data.tags["mlflow.note.content"]
    assert "before any run was created" in proc.stderr
    assert (tmp_path / "sweep" / "0" / "dream.png").is_file()


def test_single_run_is_one_run_without_parent_and_byte_identical_when_repeated(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    common = ["backbone=mobilenet_v2", f"backbone.weights={TRAINED_WEIGHTS}", "layers=block_9_add",
              f"image={square_photo}", "max_size=96", "octaves=2", "steps=3", "seed=3",
              f"mlflow.tracking_uri={uri}"]
    first = run_cli(common + ["hydra.run.dir=a"], cwd=tmp_path)
    second = run_cli(common + ["hydra.run.dir=b"], cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:]
    a, b = (tmp_path / "a" / "dream.png").read_bytes(), (tmp_path / "b" / "dream.png").read_bytes()
    assert a == b
    _, all_runs = runs(uri)
    assert len(all_runs) == 2
    assert all(PARENT not in r.data.tags and r.info.status == "FINISHED" for r in all_runs)


@pytest.mark.parametrize("args, words", [
    (["octaves=abc"], ["octaves", "could not be converted to Integer"]),
    (["octaves=0"], ["octaves must be >= 1"]),
    (["backbone=vgg17"], ["backbone/vgg17", "vgg16"]),
    (["backbone.weights=/nowhere/w.weights.h5"],
     ["weights file not found: /nowhere/w.weights.h5", "backbone.weights=null", "backbone.weights=imagenet"]),
    (["image=/nowhere/cat.jpg"], ["image not found: /nowhere/cat.jpg", "image=null"]),
    (["layers=mixd3", "backbone.weights=null"], ["unknown layer 'mixd3'", "mixed3"]),
])
def test_user_errors_are_one_line_non_zero_no_traceback(tmp_path, args, words):
    proc = run_cli(args + ["mlflow.enabled=false"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0]


def test_sweep_summary_and_exit_code_do_not_need_mlflow(tmp_path, square_photo):
    proc = run_cli(["-m", "layers=mixed3,mixd5", "octaves=1", "steps=1", "max_size=64",
                    f"image={square_photo}", "backbone.weights=null", "progress=false",
                    "mlflow.enabled=false", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert proc.returncode == 1
    table = proc.stderr[proc.stderr.index("job  status"):]
    assert "FINISHED" in table and "layers=mixd5" in table and "unknown layer 'mixd5'" in table
    assert "dreamlab: error: 1 of 2 jobs failed" in proc.stderr
    assert (tmp_path / "sweep" / "0" / "dream.png").is_file()
