"""Runs left RUNNING by a process that died (kill -9, power loss, a lost node) end KILLED.

    python -m dreamlab.runs cleanup [--tracking-uri URI] [--experiment NAME]

Every run dreamlab starts carries the host and PID of its process and that process's start
time (`dreamlab.host`, `dreamlab.pid`, `dreamlab.pid_started`, from /proc). A RUNNING run of
this host whose process no longer exists, or whose PID now belongs to a process started at
another time (PIDs are reused), is an orphan: it is marked KILLED with the reason. Runs of
other hosts are left alone (their processes cannot be seen from here); run the cleanup on
their host. Every sweep does this for its experiment when it starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Optional

from .errors import DreamlabError, first_line

HOST_TAG, PID_TAG, STARTED_TAG = "dreamlab.host", "dreamlab.pid", "dreamlab.pid_started"


def process_started(pid: int) -> Optional[str]:
    """The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22),
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    """The tags that let a later cleanup tell whether this process still runs."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), STARTED_TAG: process_started(pid) or ""}


def orphaned(tags: dict) -> Optional[str]:
    """Why a RUNNING run with these tags is an orphan, or None when its process may run."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    started = process_started(pid)
    if started is None:
        return f"its process (host {tags[HOST_TAG]}, pid {pid}) is gone"
    if tags.get(STARTED_TAG) and started != tags[STARTED_TAG]:
        return f"its process (host {tags[HOST_TAG]}, pid {pid}) is gone (the pid now belongs to another process)"
    return None


def cleanup(tracking_uri: str, experiment: str) -> tuple[list[str], int]:
    """Mark this host's orphaned RUNNING runs of `experiment` KILLED; returns their ids and
    the number of RUNNING runs of other hosts, left alone."""
    from . import tracking

    client = tracking.client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], 0
    killed, elsewhere = [], 0
    for run in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        reason = orphaned(tags)
        if reason:
            tracking.end_run(client, run.info.run_id, f"left RUNNING: {reason}", status="KILLED")
            killed.append(run.info.run_id)
        elif tags.get(HOST_TAG) and tags.get(HOST_TAG) != socket.gethostname():
            elsewhere += 1
    return killed, elsewhere


def main(argv: list[str] | None = None) -> int:
    from . import tracking

    parser = argparse.ArgumentParser(prog="python -m dreamlab.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["cleanup"])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI))
    parser.add_argument("--experiment", default="dreamlab")
    args = parser.parse_args(argv)
    try:
        from . import validate

        validate.tracking_store(args.tracking_uri)
        killed, elsewhere = cleanup(args.tracking_uri, args.experiment)
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"dreamlab: error: {first_line(exc)}", file=sys.stderr)
        return 1
    print(f"{len(killed)} orphaned run(s) marked KILLED" + (f": {', '.join(killed)}" if killed else "")
          + (f"; {elsewhere} RUNNING run(s) of other hosts left alone (run this there)" if elsewhere else ""))
    return 0


if __name__ == "__main__":
    from .tracking import quiet_defaults

    quiet_defaults()  # the command's MLflow settings, not on import (dreamlab.tracking)
    sys.exit(main())
