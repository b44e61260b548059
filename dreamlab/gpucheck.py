"""The GPU check: install dreamlab from a wheelhouse, dream a real sweep on every GPU, measure.

    python -m dreamlab.gpucheck [--wheelhouse wheelhouse] [--out outputs/gpu-check] [--cpu]
                                [--max-size 512] [--steps N] [--timeout 280]

For a GPU machine that cannot reach a package index (`make gpu-check`): the wheelhouse that
`python -m dreamlab.wheelhouse` made elsewhere is installed into this Python's own
environment with `pip install --no-index`, beside the machine's JAX and numpy (which it must
keep: a package whose version changes fails the check), and `jax.devices()` is asked again.
Then, all tracked into an MLflow store under `--out`, with the JAX backend:

- a sweep of the bundled MobileNetV2 at 512 px (one octave, so that every step is 512 px) on `hydra/launcher=parallel`, four jobs (one
  more per GPU past four), so every GPU dreams;
- InceptionV3 at 512 px with random weights (`backbone.weights=null`), one job per GPU;
- `python -m dreamlab.reproduce` of one MobileNetV2 job on each GPU: a repeated job.

Every job must have run on a GPU (its `env.device` tag starts with `gpu:` and its backend saw
one). One line per GPU follows: steps per second and compile seconds of each network,
whether the repeated job's dream.png was byte-identical, the peak GPU memory; and the same
goes to `--out`/gpucheck.json. With no GPU it says so in one line and exits 1; `--cpu` runs the
same check on the CPU (jobs on `cpu:` slots).

It runs from a checkout on a machine that has no dreamlab yet: until the wheelhouse is
installed it imports only the standard library (and numpy, which `import dreamlab` takes), and
the jobs run in `--out`, where they import the installed dreamlab.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

RESULT = "gpucheck.json"
EXPERIMENT = "gpu-check"
MOBILENET = ["backbone=mobilenet_v2", "backbone.weights=bundled"]
INCEPTION = ["backbone=inception_v3", "backbone.weights=null"]
# What the machine has that a wheelhouse must not replace (the JAX its CUDA plugin was built
# for, and the numpy every compiled wheel there was built against).
KEEP = ("jax", "jaxlib", "numpy")


class CheckError(Exception):
    """One line: why the check failed."""


class Check:
    def __init__(self, out: Path, cpu: bool, max_size: int, steps: Optional[int], timeout: float) -> None:
        self.out, self.cpu, self.max_size, self.steps = out.resolve(), cpu, max_size, steps
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.uri = f"sqlite:///{self.out / 'mlflow.db'}"
        self.logs = self.out / "logs"
        self.env = dict(os.environ)
        # The check's own compile cache, emptied each time: its compile seconds are a cold start's.
        self.env["DREAMLAB_CACHE"] = str(self.out / "dreamlab-cache")
        self.env["KERAS_BACKEND"] = "jax"
        self.env.pop("DREAMLAB_PRETEND_GPUS", None)
        self.env.pop("MLFLOW_TRACKING_URI", None)
        if cpu:  # no GPU for the launcher to hand out, none for JAX to take
            self.env["CUDA_VISIBLE_DEVICES"] = ""
            self.env["JAX_PLATFORMS"] = "cpu"

    # --- processes -------------------------------------------------------------------------

    def run(self, name: str, args: list[str], what: str) -> subprocess.CompletedProcess:
        """`python args`, in --out (so that the installed dreamlab is imported, not a checkout's),
        its output into logs/NAME.log, within what is left of the time limit."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckError(f"out of time ({self.timeout:.0f} s, --timeout) before {what}")
        log = self.logs / f"{name}.log"
        with open(log, "w") as f:
            try:
                done = subprocess.run([sys.executable, *args], cwd=self.out, env=self.env, stdout=f,
                                      stderr=subprocess.STDOUT, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                raise CheckError(f"{what} did not finish within the check's {self.timeout:.0f} s "
                                 f"(--timeout); its log: {log}") from None
        if done.returncode != 0:
            raise CheckError(f"{what} failed (exit {done.returncode}): {_last_line(log)} (log: {log})")
        return done

    def probe(self) -> dict:
        """JAX's version and devices, asked in a new process (what the jobs will see)."""
        code = ("import json, jax; print(json.dumps({'jax': jax.__version__, 'devices': "
                "[f\"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}\".strip() for d in jax.devices()]}))")
        try:
            done = subprocess.run([sys.executable, "-c", code], cwd=self.out, env=self.env,
                                  capture_output=True, text=True, timeout=max(10.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise CheckError("jax.devices() did not answer in time") from None
        if done.returncode != 0:
            raise CheckError(f"JAX does not start in {sys.executable}: {_last_text_line(done.stderr)}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    # --- the check -------------------------------------------------------------------------

    def sweep(self, name: str, backbone: list[str], jobs: int) -> None:
        # octaves=1: every step is at max_size, so steps/s is the rate of a max_size picture
        # (the recipe's smaller octaves would blend in faster steps) and compile is one shape's.
        overrides = ["-m", "hydra/launcher=parallel", "backend=jax", *backbone, f"max_size={self.max_size}",
                     "octaves=1",
                     "seed=" + ",".join(str(s) for s in range(jobs)), "resume=false", "progress=false",
                     f"mlflow.tracking_uri={self.uri}", f"mlflow.experiment={EXPERIMENT}",
                     f"hydra.sweep.dir={self.out / 'sweeps' / name}"]
        if self.steps:
            overrides.append(f"steps={self.steps}")
        self.run(name, ["-m", "dreamlab", *overrides], f"the {name} sweep ({jobs} jobs)")

    def jobs(self, client, experiment_id: str) -> list:
        return [r for r in client.search_runs([experiment_id], max_results=1000)
                if "dreamlab.job" in r.data.tags and "reproduces" not in r.data.tags]

    def verify(self, runs: list) -> None:
        expected = "cpu:" if self.cpu else "gpu:"
        for r in runs:
            tags = r.data.tags
            where = f"run {r.info.run_id} ({r.data.params.get('backbone.name')}, seed {r.data.params.get('seed')})"
            if r.info.status != "FINISHED":
                raise CheckError(f"{where} is {r.info.status}: {tags.get('dreamlab.error', 'no error recorded')}")
            device, seen = tags.get("env.device", ""), tags.get("env.gpu", "none")
            if not device.startswith(expected):
                raise CheckError(f"{where} ran on {device or 'an unrecorded device'} (env.device), not on a "
                                 f"{'CPU' if self.cpu else 'GPU'}")
            if not self.cpu and (seen == "none" or "(pretend)" in device or "not found" in device):
                raise CheckError(f"{where} was given {device} but JAX saw no GPU there (env.gpu {seen})")
            if not tags.get("env.backend", "").startswith("jax"):
                raise CheckError(f"{where} ran on {tags.get('env.backend', 'an unrecorded backend')}, not JAX")

    def repeat(self, run, gpu: Optional[str]) -> dict:
        """`python -m dreamlab.reproduce` of `run` (on its GPU) and whether the bytes matched."""
        env = dict(self.env)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        saved, self.env = self.env, env
        try:
            self.run(f"repeat-{run.info.run_id[:8]}",
                     ["-m", "dreamlab.reproduce", run.info.run_id, "--tracking-uri", self.uri],
                     f"the repeated job (reproduce {run.info.run_id})")
        finally:
            self.env = saved
        original = self.out / "outputs" / "reproduce" / run.info.run_id / "original" / "dream.png"
        again = self.out / "outputs" / "reproduce" / run.info.run_id / "dream.png"
        return {"run_id": run.info.run_id, "identical": original.read_bytes() == again.read_bytes()}


def _last_line(log: Path) -> str:
    return _last_text_line(log.read_text(errors="replace"))


def _last_text_line(text: str) -> str:
    """The line that says why: dreamlab's first `error:` line (a sweep's summary line comes
    after the job's own), else the last line that names an error, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("dreamlab: error:")]
    errors = [line for line in lines if "error" in line.lower()]
    return (own[:1] or errors[-1:] or lines[-1:] or ["no output"])[0][:500]


def installed() -> dict[str, str]:
    from importlib.metadata import distributions

    importlib.invalidate_caches()
    return {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions() if d.metadata["Name"]}


def install(wheelhouse: Path, work: Path) -> dict:
    """dreamlab[jax] from the wheelhouse into this Python's environment, nothing from an index.
    What this environment has stays: pip is asked first (--dry-run) what it would install, and
    the check stops before installing anything if that would replace one of the machine's
    packages. dreamlab's own wheel is installed again even at the same version (a newer
    checkout's)."""
    manifest_file = wheelhouse / "wheelhouse.json"
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        want, have = manifest.get("python_version", ""), f"{sys.version_info[0]}.{sys.version_info[1]}"
        if want and ".".join(want.split(".")[:2]) != have:
            raise CheckError(f"{wheelhouse}/ was made for Python {want} and {sys.executable} is Python {have}: "
                             f"run with that machine's Python (make gpu-check PYTHON=...)")
    own = sorted(wheelhouse.glob("dreamlab-*.whl"))
    if not own:
        raise CheckError(f"{wheelhouse}/ has no dreamlab wheel: make it with make wheelhouse")
    before = installed()
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse)]
    plan = work / "install-plan.json"
    steps = (["--dry-run", "--report", str(plan), "dreamlab[jax]"], ["dreamlab[jax]"],
             ["--no-deps", "--force-reinstall", str(own[-1])])
    for args in steps:
        done = subprocess.run(pip + args, capture_output=True, text=True)
        if done.returncode != 0:
            raise CheckError(f"pip install --no-index from {wheelhouse}/ failed: "
                             f"{_last_text_line(done.stderr + done.stdout)}")
        if "--dry-run" in args:
            would = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                     for i in json.loads(plan.read_text())["install"]}
            replaced = {n: (before[n], v) for n, v in would.items() if n in before and n != "dreamlab"}
            if replaced:
                raise CheckError("installing the wheelhouse would replace the machine's own " + ", ".join(
                    f"{n} {old} -> {new}" for n, (old, new) in sorted(replaced.items()))
                    + ": remake it with those in HAVE (make wheelhouse HAVE=...)")
    after = installed()
    changed = {n: (v, after.get(n)) for n, v in before.items() if n != "dreamlab" and after.get(n) != v}
    if changed:
        raise CheckError("installing the wheelhouse replaced the machine's own " + ", ".join(
            f"{n} {old} -> {new or 'removed'}" for n, (old, new) in sorted(changed.items())))
    added = sorted(n for n in after if n not in before)
    return {"wheelhouse": str(wheelhouse), "added": {n: after[n] for n in added},
            "kept": {n: after[n] for n in KEEP if n in after}}


def summarise(runs: list, repeats: dict[str, dict], cpu: bool) -> list[dict]:
    """One entry per device: its jobs' speeds per network, the repeat, the peak memory."""
    devices: dict[str, list] = {}
    for r in runs:
        key = "cpu" if cpu else r.data.tags["env.device"].split()[0]
        devices.setdefault(key, []).append(r)
    rows = []
    for key, group in sorted(devices.items()):
        row = {"device": key, "name": group[0].data.tags.get("env.gpu" if not cpu else "env.cpu", ""),
               "backend": group[0].data.tags.get("env.backend", ""), "networks": {}}
        for net in sorted({r.data.params.get("backbone.name") for r in group}):
            mine = [r for r in group if r.data.params.get("backbone.name") == net]
            compile_s = [r.data.metrics.get("compile_seconds", 0.0) for r in mine]
            row["networks"][net] = {
                "jobs": len(mine), "max_size": int(mine[0].data.params.get("max_size", 0) or 0),
                "steps_per_second": statistics.median(r.data.metrics.get("steps_per_second", 0.0) for r in mine),
                "compile_seconds": max(compile_s), "compile_seconds_cached": min(compile_s),
                "run_ids": [r.info.run_id for r in mine]}
        peaks = [r.data.metrics["peak_memory_mb"] for r in group if "peak_memory_mb" in r.data.metrics]
        row["peak_memory_mb"] = max(peaks) if peaks else None
        row["repeat"] = repeats.get(key)
        row["identical"] = repeats[key]["identical"] if key in repeats else None
        rows.append(row)
    return rows


def line(row: dict) -> str:
    nets = "; ".join(
        f"{net} {n['max_size']} px {n['steps_per_second']:.1f} steps/s, compile {n['compile_seconds']:.1f} s"
        + (f" ({n['compile_seconds_cached']:.1f} s cached)" if n["jobs"] > 1 else "")
        for net, n in row["networks"].items())
    same = {True: "yes", False: "no", None: "not checked"}[row["identical"]]
    peak = f"{row['peak_memory_mb']:.0f} MB" if row["peak_memory_mb"] is not None else "not reported"
    memory = "peak memory" if row["device"] == "cpu" else "peak GPU memory"
    return f"{row['device']} {row['name']}: {nets}; repeated job byte-identical: {same}; {memory} {peak}"


# Marks a folder as the check's own: only then does a new check empty it.
MARK = ".gpucheck"


def run_check(out: Path, wheelhouse: Optional[Path], cpu: bool, max_size: int, steps: Optional[int],
              timeout: float) -> dict:
    started = time.monotonic()
    if out.is_dir() and any(out.iterdir()) and not (out / MARK).exists():
        raise CheckError(f"--out {out} holds files that are not a gpu-check's: give a new folder (OUT=...)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("a folder of python -m dreamlab.gpucheck, emptied by the next check into it\n")
    check = Check(out, cpu, max_size, steps, timeout)
    for old in out.iterdir():
        if old.name != MARK:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    check.logs.mkdir()
    result: dict = {"mode": "cpu" if cpu else "gpu", "python": sys.version.split()[0], "max_size": max_size}
    if wheelhouse is not None and wheelhouse.is_dir():
        result["install"] = install(wheelhouse.resolve(), check.logs)
        print(f"gpu-check: installed from {wheelhouse}/: {len(result['install']['added'])} packages added, "
              f"kept " + ", ".join(f"{n} {v}" for n, v in result["install"]["kept"].items()), flush=True)
    elif wheelhouse is not None:
        print(f"gpu-check: no {wheelhouse}/ here: checking the dreamlab this Python has", flush=True)
    found = check.probe()
    result["jax"] = found["jax"]
    gpus = [d for d in found["devices"] if not d.startswith("cpu")]
    if not cpu and not gpus:
        raise CheckError(f"no GPU: JAX {found['jax']} sees only {', '.join(found['devices'])}; "
                         f"make gpu-check CPU=1 runs the check on the CPU")
    result["devices"] = found["devices"]
    print(f"gpu-check: JAX {found['jax']}, devices: {', '.join(found['devices'])}", flush=True)
    count = max(1, len(gpus))
    print(f"gpu-check: {max(4, count)} MobileNetV2 jobs and {count} InceptionV3 job(s) at {max_size} px "
          f"on {'the CPU' if cpu else f'{count} GPU(s)'}", flush=True)
    check.sweep("mobilenet_v2", MOBILENET, max(4, count))
    check.sweep("inception_v3", INCEPTION, count)

    from . import tracking  # mlflow is there now

    client = tracking.client(check.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = check.jobs(client, experiment.experiment_id)
    if len(runs) != max(4, count) + count:
        raise CheckError(f"{len(runs)} job runs in {check.uri}, expected {max(4, count) + count}")
    check.verify(runs)
    repeats = {}
    for r in runs:
        key = "cpu" if cpu else r.data.tags["env.device"].split()[0]
        if key not in repeats and r.data.params.get("backbone.name") == "mobilenet_v2":
            repeats[key] = check.repeat(r, None if cpu else key.split(":", 1)[1])
    result["per_device"] = summarise(runs, repeats, cpu)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamlab.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", default="wheelhouse",
                        help="install dreamlab[jax] from this folder first, when it exists (wheelhouse); '' skips")
    parser.add_argument("--out", default="outputs/gpu-check", help="the folder of its store, logs and gpucheck.json")
    parser.add_argument("--cpu", action="store_true", help="check on the CPU instead (jobs on cpu: slots)")
    parser.add_argument("--max-size", type=int, default=512, help="the pictures' longest side (512)")
    parser.add_argument("--steps", type=int, default=None, help="steps per octave (the config's default)")
    parser.add_argument("--timeout", type=float, default=280.0, help="seconds for the whole check (280)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        result = run_check(out, Path(args.wheelhouse) if args.wheelhouse else None, args.cpu, args.max_size,
                       args.steps, args.timeout)
    except CheckError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    for row in result["per_device"]:
        print(line(row))
    (out / RESULT).write_text(json.dumps(result, indent=1) + "\n")
    print(f"gpu-check: OK, {sum(n['jobs'] for r in result['per_device'] for n in r['networks'].values())} jobs "
          f"in {result['seconds']:.0f} s; {out / RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
