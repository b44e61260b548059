"""A private, throw-away single-node SLURM cluster for the scale-out tests (munge on its own
socket, slurmctld and slurmd on 127.0.0.1), with its own files in a temporary folder.

It yields only once the node is idle, within a bounded wait, and stops exactly
the processes it started. When SLURM cannot start, the error says why (missing package,
the daemon's last log lines).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(*commands: str) -> list[str]:
    return [c for c in commands if shutil.which(c) is None and not os.path.exists(c)]


def _tail(path: Path, n: int = 8) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else "(no log)"


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def wait_until(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s; log: {_tail(log) if log else '-'}")


SLURM_CONF = """\
ClusterName=dreamlabtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
# What runs inside a container without cgroups or systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm(directory: Path | None = None):
    """A single-node SLURM cluster; yields the environment (SLURM_CONF) that sbatch needs.
    Its files go to a short new folder in /tmp by default: slurmd's step sockets must fit
    in 108 bytes, which pytest's per-worker folders exceed."""
    own = directory is None
    if own:
        directory = Path(tempfile.mkdtemp(prefix="dl-slurm-"))
    missing = _missing("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
    if missing:
        raise ClusterError(f"SLURM cannot start: {', '.join(missing)} not installed "
                           f"(apt-get install slurm-wlm munge; make test does it)")
    if os.geteuid() != 0:
        raise ClusterError("SLURM cannot start: this test runs slurmd as root (SlurmdUser=root)")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(exist_ok=True)
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = directory / "slurm.conf"
    conf.write_text(SLURM_CONF.format(dir=directory, ctld_port=free_port(), slurmd_port=free_port(),
                                      node="dreamlabnode", cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={directory}/munge.sock", f"--key-file={key}",
             f"--log-file={directory}/munged.log", f"--pid-file={directory}/munged.pid",
             f"--seed-file={directory}/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_until(lambda: (directory / "munge.sock").exists(), 20, "munged", directory / "munged.log")
        procs.append(subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf), "-N", "dreamlabnode"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() == "idle"

        wait_until(idle, 60, "slurmctld and slurmd", directory / "slurmd.log")
        try:  # a job must start, not only be accepted (a held job would hang a sweep)
            probe = subprocess.run(["srun", "-N1", "true"], env=env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"SLURM accepts jobs but does not start them; slurmd log: "
                               f"{_tail(directory / 'slurmd.log')}") from None
        if probe.returncode != 0:
            raise ClusterError(f"srun failed ({probe.stderr.strip()[:300]}); slurmd log: "
                               f"{_tail(directory / 'slurmd.log')}")
        yield {"SLURM_CONF": str(conf)}
    finally:
        if len(procs) == 3:
            # A job may still be exiting when its result is in: let SLURM finish it, or its
            # step daemon would outlive slurmd. scancel with our SLURM_CONF reaches only ours.
            subprocess.run(["scancel", "--user", str(os.geteuid())], env=env, capture_output=True, timeout=30)

            def drained() -> bool:
                out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=10)
                return out.returncode != 0 or not out.stdout.strip()

            try:
                wait_until(drained, 60, "the SLURM queue to drain")
            except ClusterError:
                pass
        _stop(procs)
        if own:
            shutil.rmtree(directory, ignore_errors=True)
