"""hydra/launcher=parallel and the shared store: real worker processes, a real SQLite store.

Pictures are 256 px where bytes are compared: below that, oneDNN does not split InceptionV3's
max-pool gradients by thread and a thread-count mistake would go unseen.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import TRAINED_WEIGHTS, run_cli, store_uri
from dreamlab import internals

PARENT = "mlflow.parentRunId"
TINY = ["max_size=96", "steps=2", "backbone.weights=null", "progress=false"]
# What MLflow imports to open a sqlite store (dreamlab.internals keeps the private path).
SQL_STORE = internals.mlflow_store_modules("sqlite:///x.db")


def all_runs(uri):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dreamlab")
    return client, client.search_runs([exp.experiment_id], "", max_results=200)


def children_of(runs):
    return [r for r in runs if r.data.tags.get(PARENT)]


def overlapping(a, b) -> bool:
    return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time


@pytest.fixture(scope="session")
def grids(tmp_path_factory, square_photo):
    """The literal 2x2 sweep at 256 px, in process and on the parallel launcher."""
    work = tmp_path_factory.mktemp("grids")
    uri = store_uri(work)
    args = ["-m", "layers=mixed3,mixed5", "octaves=3,5", f"image={square_photo}", "max_size=256",
            "steps=2", "backbone.weights=null", "progress=false", f"mlflow.tracking_uri={uri}"]
    # The parallel launcher's default workers have one core each, so their jobs run with
    # threads=1; the in process sweep is given the same count to compare bytes.
    basic = run_cli(args + ["hydra.sweep.dir=basic", "resume=false", "threads=1"], cwd=work)
    parallel = run_cli(args + ["hydra.sweep.dir=parallel", "resume=false", "hydra/launcher=parallel"], cwd=work)
    return {"work": work, "uri": uri, "basic": basic, "parallel": parallel}


def test_parallel_sweep_gives_the_in_process_pictures_byte_for_byte(grids):
    assert grids["basic"].returncode == 0, grids["basic"].stderr[-2000:]
    assert grids["parallel"].returncode == 0, grids["parallel"].stderr[-2000:]
    for job in range(4):
        a = (grids["work"] / "basic" / str(job) / "dream.png").read_bytes()
        b = (grids["work"] / "parallel" / str(job) / "dream.png").read_bytes()
        assert a == b, f"job {job} differs between launchers"


def test_parallel_jobs_overlap_in_two_processes_and_record_their_slot(grids):
    client, runs = all_runs(grids["uri"])
    sweep_dir = str((grids["work"] / "parallel").resolve())
    parent = next(r for r in runs if r.data.tags.get("dreamlab.role") == "sweep"
                  and r.data.tags.get("dreamlab.sweep") == sweep_dir)
    assert parent.info.status == "FINISHED" and parent.data.params["launcher"] == "parallel"
    kids = [r for r in runs if r.data.tags.get(PARENT) == parent.info.run_id]
    assert len(kids) == 4 and all(r.info.status == "FINISHED" for r in kids)
    # One 1-core worker per core, at most one per job: on this 2-core machine cpu:0 and cpu:1.
    cores = sorted(os.sched_getaffinity(0))[:4]
    assert {r.data.tags["env.device"] for r in kids} == {f"cpu:{c}" for c in cores}
    assert all(r.data.tags["env.threads"] == "1" and r.data.params["threads"] == "1" for r in kids)
    assert all(r.data.params["deterministic"] == "True" and r.data.tags["env.deterministic"] == "true"
               for r in kids)
    assert any(overlapping(a, b) for a in kids for b in kids if a is not b)
    pids = {json.loads((grids["work"] / "parallel" / str(j) / "job.json").read_text()).get("pid")
            for j in range(4)}
    assert len(pids) == len(cores) and os.getpid() not in pids


def test_reproducing_a_parallel_run_in_process_is_byte_identical(grids):
    client, runs = all_runs(grids["uri"])
    run = next(r for r in children_of(runs) if r.data.tags["dreamlab.sweep"].endswith("parallel")
               and r.data.params["octaves"] == "5")
    proc = subprocess.run([sys.executable, "-m", "dreamlab.reproduce", run.info.run_id,
                           "--tracking-uri", grids["uri"]], cwd=grids["work"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "byte-identical" in proc.stdout


def test_the_thread_count_shapes_the_bytes_so_it_is_recorded(grids, square_photo):
    """Why the count is recorded: with 2 intra-op threads the same job gives other bytes."""
    work = grids["work"]
    proc = run_cli(["layers=mixed3", "octaves=3", f"image={square_photo}", "max_size=256", "steps=2",
                    "backbone.weights=null", "progress=false", "threads=2", "mlflow.enabled=false",
                    "hydra.run.dir=two_threads"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = (work / "basic" / "0" / "dream.png").read_bytes()
    assert (work / "two_threads" / "dream.png").read_bytes() != one


def test_pretend_gpus_run_two_at_a_time_each_pair_on_distinct_devices(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    proc = run_cli(["-m", "layers=mixed3,mixed5", "octaves=1,2", f"image={square_photo}", *TINY,
                    "deterministic=false", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep",
                    "hydra/launcher=parallel"], cwd=tmp_path, env_extra={"DREAMLAB_PRETEND_GPUS": "0,1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 2 workers: gpu:0 (pretend), gpu:1 (pretend)" in proc.stderr + proc.stdout
    _, runs = all_runs(uri)
    kids = children_of(runs)
    assert len(kids) == 4
    assert {r.data.tags["env.cuda_visible_devices"] for r in kids} == {"0", "1"}
    assert all(r.data.params["deterministic"] == "False" and r.data.tags["env.deterministic"] == "false"
               for r in kids)
    for a in kids:  # never more than 2 jobs at a time: at each start, at most 2 runs are running
        assert sum(b.info.start_time <= a.info.start_time < b.info.end_time for b in kids) <= 2
        for b in kids:
            if b is not a and overlapping(a, b):
                assert a.data.tags["env.cuda_visible_devices"] != b.data.tags["env.cuda_visible_devices"]
    assert any(overlapping(a, b) for a in kids for b in kids if a is not b)


def test_a_killed_worker_fails_only_its_job_and_its_slot_comes_back(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # Job 0 is long (2000 steps); jobs 1-3 are short. Job 0's worker is killed while it dreams.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamlab", "-m", "steps=2000,2,3,4", "layers=mixed3", "octaves=1",
         f"image={square_photo}", "max_size=96", "backbone.weights=null", "progress=false",
         f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep", "hydra/launcher=parallel",
         "hydra.launcher.workers=2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = tmp_path / "sweep" / "0" / "job.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if record.is_file() and json.loads(record.read_text()).get("status") == "RUNNING":
            break
        time.sleep(0.2)
    victim = json.loads(record.read_text())
    time.sleep(1.0)  # into its dream loop
    os.kill(victim["pid"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    client, runs = all_runs(uri)
    by_steps = {r.data.params["steps"]: r for r in children_of(runs)}
    assert set(by_steps) == {"2000", "2", "3", "4"}
    killed = by_steps["2000"]
    assert killed.info.status == "FAILED"
    assert "worker process" in killed.data.tags["dreamlab.error"] and "died" in killed.data.tags["dreamlab.error"]
    assert all(by_steps[s].info.status == "FINISHED" for s in ("2", "3", "4"))
    assert json.loads(record.read_text())["status"] == "FAILED"
    parent = next(r for r in runs if r.data.tags.get("dreamlab.role") == "sweep")
    assert parent.info.status == "FAILED"
    # The slot came back: a later job ran on the killed worker's device, in a new process.
    device = killed.data.tags["env.device"]
    later = [r for r in children_of(runs) if r.info.start_time > killed.info.end_time
             and r.data.tags["env.device"] == device]
    assert later, "no job ran on the killed worker's slot afterwards"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the kill spoiled nothing in the store
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_a_job_whose_worker_died_before_its_record_is_listed_failed_by_number(tmp_path):
    # A worker can die before its job writes job.json (at the job's set-up, or a worker that
    # never started): the launcher's record of it must still carry what the summary lists.
    from dreamlab import jobs, sweep

    jobs.crashed(tmp_path / "3", "the worker process on cpu:1 died during this job", 3, "seed=3")
    sweep.write_job_record(tmp_path / "0", {"job": 0, "overrides": "seed=0", "status": "FINISHED",
                                            "seconds": 2.5, "run_id": "r0", "error": None})
    records = sweep.read_job_records(tmp_path)
    assert [(r["job"], r["status"]) for r in records] == [(0, "FINISHED"), (3, "FAILED")]
    lines = sweep.summary(records, ["seed"]).splitlines()
    assert lines[2].split()[:3] == ["3", "FAILED", "0.0"]
    assert "seed=3" in lines[2] and "error: the worker process on cpu:1 died" in lines[2]


def test_four_single_runs_started_at_once_on_a_fresh_store_all_finish(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-m", "dreamlab", f"image={square_photo}", "layers=mixed3",
                               "octaves=1", *TINY, f"seed={i}", f"mlflow.tracking_uri={uri}",
                               f"hydra.run.dir=run{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    _, runs = all_runs(uri)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)


def test_two_sweeps_started_at_once_on_a_fresh_store_keep_their_parents(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-m", "dreamlab", "-m", f"image={square_photo}",
                               "layers=mixed3", "octaves=1", f"seed={2 * i},{2 * i + 1}", *TINY,
                               f"mlflow.tracking_uri={uri}",
                               f"hydra.sweep.dir=sweep{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-1500:] for e in errors)
    _, runs = all_runs(uri)
    parents = [r for r in runs if r.data.tags.get("dreamlab.role") == "sweep"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    for parent in parents:
        kids = [r for r in runs if r.data.tags.get(PARENT) == parent.info.run_id]
        assert len(kids) == 2 and all(r.info.status == "FINISHED" for r in kids)


def test_eight_jobs_on_two_workers_lose_no_param_loss_point_or_picture(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    proc = run_cli(["-m", "backbone=mobilenet_v2", f"backbone.weights={TRAINED_WEIGHTS}",
                    "layers=block_5_add,block_9_add", "octaves=1,2", "seed=0,1", f"image={square_photo}",
                    "max_size=96", "steps=3", "progress=false", f"mlflow.tracking_uri={uri}",
                    "hydra.sweep.dir=sweep", "hydra/launcher=parallel", "hydra.launcher.workers=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, runs = all_runs(uri)
    kids = children_of(runs)
    assert len(kids) == 8 and all(r.info.status == "FINISHED" for r in kids)
    expected_params = set(kids[0].data.params)
    assert len(expected_params) > 30
    for run in kids:
        assert set(run.data.params) == expected_params
        octaves = int(run.data.params["octaves"])
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in losses) == list(range(3 * octaves))
        pictures = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        assert len(pictures) == octaves
        assert "dream.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_asking_for_a_gpu_that_is_not_there_is_one_line(tmp_path):
    proc = run_cli(["-m", "seed=0,1", *TINY, "mlflow.enabled=false", "hydra/launcher=parallel",
                    "hydra.launcher.gpus=[3]"], cwd=tmp_path, env_extra={"DREAMLAB_PRETEND_GPUS": "0,1"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "hydra.launcher.gpus asks for GPU 3 but the visible GPUs are [0,1]" in proc.stderr


def _started_with():
    """In a worker, before any job: which heavy modules it already holds, and its backend."""
    held = ("keras", "mlflow", *SQL_STORE, "tensorflow")
    return sorted(m for m in held if m in sys.modules), os.environ.get("KERAS_BACKEND")


def test_cpu_workers_fork_from_a_server_that_already_imported_tensorflow_and_mlflow(monkeypatch):
    from loky import ProcessPoolExecutor
    from omegaconf import OmegaConf

    from hydra_plugins.dreamlab_launcher import parallel_launcher

    monkeypatch.delenv("DREAMLAB_PRETEND_GPUS", raising=False)
    config = OmegaConf.create({"backend": None, "hydra": {"launcher": {"gpus": None, "preload": True}},
                               "mlflow": {"enabled": True, "tracking_uri": "sqlite:///outputs/mlflow.db"}})
    assert parallel_launcher.preloads(config)
    context = parallel_launcher.preloaded_context(config)
    assert context is not None and context.get_start_method() == "forkserver"
    with ProcessPoolExecutor(max_workers=1, context=context) as pool:
        assert pool.submit(_started_with).result(timeout=300) == (
            sorted(["keras", "mlflow", *SQL_STORE, "tensorflow"]),
            "tensorflow")
    # MLflow's SQL store only for a store in a database (the server reads the URI).
    from dreamlab import internals

    sql, = SQL_STORE
    for uri, enabled, wanted in [("postgresql+psycopg2://u@127.0.0.1/db", True, True),
                                 ("http://127.0.0.1:5000", True, False), ("file:///tmp/mlruns", True, False),
                                 ("sqlite:///outputs/mlflow.db", False, False)]:
        other = OmegaConf.merge(config, {"mlflow": {"tracking_uri": uri, "enabled": enabled}})
        store = parallel_launcher.preload_env(other).get(parallel_launcher.STORE_ENV)
        assert (store is not None and sql in internals.mlflow_store_modules(store)) == wanted, uri
    # Fresh processes where a fork would be wrong or is not wanted.
    assert not parallel_launcher.preloads(OmegaConf.merge(config, {"backend": "jax"}))
    assert not parallel_launcher.preloads(OmegaConf.merge(config, {"hydra": {"launcher": {"preload": False}}}))
    monkeypatch.setenv("DREAMLAB_PRETEND_GPUS", "0,1")
    assert not parallel_launcher.preloads(config)
