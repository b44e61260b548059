"""Compare any selection of runs: a contact sheet laid out by the parameters that vary, and
a table of them as CSV and Markdown.

    python -m dreamlab.compare --sweep PARENT_RUN_ID          # the jobs of one sweep
    python -m dreamlab.compare --filter "params.backbone.name = 'vgg16'"
    python -m dreamlab.compare                                # every dream of the experiment
    python -m dreamlab.compare --sweep PARENT_RUN_ID --html   # and gallery.html (dreamlab.gallery)

Options: --experiment NAME (default dreamlab), --tracking-uri URI (default
MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db), --out DIR (default
outputs/compare/<time>), --html. Writes contact_sheet.png, runs.csv, runs.md there (and, with
--html, gallery.html: the sweep's page for these runs, their pictures downloaded through
MLflow, from a remote tracking server too) and prints the Markdown table.
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


def html(client, runs, out: Path, tracking_uri: str, title: str = "") -> Path:
    """gallery.html for any selection of runs, laid out by the params that vary; a sweep's
    origin (`dreamlab.from_run`) first when they all grew from one run."""
    from . import gallery

    keys = varying(runs)
    fetched = out / "gallery_files"
    cells = [gallery.run_cell(client, r, keys, fetched, tracking_uri) for r in runs]
    origins = {r.data.tags.get("dreamlab.from_run") for r in runs}
    origin = None
    if len(origins) == 1 and None not in origins:
        try:
            origin = gallery.run_cell(client, client.get_run(origins.pop()), keys, fetched, tracking_uri)
        except Exception:
            origin = None  # deleted since: the page shows the runs alone
    photo = None
    if "image" not in keys:
        run = runs[0]
        inputs = [a.path for a in client.list_artifacts(run.info.run_id, "input")] if run.data.params.get(
            "image", "null") != "null" else []
        if inputs:
            photo = client.download_artifacts(run.info.run_id, inputs[0], str(fetched / "input"))
    _, note = gallery.link_base(tracking_uri)
    failed = sum(1 for c in cells if c.status == "FAILED")
    return gallery.write(out / "gallery.html", cells, keys, photo=photo, origin=origin, note=note,
                         title=title or f"{len(cells)} runs" + (f", {failed} failed" if failed else ""),
                         subtitle=f"varying: {', '.join(keys) or 'nothing'}  |  {tracking_uri}")


def main(argv: list[str] | None = None) -> int:
    from . import tracking

    parser = argparse.ArgumentParser(prog="python -m dreamlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="dreamlab")
    parser.add_argument("--sweep", help="the sweep's parent run id")
    parser.add_argument("--filter", help="an MLflow search filter string")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI))
    parser.add_argument("--html", action="store_true", help="also write gallery.html (one self-contained page)")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args(argv)
    try:
        client = tracking.client(args.tracking_uri)
        runs = select_runs(client, args.experiment, args.sweep, args.filter)
        if not runs:
            raise DreamlabError("no runs match: check --sweep, --filter and --experiment")
        _, markdown, sheet = build(client, runs, args.out)
        page = html(client, runs, args.out, args.tracking_uri,
                    title=f"sweep {args.sweep}" if args.sweep else "") if args.html else None
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    print(markdown)
    print(f"\ncontact sheet: {sheet}\ntable: {args.out / 'runs.csv'}, {args.out / 'runs.md'}")
    if page is not None:
        print(f"gallery: {page}")
    return 0


if __name__ == "__main__":
    from .tracking import quiet_defaults

    quiet_defaults()  # the command's MLflow settings, not on import (dreamlab.tracking)
    sys.exit(main())
