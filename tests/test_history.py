"""After a sweep: a contact sheet and loss curves; a re-run resumes; any run reproduces from
its id alone; compare tables any selection. Real CLI, real MLflow store."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import TRAINED_WEIGHTS, error_lines, run_cli, store_uri
from dreamlab.tracking import EXPERIMENT_KIND, VIEW_TAG, ui_link

PARENT = "mlflow.parentRunId"


# Session scope: xdist may interleave other modules on this worker, which would tear a
# module fixture down and build it again.
@pytest.fixture(scope="session")
def sweep(tmp_path_factory, square_photo):
    """A 2x2 sweep of the real MobileNetV2 on a copy of the photo (deleted afterwards)."""
    work = tmp_path_factory.mktemp("history")
    photo = work / "photo.png"
    shutil.copy(square_photo, photo)
    uri = store_uri(work)
    args = ["-m", "layers=block_9_add,block_12_add", "octaves=1,2", "backbone=mobilenet_v2",
            f"backbone.weights={TRAINED_WEIGHTS}", f"image={photo}", "max_size=96", "steps=3",
            "progress=false", f"mlflow.tracking_uri={uri}"]
    first = run_cli(args + ["hydra.sweep.dir=first"], cwd=work)
    again = run_cli(args + ["hydra.sweep.dir=again"], cwd=work)
    return {"work": work, "uri": uri, "args": args, "first": first, "again": again, "photo": photo}


def parent_and_children(uri, sweep_dir):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dreamlab").experiment_id
    parent = client.search_runs([exp], f"tags.`dreamlab.sweep` = '{sweep_dir.resolve()}' and tags.`dreamlab.role` = 'sweep'")[0]
    children = client.search_runs([exp], f"tags.`{PARENT}` = '{parent.info.run_id}'")
    return client, parent, children


def test_contact_sheet_and_loss_curves_land_in_the_sweep_dir_and_on_the_parent_run(sweep):
    assert sweep["first"].returncode == 0, sweep["first"].stderr[-2000:]
    sheet_path = sweep["work"] / "first" / "contact_sheet.png"
    with Image.open(sheet_path) as sheet:
        # input photo + 2 columns (octaves) x 2 rows (layers) of 224 px cells with labels
        assert sheet.size == (3 * 224, 28 + 2 * (224 + 46))
    client, parent, children = parent_and_children(sweep["uri"], sweep["work"] / "first")
    assert {"contact_sheet.png", "loss_overlay.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(children) == 4
    for run in children:
        assert "loss.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    record = json.loads((sweep["work"] / "first" / "0" / "job.json").read_text())
    assert record["status"] == "FINISHED" and len(record["losses"]) == 3
    # The job's speed, as its MLflow run has it (the bench reads it with MLflow off).
    run = next(r for r in children if r.info.run_id == record["run_id"])
    assert record["steps_per_second"] > 0 and record["compile_seconds"] > 0
    assert record["steps_per_second"] == pytest.approx(run.data.metrics["steps_per_second"], abs=1e-4)
    # The sweep's counts are params beside `jobs`, not one-point metric charts.
    assert (parent.data.params["jobs"], parent.data.params["failed_jobs"], parent.data.params["skipped_jobs"]) == ("4", "0", "0")
    assert not {"failed_jobs", "skipped_jobs"} & set(parent.data.metrics)
    # The UI's kind of experiment, and dreamlab's saved view of the pictures.
    tags = client.get_experiment(parent.info.experiment_id).tags
    assert tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1] and VIEW_TAG in tags
    assert "runs: make ui" not in sweep["first"].stdout and "viewStateShareKey=dreamlab" in sweep["first"].stdout


def test_running_the_same_sweep_again_skips_the_finished_jobs(sweep):
    again = sweep["again"]
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed: 4 of 4 jobs skipped" in again.stdout
    client, parent, children = parent_and_children(sweep["uri"], sweep["work"] / "again")
    assert children == [] and parent.data.params["jobs"] == "4"
    assert all((sweep["work"] / "again" / str(n) / "dream.png").is_file() for n in range(4))
    assert (sweep["work"] / "again" / "0" / "dream.png").read_bytes() == (sweep["work"] / "first" / "0" / "dream.png").read_bytes()


def test_resume_false_and_failed_jobs_run_again(sweep):
    broken = sweep["work"] / "broken.jpg"
    broken.write_bytes(b"not a picture")
    args = [a for a in sweep["args"] if not a.startswith(("layers=", "octaves=", "image="))]
    args += ["layers=block_9_add", "octaves=1", f"image={sweep['photo']},{broken}"]
    proc = run_cli(args + ["hydra.sweep.dir=mixed"], cwd=sweep["work"])
    assert proc.returncode == 1
    assert any("cannot read image" in line for line in error_lines(proc.stderr))
    assert "SKIPPED" in proc.stderr and "FAILED" in proc.stderr  # the good job was done before
    forced = run_cli(args[:1] + [a for a in args[1:] if not a.startswith("image=")] +
                     [f"image={sweep['photo']}", "resume=false", "hydra.sweep.dir=forced"], cwd=sweep["work"])
    assert forced.returncode == 0 and "resumed" not in forced.stdout
    client, _, children = parent_and_children(sweep["uri"], sweep["work"] / "forced")
    assert [r.info.status for r in children] == ["FINISHED"]


def test_reproduce_from_the_run_id_alone_after_the_photo_is_gone(sweep):
    client, _, children = parent_and_children(sweep["uri"], sweep["work"] / "first")
    original = children[0]
    moved = sweep["photo"].with_suffix(".moved")
    sweep["photo"].rename(moved)
    try:
        proc = subprocess.run([sys.executable, "-m", "dreamlab.reproduce", original.info.run_id,
                               "--tracking-uri", sweep["uri"]], cwd=sweep["work"], capture_output=True, text=True)
    finally:
        moved.rename(sweep["photo"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"reproduced run {original.info.run_id}" in proc.stdout
    assert "byte-identical" in proc.stdout
    copy = client.search_runs([original.info.experiment_id], f"tags.reproduces = '{original.info.run_id}'")
    assert len(copy) == 1 and copy[0].data.tags["dreamlab.identical"] == "true"


def test_compare_tables_and_lays_out_a_sweep(sweep):
    _, parent, _ = parent_and_children(sweep["uri"], sweep["work"] / "first")
    out = sweep["work"] / "compare"
    proc = subprocess.run([sys.executable, "-m", "dreamlab.compare", "--sweep", parent.info.run_id,
                           "--tracking-uri", sweep["uri"], "--out", str(out)],
                          cwd=sweep["work"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"layers", "octaves", "final_loss", "steps", "seconds", "image"} <= set(rows[0])
    assert {(r["layers"], r["octaves"]) for r in rows} == {
        (l, o) for l in ("block_9_add", "block_12_add") for o in ("1", "2")}
    assert sorted(int(r["steps"]) for r in rows) == [3, 3, 6, 6]
    assert "| layers" in (out / "runs.md").read_text()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * 224, 28 + 2 * (224 + 46))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_real_mlflow_ui_shows_the_sweeps_runs_and_their_pictures(sweep, tmp_path):
    """The MLflow UI on localhost, driven by Playwright in Debian's headless Chromium: the
    sweep's parent unfolds into its jobs, and the chart view loads their octave pictures."""
    import os
    import time
    import urllib.request

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get "
                    "when it can: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
                               sweep["uri"], "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(90):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(1)
        client, parent, children = parent_and_children(sweep["uri"], sweep["work"] / "first")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            # The link dreamlab prints after a sweep: model-training mode, dreamlab's saved view.
            page.goto(ui_link(f"http://127.0.0.1:{port}", parent.info.experiment_id))
            page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=90_000)
            page.locator('[role="row"]', has_text=parent.info.run_name).first.locator("button").first.click()
            for run in children:
                page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=30_000)
            page.wait_for_function(
                "() => [...document.images].filter(i => i.src.includes('images%2Foctave') && i.complete"
                " && i.naturalWidth > 0).length >= 4", timeout=60_000)
            page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
            # Model training, not the GenAI overview; the view of the pictures is the one open.
            assert page.get_by_text("Model registry").first.is_visible()
            assert page.get_by_text("Sessions", exact=True).count() == 0
            assert page.get_by_text("dreamlab: pictures side by side").first.is_visible()
            # The first octave picture is on screen, not below a block of every param.
            first = page.locator("img[src*='images%2Foctave']").first
            box = first.bounding_box()
            assert box is not None and box["y"] + box["height"] <= 1100
            assert page.get_by_text("octave_scale=1.4", exact=False).count() == 0
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_hydra_way_reproduces_a_job_from_its_own_record(sweep):
    job = sweep["work"] / "first" / "1"
    proc = run_cli(["--config-path", str(job / ".hydra"), "--config-name", "config",
                    "mlflow.enabled=false", "hydra.run.dir=hydra_way"], cwd=sweep["work"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep["work"] / "hydra_way" / "dream.png").read_bytes() == (job / "dream.png").read_bytes()
