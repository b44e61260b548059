"""Nothing lost, nothing left hanging: every bad input is one line before any cost, pictures
are read as viewers show them, Ctrl-C / SIGTERM / kill -9 leave no run RUNNING, resume
survives a store whose artifacts moved, and the SQLite store stays intact."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import error_lines, run_cli, store_uri

from dreamlab import images

TINY = ["backbone=mobilenet_v2", "backbone.weights=bundled", "max_size=64", "octaves=1", "steps=1",
        "progress=false"]


def integrity(work: Path) -> str:
    with sqlite3.connect(work / "mlflow.db") as db:
        return db.execute("pragma integrity_check").fetchone()[0]


def all_runs(uri: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name("dreamlab")
    return client, ([] if found is None else client.search_runs([found.experiment_id]))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(d / "photo.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((200, 200, 3)) * 255).astype(np.uint8)).save(d / "full.jpg", quality=95)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "folder").mkdir()
    return d


BAD = [  # (overrides, words the one error line must hold)
    (["steps=0"], "steps must be >= 1"),
    (["mlflow.tracking_uri=bogus://x"], "mlflow.tracking_uri=bogus://x is not a tracking store"),
    (["mlflow.experiment="], "mlflow.experiment must not be empty"),
    (["layers={block_9_add:{weight:1,channels:[-100]}}"], "channels [-100] out of range"),
    (["image={d}/folder"], "is a folder, not a picture"),
    (["image={d}/missing.png"], "image not found"),
    (["guide={d}/missing.png"], "guide not found"),
    (["image={d}/truncated.jpg"], "image file is truncated"),
    (["max_size=100000"], "more than the"),
    (["backbone.weights={d}/none.weights.h5"], "weights file not found"),
    (["backbone=vgg16"], "has no bundled weights"),
    (["mlflow.tracking_uri=sqlite:////proc/nope/mlflow.db"], "cannot create the folder of the MLflow store"),
    (["hydra.run.dir=/proc/nope/run"], "cannot create or write /proc/nope"),
    (["-m", "hydra.sweep.dir=/proc/nope/sweep"], "cannot create or write /proc/nope"),
    (["layers=block_99_add"], "unknown layer 'block_99_add'"),
]


@pytest.mark.parametrize("overrides, words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_mistake_is_one_line_and_costs_nothing(tmp_path, pictures, overrides, words):
    given = [o.replace("{d}", str(pictures)) for o in overrides]
    args = TINY + given
    if not any(o.startswith("mlflow.tracking_uri") for o in overrides):
        args.append(f"mlflow.tracking_uri={store_uri(tmp_path)}")
    args = (["-m"] if "-m" in args else []) + [a for a in args if a != "-m"]
    proc = run_cli(args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and words in lines[0], proc.stderr[-1500:]
    if "unknown layer" in words or "out of range" in words:
        return  # known only once the network is built: a FAILED run says so
    # Before any cost: no MLflow run was created.
    assert not (tmp_path / "mlflow.db").exists() or not all_runs(store_uri(tmp_path))[1]


def test_a_server_that_does_not_answer_is_one_line_within_15_s(tmp_path):
    started = time.monotonic()
    proc = run_cli(TINY + ["mlflow.tracking_uri=http://127.0.0.1:9"], cwd=tmp_path, timeout=120)
    assert time.monotonic() - started < 15
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        "dreamlab: error: no MLflow tracking server answers at http://127.0.0.1:9 ([Errno 111] Connection "
        "refused): start it (make server, or mlflow server) or fix mlflow.tracking_uri"]


# Pictures as viewers show them ---------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # stored landscape
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a phone photo taken upright
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert images.header(str(tmp_path / "phone.jpg")) == (40, 80)
    assert images.load(str(tmp_path / "phone.jpg")).shape == (80, 40, 3)  # upright


def test_16_bit_grey_and_rgb_are_scaled_to_8_bits(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    grey = images.load(str(tmp_path / "grey16.png"))
    assert grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 2  # not almost white
    # 16-bit RGB: Pillow reads 48-bit PNGs as 8-bit RGB (the high bytes).
    import zlib, struct  # noqa: E401

    rgb16 = np.stack([ramp, ramp // 2, np.full_like(ramp, 65535)], axis=-1)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    (tmp_path / "rgb16.png").write_bytes(png)
    rgb = images.load(str(tmp_path / "rgb16.png")).astype(int)
    assert np.abs(rgb[..., 0] - np.round(ramp / 257)).max() <= 1 and rgb[..., 2].min() == 255


def test_transparency_palette_cmyk_and_animation(tmp_path, caplog):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "clear.png")
    assert (images.load(str(tmp_path / "clear.png")) == images.BACKGROUND).all()  # on white
    half = np.zeros((8, 8, 4), np.uint8)
    half[..., 0], half[..., 3] = 255, 128
    Image.fromarray(half).save(tmp_path / "half.png")
    assert tuple(images.load(str(tmp_path / "half.png"))[0, 0]) == (255, 127, 127)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    assert tuple(images.load(str(tmp_path / "palette.png"))[0, 0]) == (0, 0, 255)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert tuple(images.load(str(tmp_path / "cmyk.jpg"))[4, 4]) == pytest.approx((255, 0, 0), abs=3)
    Image.new("L", (8, 8), 200).save(tmp_path / "grey.png")
    assert tuple(images.load(str(tmp_path / "grey.png"))[0, 0]) == (200, 200, 200)
    frames = [Image.new("RGB", (8, 8), (250, 0, 0)), Image.new("RGB", (8, 8), (0, 250, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level("INFO", logger="dreamlab"):
        first = images.load(str(tmp_path / "anim.gif"))
    assert first[0, 0, 0] > 200 and first[0, 0, 1] < 50
    assert "has 2 frames: dreaming its first" in caplog.text


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(images.DreamlabError, match="too large to open safely"):
        images.header(str(tmp_path / "big.png"))


def test_negative_channels_count_from_the_end(small_array):
    import dreamlab
    from conftest import TRAINED_WEIGHTS

    kw = dict(backbone="mobilenet_v2", weights=str(TRAINED_WEIGHTS), octaves=1, steps=2, jitter=0)
    last = dreamlab.dream(small_array, layers={"block_9_add": {"weight": 1, "channels": [-1]}}, **kw)
    same = dreamlab.dream(small_array, layers={"block_9_add": {"weight": 1, "channels": [63]}}, **kw)
    assert last.image.tobytes() == same.image.tobytes() and last.losses == same.losses


# Signals, crashes, resume ---------------------------------------------------------------

def _start(args, cwd):
    # PYTHONFAULTHANDLER: a command that hangs prints every thread's stack on SIGABRT (_ended).
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, "-m", "dreamlab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(record: Path, proc, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if record.is_file() and json.loads(record.read_text()).get("status") == "RUNNING":
            time.sleep(1.5)  # into the dream
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the job never started")


def _ended(proc, limit: float = 60) -> tuple[str, str]:
    """The command's output once it exits; if it does not within `limit`, the stacks of its
    threads (SIGABRT, with PYTHONFAULTHANDLER) in the failure."""
    try:
        return proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the command did not end within {limit} s; its threads:\n{err[-6000:]}") from None


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_and_the_sweep_killed(tmp_path, sig, code):
    uri = store_uri(tmp_path)
    proc = _start(["-m"] + TINY[:3] + ["octaves=1", "progress=false", "steps=1,20000", "hydra.sweep.dir=sweep",
                                        f"mlflow.tracking_uri={uri}"], tmp_path)
    _wait_running(tmp_path / "sweep" / "1" / "job.json", proc)
    proc.send_signal(sig)
    out, err = _ended(proc)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert f"dreamlab: interrupted by {sig.name}" in err
    assert "FINISHED" in err and "KILLED" in err  # the summary of what finished
    client, runs = all_runs(uri)
    status = {r.info.run_name: r.info.status for r in runs}
    parent = [r for r in runs if r.data.tags.get("dreamlab.role") == "sweep"][0]
    assert status["steps=1"] == "FINISHED" and status["steps=20000"] == "KILLED"
    assert parent.info.status == "KILLED" and "| 0 | FINISHED |" in parent.data.tags["mlflow.note.content"]
    assert integrity(tmp_path) == "ok"


def test_a_killed_process_leaves_no_run_running_for_ever(tmp_path):
    uri = store_uri(tmp_path)
    proc = _start(TINY[:3] + ["octaves=1", "progress=false", "steps=20000", "hydra.run.dir=single",
                              f"mlflow.tracking_uri={uri}"], tmp_path)
    _wait_running(tmp_path / "single" / "job.json", proc)
    proc.kill()  # kill -9: no handler runs
    proc.communicate(timeout=60)
    client, runs = all_runs(uri)
    assert [r.info.status for r in runs] == ["RUNNING"]
    assert integrity(tmp_path) == "ok"
    cleanup = subprocess.run([sys.executable, "-m", "dreamlab.runs", "cleanup", "--tracking-uri", uri],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cleanup.returncode == 0 and cleanup.stdout.startswith("1 orphaned run(s) marked KILLED")
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "KILLED" and f"pid {proc.pid}) is gone" in run.data.tags["dreamlab.error"]
    # A second orphan is cleaned up by the next sweep in the experiment.
    proc = _start(TINY[:3] + ["octaves=1", "progress=false", "steps=20000", "hydra.run.dir=second",
                              f"mlflow.tracking_uri={uri}"], tmp_path)
    _wait_running(tmp_path / "second" / "job.json", proc)
    proc.kill()
    proc.communicate(timeout=60)
    sweep = run_cli(["-m"] + TINY + ["hydra.sweep.dir=next", f"mlflow.tracking_uri={uri}"], cwd=tmp_path)
    assert sweep.returncode == 0 and "marked KILLED" in sweep.stdout
    assert not [r for r in all_runs(uri)[1] if r.info.status == "RUNNING"]
    assert integrity(tmp_path) == "ok"


def test_resume_redoes_a_job_whose_artifacts_are_gone_and_the_parent_lists_every_job(tmp_path):
    import shutil

    uri = store_uri(tmp_path)
    args = ["-m"] + TINY + ["seed=0,1", f"mlflow.tracking_uri={uri}"]
    assert run_cli(args + ["hydra.sweep.dir=one"], cwd=tmp_path).returncode == 0
    again = run_cli(args + ["hydra.sweep.dir=two"], cwd=tmp_path)
    assert again.returncode == 0 and "resumed: 2 of 2 jobs skipped" in again.stdout
    client, runs = all_runs(uri)
    parent = [r for r in runs if r.data.tags.get("dreamlab.sweep", "").endswith("two")
              and r.data.tags.get("dreamlab.role") == "sweep"][0]
    note = parent.data.tags["mlflow.note.content"]
    done = [r for r in runs if r.data.tags.get("dreamlab.sweep", "").endswith("one")
            and r.data.tags.get("dreamlab.role") != "sweep"]
    assert all(f"/runs/{r.info.run_id})" in note for r in done) and note.count("| SKIPPED |") == 2
    shutil.rmtree(tmp_path / "mlartifacts")  # the store's artifacts moved away
    third = run_cli(args + ["hydra.sweep.dir=three"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "its dream.png is gone" in third.stdout and "skipped" not in third.stdout
    assert all((tmp_path / "three" / str(j) / "dream.png").is_file() for j in (0, 1))


def test_layer_names_are_checked_before_building_once_the_backbone_is_known(tmp_path):
    """The first job of a backbone builds it and keeps its layer names ($DREAMLAB_CACHE);
    from then on a wrong name costs no TensorFlow and no run."""
    env = {"DREAMLAB_CACHE": str(tmp_path / "cache")}
    uri = store_uri(tmp_path)
    first = run_cli(TINY + [f"mlflow.tracking_uri={uri}"], cwd=tmp_path, env_extra=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list((tmp_path / "cache" / "layers").glob("mobilenet_v2-keras*.json"))
    wrong = run_cli(TINY + ["layers=block_99_add", f"mlflow.tracking_uri={uri}", "hydra.run.dir=wrong"],
                    cwd=tmp_path, env_extra=env)
    assert wrong.returncode == 1
    # TensorFlow was never loaded: its start-up output, kept in the job's log, is not there.
    assert "native start-up output" not in (tmp_path / "wrong" / "dreamlab.log").read_text()
    assert error_lines(wrong.stderr)[0].startswith("dreamlab: error: unknown layer 'block_99_add' for backbone=mobilenet_v2")
    assert len(all_runs(uri)[1]) == 1  # only the first job's run


def test_sigterm_ends_a_single_run_killed_with_143(tmp_path):
    uri = store_uri(tmp_path)
    proc = _start(TINY[:3] + ["octaves=1", "progress=false", "steps=20000", "hydra.run.dir=single",
                              f"mlflow.tracking_uri={uri}"], tmp_path)
    _wait_running(tmp_path / "single" / "job.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = _ended(proc)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("dreamlab: interrupted by SIGTERM: the run in progress ended KILLED, "
                                            "finished runs are kept")
    [run] = all_runs(uri)[1]
    assert run.info.status == "KILLED" and run.data.tags["dreamlab.error"] == "interrupted by SIGTERM"
    assert json.loads((tmp_path / "single" / "job.json").read_text())["status"] == "KILLED"
    assert integrity(tmp_path) == "ok"


# Every way a sweep ends ends its parent run ---------------------------------------------

def sweep_parents(uri: str):
    return [r for r in all_runs(uri)[1] if r.data.tags.get("dreamlab.role") == "sweep"]


EARLY = [  # (what, made in the sweep folder first (a name/ is a folder), overrides, env, words)
    ("a job override that does not compose", None, ["steps=1,oops"], {},
     "Error merging override steps=oops"),
    ("the sweep folder cannot be written", "multirun.yaml/", [], {}, "cannot create or write"),
    ("a job folder cannot be created", "0", [], {}, "cannot create or write sweep/0"),
    ("the launcher refuses its options", None, ["seed=0,1", "hydra/launcher=parallel", "hydra.launcher.gpus=[3]"],
     {"DREAMLAB_PRETEND_GPUS": "0,1"}, "hydra.launcher.gpus asks for GPU 3"),
    ("the summary cannot be written", "contact_sheet.png/", [], {},
     "the sweep's summary failed: cannot create or write"),
]


@pytest.mark.parametrize("what, blocked, overrides, env, words", EARLY, ids=[e[0] for e in EARLY])
def test_a_sweep_that_ends_early_ends_its_parent_run_failed(tmp_path, what, blocked, overrides, env, words):
    """Each way a sweep stops after its parent run exists but before its summary: one line,
    exit 1, and the parent FAILED with the same reason as its error tag, never RUNNING."""
    uri = store_uri(tmp_path)
    if blocked:
        target = tmp_path / "sweep" / blocked.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir() if blocked.endswith("/") else target.touch()
    proc = run_cli(["-m", *TINY, f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep", *overrides],
                   cwd=tmp_path, env_extra=env, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
    [parent] = sweep_parents(uri)
    assert parent.info.status == "FAILED", what
    assert words in parent.data.tags["dreamlab.error"], parent.data.tags
    assert not [r for r in all_runs(uri)[1] if r.info.status == "RUNNING"]


def test_a_sweep_folder_that_cannot_be_written_is_one_line_before_any_run(tmp_path):
    (tmp_path / "sweep" / "mlflow_sweep.json").mkdir(parents=True)  # the sweep's own file cannot be written
    uri = store_uri(tmp_path)
    proc = run_cli(["-m", *TINY, f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "cannot create or write sweep/mlflow_sweep.json" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() or not all_runs(uri)[1]


def test_a_sweep_started_without_python_m_dreamlab_still_ends_its_parent(tmp_path):
    """The Hydra app called from a script of one's own: Hydra reports the error and exits;
    the parent run ends FAILED as the process exits."""
    uri = store_uri(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env["DREAMLAB_CACHE"] = str(tmp_path / ".dreamlab-cache")
    proc = subprocess.run([sys.executable, "-c", "from dreamlab.app import main; main()", "-m", *TINY,
                           "steps=1,oops", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    [parent] = sweep_parents(uri)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["dreamlab.error"] == "the sweep's process exited before the sweep's summary"


def test_kill_9_while_the_writer_holds_unwritten_pictures_leaves_the_run_unfinished(tmp_path):
    """The octave pictures and metrics go to MLflow on the run's background writer. With the
    store locked by another process, octave 1's picture waits on that writer when the job is
    killed: the run is not FINISHED (nothing of it claims to be complete), and the next
    sweep redoes the job instead of resuming past it."""
    uri = store_uri(tmp_path)
    args = ["-m", "backbone=mobilenet_v2", "backbone.weights=bundled", "max_size=96", "octaves=3",
            "octave_scale=1.2", "steps=400", "progress=false", f"mlflow.tracking_uri={uri}"]
    proc = _start(args + ["hydra.sweep.dir=killed"], tmp_path)
    job = tmp_path / "killed" / "0"
    _wait_running(job / "job.json", proc)
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # every write of the job now waits (busy timeout, retries)
        deadline = time.monotonic() + 120
        while not (job / "octaves" / "octave_1.jpg").is_file():  # octave 1 done: its writes queued
            assert time.monotonic() < deadline and proc.poll() is None, "octave 1 never finished"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.kill()  # kill -9 while octave 1's picture and losses are still in the writer
        proc.communicate(timeout=60)
    finally:
        lock.rollback()
        lock.close()
    client, runs = all_runs(uri)
    killed = [r for r in runs if r.data.tags.get("dreamlab.role") != "sweep"]
    assert [r.info.status for r in killed] == ["RUNNING"]
    run_id = killed[0].info.run_id
    assert client.get_metric_history(run_id, "loss") == []  # octave 1's losses never landed
    assert not [a.path for a in client.list_artifacts(run_id) if a.path in ("dream.png", "loss.png")]
    assert json.loads((job / "job.json").read_text())["status"] == "RUNNING"
    again = run_cli(args + ["hydra.sweep.dir=again"], cwd=tmp_path)  # the same job, resume on
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped" not in again.stdout and "marked KILLED" in again.stdout
    client, runs = all_runs(uri)
    assert client.get_run(run_id).info.status == "KILLED"  # the orphan, cleaned up by the sweep
    redone = [r for r in runs if r.data.tags.get("dreamlab.sweep", "").endswith("again")
              and r.data.tags.get("dreamlab.role") != "sweep"]
    assert [r.info.status for r in redone] == ["FINISHED"]
    assert {"dream.png", "loss.png"} <= {a.path for a in client.list_artifacts(redone[0].info.run_id)}
    assert integrity(tmp_path) == "ok"


def test_a_stop_swallowed_on_the_way_still_stops_the_dream_after_one_step(small_array, monkeypatch):
    """errors.check_stop: once the command's handler has seen SIGINT or SIGTERM, the dream
    loop raises it again after the step, even if a library swallowed the first raise."""
    import dreamlab
    from dreamlab import errors

    steps = []
    monkeypatch.setattr(errors, "_stopping", [signal.SIGTERM])
    with pytest.raises(errors.Interrupted):
        dreamlab.dream(small_array, backbone="mobilenet_v2", weights="bundled", layers=["block_9_add"],
                       octaves=1, steps=50, on_octave=lambda *a: steps.append(a))
    assert steps == []  # stopped inside the first octave
    monkeypatch.setattr(errors, "_stopping", [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        dreamlab.dream(small_array, backbone="mobilenet_v2", weights="bundled", layers=["block_9_add"],
                       octaves=1, steps=50)


def test_an_error_raised_once_the_command_was_asked_to_stop_is_the_stop(monkeypatch):
    """A SIGTERM that lands inside TensorFlow's tracing comes out as SystemError (seen in CI):
    the job still ends KILLED and the command exits 143, not with a traceback."""
    from dreamlab import errors

    assert errors.interruption(SystemError("bad argument to internal function")) is None
    monkeypatch.setattr(errors, "_stopping", [signal.SIGTERM])
    assert errors.interruption(SystemError("bad argument to internal function")) == ("SIGTERM", 143)
    with pytest.raises(errors.Interrupted):
        errors.check_stop()
