"""Compare any selection of runs: a contact sheet laid out by the parameters that vary, and
a table of them as CSV and Markdown.

    python -m dreamlab.compare --sweep PARENT_RUN_ID          # the jobs of one sweep
    python -m dreamlab.compare --filter "params.backbone.name = 'vgg16'"
    python -m dreamlab.compare                                # every dream of the experiment

Options: --experiment NAME (default dreamlab), --tracking-uri URI (default
MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db), --out DIR (default
outputs/compare/<time>). Writes contact_sheet.png, runs.csv, runs.md there and prints the
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import DreamlabError, first_line


def select_runs(client, experiment: str, sweep: str | None, where: str | None):
    from . import tracking

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DreamlabError(f"no experiment '{experiment}' in this store: give --experiment NAME")
    clauses = [c for c in (where, f"tags.`{tracking.PARENT_TAG}` = '{sweep}'" if sweep else None) if c]
    try:
        runs = client.search_runs([exp.experiment_id], " and ".join(clauses), max_results=5000,
                                  order_by=["attributes.start_time ASC"])
    except Exception as exc:
        raise DreamlabError(f"MLflow rejected the selection: {first_line(exc)} "
                            f"(filter syntax: \"params.layers = 'mixed3' and metrics.loss > 1\")") from None
    return [r for r in runs if r.data.tags.get("dreamlab.role") != "sweep"]


def varying(runs) -> list[str]:
    from .config import PLACE, role

    # Params that differ between runs without changing what was dreamt (the schema's roles).
    keys = sorted({k for r in runs for k in r.data.params if role(k) != PLACE})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def build(client, runs, out: Path):
    import pandas as pd

    from . import plots

    keys = varying(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows, cells = [], []
    for r in runs:
        image = None
        if r.info.status == "FINISHED":
            image = client.download_artifacts(r.info.run_id, "dream.png", str(out / "images" / r.info.run_id))
        steps = len(client.get_metric_history(r.info.run_id, "loss"))
        seconds = ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
        values = {k: r.data.params.get(k) for k in keys}
        loss = r.data.metrics.get("loss")
        rows.append({"run_id": r.info.run_id, "run": r.info.run_name, **values, "status": r.info.status,
                     "final_loss": loss, "steps": steps, "seconds": round(seconds, 1), "image": image})
        cells.append({"values": values, "image": image, "loss": loss, "seconds": seconds,
                      "status": r.info.status})
    table = pd.DataFrame(rows)
    table.to_csv(out / "runs.csv", index=False)
    markdown = table.drop(columns=["image"]).to_markdown(index=False)
    (out / "runs.md").write_text(markdown + "\n")
    sheet = plots.contact_sheet(cells, keys[:4], out / "contact_sheet.png",
                                title=f"{len(runs)} runs; varying: {', '.join(keys) or 'nothing'}")
    return table, markdown, sheet


def main(argv: list[str] | None = None) -> int:
    from . import tracking

    parser = argparse.ArgumentParser(prog="python -m dreamlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="dreamlab")
    parser.add_argument("--sweep", help="the sweep's parent run id")
    parser.add_argument("--filter", help="an MLflow search filter string")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=Path("outputs/compare") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args(argv)
    try:
        client = tracking.client(args.tracking_uri)
        runs = select_runs(client, args.experiment, args.sweep, args.filter)
        if not runs:
            raise DreamlabError("no runs match: check --sweep, --filter and --experiment")
        _, markdown, sheet = build(client, runs, args.out)
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    print(markdown)
    print(f"\ncontact sheet: {sheet}\ntable: {args.out / 'runs.csv'}, {args.out / 'runs.md'}")
    return 0


if __name__ == "__main__":
    from .tracking import quiet_defaults

    quiet_defaults()  # the command's MLflow settings, not on import (dreamlab.tracking)
    sys.exit(main())
