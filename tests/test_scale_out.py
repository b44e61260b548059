"""The other launchers and the team server, for real: a single-node SLURM cluster through
hydra-submitit-launcher, a local Ray cluster through hydra-ray-launcher, and `make server`'s
MLflow server on PostgreSQL with basic auth. Each test starts its own servers and stops them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clusters import ClusterError, free_port, slurm, wait_until
from conftest import run_cli, store_uri

PARENT = "mlflow.parentRunId"
GRID = ["-m", "layers=mixed3,mixed5", "octaves=1,2", "max_size=96", "steps=2", "backbone.weights=null",
        "progress=false"]


def sweep_runs(uri, sweep_dir: Path):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dreamlab").experiment_id
    parent = client.search_runs([exp], f"tags.`dreamlab.sweep` = '{sweep_dir.resolve()}' and "
                                       f"tags.`dreamlab.role` = 'sweep'")
    assert len(parent) == 1
    children = client.search_runs([exp], f"tags.`{PARENT}` = '{parent[0].info.run_id}'")
    return parent[0], children


def test_slurm_sweep_gives_four_finished_children_under_one_parent(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    try:
        with slurm() as env:
            proc = run_cli(GRID + [f"image={square_photo}", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep",
                                   "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=null",
                                   "hydra.launcher.timeout_min=10"], cwd=tmp_path, env_extra=env, timeout=420)
    except ClusterError as exc:
        pytest.fail(str(exc))
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = sweep_runs(uri, tmp_path / "sweep")
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    # Each job ran as its own SLURM job.
    assert len({r.data.tags["env.slurm_job_id"] for r in children}) == 4
    assert all((tmp_path / "sweep" / str(j) / "dream.png").is_file() for j in range(4))


def test_ray_sweep_gives_one_gpu_per_job_and_four_finished_children(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    proc = run_cli(GRID + [f"image={square_photo}", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep",
                           "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                           "hydra.launcher.ray.init.num_gpus=2", "+hydra.launcher.ray.init.include_dashboard=false"],
                   cwd=tmp_path, env_extra={"DREAMLAB_PRETEND_GPUS": "0,1", "RAY_USAGE_STATS_ENABLED": "0"},
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = sweep_runs(uri, tmp_path / "sweep")
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    devices = {r.info.run_id: r.data.tags["env.cuda_visible_devices"] for r in children}
    assert set(devices.values()) <= {"0", "1"}
    overlaps = [(a, b) for a in children for b in children if a is not b
                and a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time]
    assert overlaps, "Ray ran the jobs one after another"
    for a, b in overlaps:
        assert devices[a.info.run_id] != devices[b.info.run_id]


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    """`python -m dreamlab.server` (what `make server` runs) on a free loopback port, with
    its own PostgreSQL cluster in a temporary folder."""
    work = tmp_path_factory.mktemp("team")
    # As root, PostgreSQL runs as `postgres`, which cannot enter pytest's private temp folder.
    server_dir = Path(tempfile.mkdtemp(prefix="dreamlab-team-"))
    server_dir.chmod(0o755)
    port = free_port()
    creds = {"MLFLOW_TRACKING_USERNAME": "team-admin", "MLFLOW_TRACKING_PASSWORD": "a-long-team-password"}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "dreamlab.server", "--dir", str(server_dir),
                               "--port", str(port)], cwd=work, env={**env, **creds}, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {(work / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, 180, "the team server", work / "server.log")
        yield {"url": url, "work": work, "server_dir": server_dir,
               "env": {"MLFLOW_TRACKING_URI": url, **creds}}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=90)
        log.close()
    stopped = not (server_dir / "pgdata" / "postmaster.pid").exists()
    shutil.rmtree(server_dir, ignore_errors=True)
    assert stopped, "the server left its PostgreSQL running"


def test_the_team_server_refuses_requests_without_a_password(team_server):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{team_server['url']}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(f"{team_server['url']}/api/2.0/mlflow/experiments/search?max_results=5")
    import base64
    token = base64.b64encode(b"team-admin:a-long-team-password").decode()
    request.add_header("Authorization", f"Basic {token}")
    # Bounded, but not by 10 s: the first authenticated request checks the password hash and
    # opens the server's database, and it took longer than 10 s once in CI with both cores busy.
    with urllib.request.urlopen(request, timeout=60) as ok:
        assert ok.status == 200


def test_parallel_sweep_compare_reproduce_and_resume_against_the_team_server(team_server, square_photo):
    work, env = team_server["work"], team_server["env"]
    first = run_cli(GRID + [f"image={square_photo}", "hydra.sweep.dir=first", "hydra/launcher=parallel"],
                    cwd=work, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]
    os.environ.update(env)
    try:
        parent, children = sweep_runs(team_server["url"], work / "first")
        assert parent.info.status == "FINISHED"
        assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
        client = MlflowClient(tracking_uri=team_server["url"])
        run = children[0]
        assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
        # The artifacts went through the server into its folder, not into the client's.
        assert list((team_server["server_dir"] / "artifacts").rglob("dream.png"))
    finally:
        for key in env:
            os.environ.pop(key, None)
    full_env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **env}
    compared = subprocess.run([sys.executable, "-m", "dreamlab.compare", "--sweep", parent.info.run_id,
                               "--out", str(work / "compare")], cwd=work, env=full_env,
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert len((work / "compare" / "runs.csv").read_text().strip().splitlines()) == 5
    reproduced = subprocess.run([sys.executable, "-m", "dreamlab.reproduce", run.info.run_id], cwd=work,
                                env=full_env, capture_output=True, text=True, timeout=600)
    assert reproduced.returncode == 0, reproduced.stderr[-2000:]
    assert "byte-identical" in reproduced.stdout
    again = run_cli(GRID + [f"image={square_photo}", "hydra.sweep.dir=again", "hydra/launcher=parallel"],
                    cwd=work, env_extra=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 4 jobs skipped" in again.stdout + again.stderr
    records = [json.loads((work / "again" / str(j) / "job.json").read_text()) for j in range(4)]
    assert {r["status"] for r in records} == {"SKIPPED"}
    assert {r["run_id"] for r in records} == {c.info.run_id for c in children}
