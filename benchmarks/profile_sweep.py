"""Where the time of the literal 2x2 sweep goes, in process and with hydra/launcher=parallel.

    .venv/bin/python benchmarks/profile_sweep.py [--launcher basic parallel] [--repeat N]

Runs, as a user would (in a fresh store whose tables exist, as a team's store does)

    python -m dreamlab -m layers=mixed3,mixed5 octaves=3,5 steps=10 max_size=256 backbone.weights=null

(InceptionV3 with random weights: ImageNet's cannot be downloaded everywhere, and the time is
the same) with the timers of benchmarks/profiling/sitecustomize.py in the sweep's process and
in every worker, and prints one table: the seconds of each phase on the main thread of each
process (self time: a phase's time less the phases inside it, so a column adds up), and what
the runs' writer threads did beside them. `make bench ARGS="--only profile"` runs it as the
bench's profile section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "benchmarks" / "profiling"
SWEEP = ["layers=mixed3,mixed5", "octaves=3,5", "steps=10", "max_size=256", "backbone.weights=null"]

# (row, span categories), in the order a sweep meets them.
ROWS = [
    ("interpreter start-up", ["startup"]),
    ("import TensorFlow + Keras", ["import:tensorflow"]),
    ("import MLflow (+ SQLAlchemy, pandas)", ["import:mlflow"]),
    ("import Hydra + OmegaConf", ["import:hydra"]),
    ("import matplotlib", ["import:matplotlib"]),
    ("import Pillow", ["import:pillow"]),
    ("import JAX", ["import:jax"]),
    ("sweep start: store, orphans, parent run", ["sweep:start"]),
    ("Hydra: compose each job's config", ["hydra:compose"]),
    ("Hydra: job set-up (folders, logging, .hydra files)", ["hydra:run_job"]),
    ("launcher (parallel: waiting for the workers)", ["launcher"]),
    ("job set-up: validate, backend, threads, gc, fingerprint, resume", ["job:setup"]),
    ("MLflow: start the run (create, params, env tags)", ["mlflow:start_run"]),
    ("model build", ["model:build"]),
    ("compiled step: extractor, step object", ["step:object"]),
    ("compile: trace (first step of each compiled step)", ["compile:trace"]),
    ("compile: first step at each new octave size", ["compile:size"]),
    ("dream steps", ["step"]),
    ("dream schedule (resizes, picture conversions)", ["dream:schedule", "job:dream_setup"]),
    ("per octave: log line, picture into the job folder", ["octave:callback", "octave:picture"]),
    ("per octave: MLflow logging (queued: pictures, metrics)", ["octave:mlflow"]),
    ("save dream.png", ["job:save_png"]),
    ("loss plot (loss.png)", ["job:loss_plot"]),
    ("MLflow: final artifacts (dream.png, loss.png, config, overrides)", ["mlflow:artifacts"]),
    ("MLflow: end the run (wait for its writer, terminate)", ["mlflow:end"]),
    ("after the dream: the rest of dream_job", ["job:after"]),
    ("sweep end: contact sheet", ["sweep:contact_sheet"]),
    ("sweep end: loss overlay", ["sweep:loss_overlay"]),
    ("sweep end: gallery.html", ["sweep:gallery"]),
    ("sweep end: summary, parent run's artifacts and end", ["sweep:end"]),
    ("Python between the timed phases (Hydra, dreamlab)", ["unattributed"]),
    ("process exit (after the sweep's end)", ["exit"]),
    ("workers: idle after their last job, until the sweep ends", ["idle"]),
]
WRITER_ROWS = [
    ("writer: octave pictures (log_image)", ["writer:pictures"]),
    ("writer: metrics (log_batch)", ["writer:metrics"]),
    ("writer: artifacts (log_artifact, log_text)", ["writer:artifacts"]),
    ("writer: end of run (tags, set_terminated)", ["writer:end"]),
    ("writer: loss plot", ["job:loss_plot"]),
]


def run(launcher: str, work: Path, sweep: list[str] = SWEEP, jobs: int = 4) -> dict:
    """One profiled sweep in `work`; returns its wall time and the spans of every process."""
    spans = work / "spans"
    spans.mkdir(parents=True)
    uri = f"sqlite:///{work}/mlflow.db"
    # A team's store exists before its sweeps: its tables are created outside the timing.
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('{uri}').search_experiments()"],
                   check=True, capture_output=True, cwd=work)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, DREAMLAB_PROFILE=str(spans),
               PYTHONPATH=os.pathsep.join([str(HOOKS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "dreamlab", "-m", *sweep, f"hydra.sweep.dir={work / 'sweep'}"]
    if launcher != "basic":
        cmd.append(f"hydra/launcher={launcher}")
    launched = time.time()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"profile: the sweep failed:\n{done.stderr[-3000:]}")
    expected = jobs
    jobs = [json.loads(p.read_text()) for p in sorted((work / "sweep").glob("*/job.json"))]
    if len(jobs) != expected or any(j["status"] != "FINISHED" for j in jobs):
        raise SystemExit(f"profile: expected {expected} FINISHED jobs, got {[j['status'] for j in jobs]}")
    records = [json.loads(line) for p in spans.glob("*.jsonl") for line in p.read_text().splitlines()]
    return {"wall": ended - launched, "launched": launched, "ended": ended, "records": records,
            "pictures": {j["job"]: (work / "sweep" / str(j["job"]) / "dream.png").read_bytes() for j in jobs}}


def phases(result: dict) -> dict:
    """{(process role, thread): {category: seconds}}; roles: 'sweep' (the launching process)
    and 'workers' (every other process, summed)."""
    records = result["records"]
    processes = {r["pid"]: r for r in records if r["kind"] == "process"}
    exits = {r["pid"]: r["t"] for r in records if r["kind"] == "exit"}
    root = min(processes.values(), key=lambda p: p["t0"])["pid"]
    # The parallel launcher's preloaded server: its imports are the workers', but it waits for
    # forks, not for the sweep's end.
    servers = {p["ppid"] for p in processes.values() if p.get("forked")}
    table: dict = defaultdict(lambda: defaultdict(float))
    by_pid = defaultdict(list)
    for r in records:
        if r["kind"] == "span":
            by_pid[r["pid"]].append(r)
    # The first step at a new size (and the trace) is a step too: what it takes beyond the
    # typical step of its size and compiled step is its compilation.
    for pid, spans in by_pid.items():
        typical = defaultdict(list)
        for s in spans:
            if s["category"] == "step":
                typical[s["detail"]].append(s["self"])
        for s in spans:
            if s["category"].startswith("compile:") and typical.get(s["detail"]):
                step = min(statistics.median(typical[s["detail"]]), s["self"])
                s["self"] -= step
                table[("sweep" if pid == root else "workers", "main")]["step"] += step
    for pid, process in processes.items():
        role = "sweep" if pid == root else "workers"
        spans = by_pid.get(pid, [])
        if pid != root and not spans:  # a helper process (loky's resource tracker), not a worker
            continue
        for s in spans:
            table[(role, s["thread"])][s["category"]] += s["self"]
        main = [s for s in spans if s["thread"] == "main"]
        start = result["launched"] if pid == root else process["started"]
        table[(role, "main")]["startup"] += process["t0"] - start
        last = max((s["end"] for s in main), default=process["t0"])
        covered = sum(s["end"] - s["start"] for s in main if s["top"])
        table[(role, "main")]["unattributed"] += max(0.0, last - process["t0"] - covered)
        if pid == root:
            table[(role, "main")]["exit"] += max(0.0, result["ended"] - last)
        elif pid not in servers:  # a worker waits for the sweep's end (its last writes included) to exit
            table[(role, "main")]["idle"] += max(0.0, exits.get(pid, last) - last)
    return table


def tabulate_profile(results: dict[str, dict]) -> list[list]:
    """Rows of seconds: one column per (launcher, role, thread) that has any time."""
    columns = []
    for launcher, result in results.items():
        table = phases(result)
        for role in ("sweep", "workers"):
            if (role, "main") in table:
                columns.append((launcher, role, "main", table[(role, "main")]))
        writer = defaultdict(float)
        for role in ("sweep", "workers"):
            for k, v in table.get((role, "background"), {}).items():
                writer[k] += v
        columns.append((launcher, "writer threads", "background", writer))
    out = []
    for label, cats in ROWS + WRITER_ROWS:
        is_writer = label.startswith("writer:")
        values = []
        for launcher, role, thread, cells in columns:
            if (thread == "background") != is_writer:
                values.append("")
                continue
            values.append(round(sum(cells.get(c, 0.0) for c in cats), 2))
        if any(v not in ("", 0.0) for v in values):
            out.append([label, *values])
    totals = ["sum of the column"]
    for *_, cells in columns:
        totals.append(round(sum(cells.values()), 2))
    out.append(totals)
    walls = ["wall time of the sweep"]
    for launcher, role, thread, _ in columns:
        walls.append(round(results[launcher]["wall"], 2) if role == "sweep" else "")
    out.append(walls)
    headers = ["phase"] + [f"{launcher}: {'main thread' if role == 'sweep' else role}"
                           + (" (sum)" if role == "workers" else "") for launcher, role, _, _ in columns]
    return [headers] + out


def measure(launchers=("basic", "parallel"), sweep: list[str] = SWEEP, jobs: int = 4) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="dreamlab-profile-") as tmp:
        for launcher in launchers:
            results[launcher] = run(launcher, Path(tmp) / launcher, sweep, jobs)
    if len(results) > 1:
        first, *others = results.values()
        results_same = all(o["pictures"] == first["pictures"] for o in others)
        for r in results.values():
            r["identical"] = results_same
    return results


def main() -> None:
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launcher", nargs="+", default=["basic", "parallel"], choices=["basic", "parallel"])
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    results = measure(tuple(args.launcher))
    headers, *rows = tabulate_profile(results)
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if "identical" in next(iter(results.values())):
        print(f"\npictures identical across launchers: {next(iter(results.values()))['identical']}")
    if args.json:
        args.json.write_text(json.dumps({"headers": headers, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
