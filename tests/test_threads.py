"""`threads`: by default the cores the job was given, recorded in the run, set again by
reproduce (byte-identical with a count this machine does not have), and not a reason for a
resumed sweep to redo a job."""

import os

from mlflow.tracking import MlflowClient

from conftest import TRAINED_WEIGHTS, run_cli, store_uri


def test_threads_default_to_the_cores_given_and_reproduce_sets_the_recorded_count(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    common = ["backbone=mobilenet_v2", f"backbone.weights={TRAINED_WEIGHTS}", "layers=block_9_add",
              f"image={square_photo}", "max_size=96", "octaves=2", "steps=3", "progress=false",
              f"mlflow.tracking_uri={uri}"]
    cores = len(os.sched_getaffinity(0))
    assert run_cli(common, cwd=tmp_path).returncode == 0
    odd = cores + 1  # a count this machine does not have
    made = run_cli([*common, f"threads={odd}", "seed=1"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("dreamlab").experiment_id],
                              order_by=["attributes.start_time ASC"])
    default, forced = runs
    assert default.data.params["threads"] == str(cores) == default.data.tags["env.threads"]
    assert forced.data.params["threads"] == str(odd) == forced.data.tags["env.threads"]
    config = client.download_artifacts(forced.info.run_id, "config.yaml", str(tmp_path))
    assert f"threads: {odd}" in open(config).read()

    import subprocess
    import sys

    again = subprocess.run([sys.executable, "-m", "dreamlab.reproduce", forced.info.run_id, "--tracking-uri", uri],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "byte-identical" in again.stdout and "environment differs" not in again.stdout


def test_a_resumed_sweep_does_not_redo_jobs_for_another_thread_count(tmp_path, square_photo):
    uri = store_uri(tmp_path)
    common = ["-m", "backbone=mobilenet_v2", f"backbone.weights={TRAINED_WEIGHTS}", "layers=block_9_add",
              f"image={square_photo}", "max_size=64", "octaves=1", "steps=2", "seed=0,1", "progress=false",
              f"mlflow.tracking_uri={uri}"]
    first = run_cli([*common, "threads=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli(common, cwd=tmp_path)  # threads at its default
    assert second.returncode == 0, second.stderr[-2000:]
    assert "2 of 2 jobs skipped" in second.stdout, second.stdout[-2000:]
