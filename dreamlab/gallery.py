"""A sweep's gallery: one self-contained HTML page that shows every job side by side.

`page(cells, keys, ...)` builds it from plain data (no Hydra, no MLflow): each `Cell` holds
its swept values, status, pictures per octave, losses, config and run link. Everything the
page needs is inside it: the pictures as base64 JPEGs (THUMB px thumbnails for the grid,
LARGE px for the picture opened large), its style and its script (the grid, the octave
slider, the loss chart as inline SVG). It makes no network request, so it opens from disk
and inside MLflow 3's artifact viewer, which shows an HTML artifact from a blob URL in an
iframe sandboxed with `allow-scripts` only: there, relative references do not resolve and a
link cannot open a tab, so run links are absolute and each shows its address as text.

Where the pictures come from is the caller's business (dreamlab.sweep: the job folders;
dreamlab.compare: MLflow's artifacts); `octave_pictures` and `run_cells` read MLflow's.
"""

from __future__ import annotations

import base64
import html
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

THUMB = 192  # longest side of a grid picture, px
THUMB_QUALITY = 80
LARGE = 512  # longest side of the picture opened large, px (never enlarged)
LARGE_QUALITY = 85
OCTAVES_DIR = "octaves"  # in a job folder: octave_1.jpg ... (written by dreamlab.jobs)
OCTAVE_QUALITY = 95


@dataclass
class Cell:
    """One job (or run) of the page. A picture is a path, bytes, a PIL image or an array."""
    values: dict[str, Any]
    status: str = "FINISHED"
    octaves: list[Any] = field(default_factory=list)  # the picture after each octave
    image: Any = None  # the final picture, when there are no octave pictures
    losses: list[float] = field(default_factory=list)
    loss: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    name: str = ""  # "job 3", a run name
    run_id: Optional[str] = None
    run_url: Optional[str] = None
    command: Optional[str] = None
    config: str = ""  # the resolved config, as YAML


def _open(picture):
    from PIL import Image

    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    if isinstance(picture, (str, Path)):
        with Image.open(picture) as im:
            return im.convert("RGB")
    if isinstance(picture, (bytes, bytearray)):
        with Image.open(io.BytesIO(picture)) as im:
            return im.convert("RGB")
    import numpy as np

    return Image.fromarray(np.asarray(picture, dtype=np.uint8)).convert("RGB")


def _jpeg(im, side: int, quality: int) -> str:
    from PIL import Image

    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side), Image.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=False)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def encode(picture) -> Optional[dict]:
    """{thumb, large} data URIs of one picture (None when it cannot be read)."""
    try:
        im = _open(picture)
    except Exception:
        return None
    return {"t": _jpeg(im, THUMB, THUMB_QUALITY), "l": _jpeg(im, LARGE, LARGE_QUALITY),
            "w": im.width, "h": im.height}


def save_octave(image, job_dir: Path, k: int) -> Path:
    """The picture after octave k (1-based) in the job folder, where the gallery finds it."""
    im = _open(image)
    path = Path(job_dir) / OCTAVES_DIR / f"octave_{k}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    if max(im.size) > LARGE:
        im.thumbnail((LARGE, LARGE), reducing_gap=2.0)
    im.save(path, "JPEG", quality=OCTAVE_QUALITY)
    return path


def job_octaves(job_dir: Path) -> list[Path]:
    """The octave pictures a job folder holds, in order."""
    found = list((Path(job_dir) / OCTAVES_DIR).glob("octave_*.*"))
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def _number(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def page(cells: Sequence[Cell], keys: Sequence[str], *, photo=None, origin: Optional[Cell] = None,
         title: str = "dreamlab gallery", subtitle: str = "", note: str = "") -> str:
    """The whole HTML page. `keys`: what was swept (the grid's layout), `photo`: the input
    picture as reference, `origin`: the run a sweep grew from (shown first), `note`: how to
    open the run links (a local store needs its UI served)."""
    sources = [(i, k, p) for i, c in enumerate(cells)
               for k, p in enumerate(c.octaves or ([c.image] if c.image is not None else []))]
    extra = [("photo", 0, photo)] if photo is not None else []
    if origin is not None:
        extra += [("origin", k, p) for k, p in
                  enumerate(origin.octaves or ([origin.image] if origin.image is not None else []))]
    todo = sources + extra
    with ThreadPoolExecutor(max_workers=4) as pool:
        encoded = list(pool.map(lambda item: encode(item[2]), todo))
    pictures: dict = {}
    for (owner, k, _), enc in zip(todo, encoded):
        pictures.setdefault(owner, {})[k] = enc

    def as_json(c: Cell, owner) -> dict:
        got = pictures.get(owner, {})
        return {"values": {k: "null" if v is None else str(v) for k, v in c.values.items()},
                "status": c.status, "pics": [got[k] for k in sorted(got) if got[k] is not None],
                "losses": [x for x in (_number(v) for v in c.losses) if x is not None],
                "loss": _number(c.loss), "seconds": _number(c.seconds), "error": c.error,
                "name": c.name, "run_id": c.run_id, "run_url": c.run_url, "command": c.command,
                "config": c.config}

    data = {"title": title, "subtitle": subtitle, "note": note, "keys": list(keys),
            "cells": [as_json(c, i) for i, c in enumerate(cells)],
            "photo": (pictures.get("photo") or {}).get(0),
            "origin": as_json(origin, "origin") if origin is not None else None}
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (_TEMPLATE.replace("%TITLE%", html.escape(title))
            .replace("%DATA%", blob).replace("%SCRIPT%", _SCRIPT).replace("%STYLE%", _STYLE))


def write(path: Path, cells: Sequence[Cell], keys: Sequence[str], **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(cells, keys, **kwargs), encoding="utf-8")
    return path


# --- From MLflow -------------------------------------------------------------------------

def octave_pictures(client, run_id: str, into: Path) -> list[Path]:
    """The octave pictures a run logged (`log_image(key="octave", step=k)`), downloaded into
    `into`, in order of octave."""
    try:
        listed = client.list_artifacts(run_id, "images")
    except Exception:
        return []
    found = []
    for a in listed:
        name = a.path.rsplit("/", 1)[-1]
        parts = name.split("+")
        if (parts[0] == "octave" and len(parts) >= 3 and parts[1] == "step" and name.endswith(".png")
                and not name.endswith("+compressed.png")):
            found.append((int(parts[2]), a.path))
    out = []
    for step, artifact in sorted(found):
        out.append(Path(client.download_artifacts(run_id, artifact, str(into))))
    return out


def link_base(tracking_uri: str) -> tuple[str, str]:
    """(the UI address run links start with, the note that says how to open them)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), ""
    from .tracking import LOCAL_UI, serve_command

    return LOCAL_UI, f"Run links need the store's UI running: {serve_command(tracking_uri)} (it serves {LOCAL_UI})."


def run_cell(client, run, keys: Sequence[str], into: Path, tracking_uri: str, name: str = "") -> Cell:
    """One logged run as a cell: its params' values, pictures, losses and config."""
    from .tracking import ERROR_TAG, ui_link

    run_id = run.info.run_id
    folder = Path(into) / run_id
    octaves = octave_pictures(client, run_id, folder)
    image = None
    if not octaves and run.info.status == "FINISHED":
        try:
            image = client.download_artifacts(run_id, "dream.png", str(folder))
        except Exception:
            image = None
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    try:
        config = Path(client.download_artifacts(run_id, "config.yaml", str(folder))).read_text()
    except Exception:
        config = ""
    seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
    base, _ = link_base(tracking_uri)
    return Cell(values={k: run.data.params.get(k) for k in keys}, status=run.info.status,
                octaves=octaves, image=image, losses=[m.value for m in history],
                loss=run.data.metrics.get("loss"), seconds=seconds, error=run.data.tags.get(ERROR_TAG),
                name=name or run.info.run_name or run_id, run_id=run_id,
                run_url=ui_link(base, run.info.experiment_id, run_id),
                command=reproduce_command(run_id, tracking_uri), config=config)


def reproduce_command(run_id: str, tracking_uri: str) -> str:
    from .tracking import DEFAULT_URI

    where = "" if tracking_uri == DEFAULT_URI else f" mlflow.tracking_uri={tracking_uri}"
    return f"python -m dreamlab from_run={run_id}{where}"


# --- The page ----------------------------------------------------------------------------

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>%STYLE%</style>
</head><body>
<header><h1 id="title"></h1><div id="subtitle"></div><div id="note"></div></header>
<section id="controls">
 <label>after octave <input id="octave" type="range" min="1" max="1" value="1" step="1">
 <b id="octave-value">1</b></label>
 <span id="layout"></span>
</section>
<section id="reference"></section>
<section id="grid"></section>
<section id="chart-box"><h2>loss per step, every job</h2><div id="chart"></div></section>
<div id="modal" hidden><div id="modal-box">
 <button id="close" title="close (Esc)">&times;</button>
 <div id="modal-pic"><img id="large" alt=""><div id="modal-octaves"></div></div>
 <div id="modal-text"></div>
</div></div>
<script id="data" type="application/json">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

_STYLE = """
body{font:14px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:8px 0}
#subtitle{color:#555}#note{color:#8a5a00;margin-top:4px}
#controls{margin:12px 0;display:flex;gap:20px;flex-wrap:wrap;align-items:center}
#controls select{margin:0 4px}
#reference{display:flex;gap:12px;margin-bottom:12px}
table.grid{border-collapse:collapse}
table.grid th{font-weight:600;padding:4px 6px;color:#333;text-align:center;vertical-align:middle}
table.grid td{vertical-align:top;padding:4px}
.cell{display:inline-block;width:200px;margin:2px;background:#fff;border:2px solid #ddd;border-radius:6px;
 padding:4px;vertical-align:top;cursor:pointer}
.cell.hl{border-color:#e0115f;box-shadow:0 0 8px #e0115f}
.cell .pic{width:192px;height:192px;display:flex;align-items:center;justify-content:center;background:#f0f0f0}
.cell img{width:192px;height:192px;object-fit:contain;image-rendering:auto}
.cell .label{font-size:12px;line-height:1.35;margin-top:3px;word-break:break-all}
.cell .meta{font-size:12px;color:#555}
.cell.failed{border-color:#c62828;cursor:default}.cell.failed .pic{background:#fdecea}
.cell .error{color:#c62828;font-size:12px;padding:6px;word-break:break-word}
.cell.ref{cursor:default;border-style:dashed}.cell.origin{cursor:pointer}
#chart svg{background:#fff;border:1px solid #ddd}
#chart polyline{fill:none;stroke-width:1.5;pointer-events:stroke}#chart polyline.hl{stroke-width:4}
#modal{position:fixed;inset:0;background:rgba(0,0,0,.6);display:flex;align-items:flex-start;
 justify-content:center;overflow:auto;z-index:10}
#modal[hidden]{display:none}
#modal-box{background:#fff;margin:24px;padding:16px;border-radius:8px;display:flex;gap:16px;
 flex-wrap:wrap;position:relative;max-width:1200px}
#close{position:absolute;right:8px;top:4px;font-size:24px;border:none;background:none;cursor:pointer}
#large{width:512px;height:512px;object-fit:contain;display:block}
#modal-text{max-width:600px;font-size:13px}
#modal-text pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-all;
 max-height:420px;overflow:auto}
#modal-octaves button{margin:4px 2px}#modal-octaves button.on{font-weight:bold}
.url{font-family:monospace;font-size:12px;word-break:break-all;color:#444}
"""

_SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
};
const framed = (() => { try { return window.self !== window.top; } catch (e) { return true; } })();
const num = (x) => x == null ? "-" : Number(x).toPrecision(4).replace(/\.?0+(e|$)/, "$1");
const cells = D.cells;
cells.forEach((c, i) => { c.i = i; });
const maxOct = Math.max(1, ...cells.map(c => c.pics.length), D.origin ? D.origin.pics.length : 1);
let octave = maxOct;
const layout = {rows: null, cols: null, filters: {}};
const keys = D.keys;
const valuesOf = (k) => { const s = []; for (const c of cells) if (!s.includes(c.values[k])) s.push(c.values[k]); return s; };

function label(c) {
  const parts = keys.map(k => k + "=" + c.values[k]);
  return parts.length ? parts.join(" ") : (c.name || "run");
}
function picOf(c, k) { return c.pics.length ? c.pics[Math.min(k, c.pics.length) - 1] : null; }

function card(c, cls) {
  const failed = c.status === "FAILED" || c.status === "KILLED";
  const box = el("div", {class: "cell" + (failed ? " failed" : "") + (cls ? " " + cls : ""), "data-i": String(c.i)});
  const pic = el("div", {class: "pic"});
  const p = picOf(c, octave);
  if (p) pic.append(el("img", {src: p.t, alt: label(c), "data-octave": String(Math.min(octave, c.pics.length))}));
  else if (c.error || failed) pic.append(el("div", {class: "error", text: c.error || c.status.toLowerCase()}));
  else pic.append(el("div", {class: "error", text: "no picture"}));
  box.append(pic, el("div", {class: "label", text: label(c)}),
             el("div", {class: "meta", text: c.status.toLowerCase() + "  loss " + num(c.loss) + "  " +
                                             (c.seconds == null ? "-" : c.seconds.toFixed(1)) + " s"}));
  if (p || c.config || c.run_url) box.addEventListener("click", () => openLarge(c));
  box.addEventListener("mouseenter", () => highlight(c.i, true));
  box.addEventListener("mouseleave", () => highlight(c.i, false));
  return box;
}

function reference() {
  const r = $("reference"); r.textContent = "";
  if (D.origin) {
    const o = D.origin; o.i = "origin";
    const b = card(o, "origin");
    b.querySelector(".label").textContent = "grew from run " + (o.run_id || "").slice(0, 8) + ": " + (o.name || "");
    r.append(b);
  }
  if (D.photo) {
    r.append(el("div", {class: "cell ref"}, el("div", {class: "pic"}, el("img", {src: D.photo.t, alt: "input photo"})),
                el("div", {class: "label", text: "input photo"})));
  }
}

function controls() {
  const s = $("octave"); s.max = String(maxOct); s.value = String(octave); $("octave-value").textContent = octave;
  s.addEventListener("input", () => { octave = Number(s.value); $("octave-value").textContent = octave; render(); });
  if (keys.length >= 2) { layout.rows = keys[0]; layout.cols = keys[1]; }
  else if (keys.length === 1) { layout.cols = keys[0]; }
  if (keys.length > 2) {
    const box = $("layout");
    const pick = (name, which) => {
      const sel = el("select", {id: which});
      for (const k of keys) { const o = el("option", {value: k, text: k}); if (k === layout[which]) o.selected = true; sel.append(o); }
      sel.addEventListener("change", () => { layout[which] = sel.value; filters(); render(); });
      box.append(el("label", {text: name}, sel));
    };
    pick("rows", "rows"); pick("columns", "cols");
    box.append(el("span", {id: "filters"}));
    filters();
  }
}

function filters() {
  const box = $("filters"); if (!box) return; box.textContent = "";
  for (const k of keys) {
    if (k === layout.rows || k === layout.cols) continue;
    const sel = el("select", {"data-key": k, class: "filter"});
    sel.append(el("option", {value: "\u0000all", text: "(all)"}));
    for (const v of valuesOf(k)) sel.append(el("option", {value: v, text: v}));
    if (!(k in layout.filters)) layout.filters[k] = valuesOf(k)[0];
    sel.value = layout.filters[k];
    sel.addEventListener("change", () => { layout.filters[k] = sel.value; render(); });
    box.append(el("label", {text: " " + k}, sel));
  }
}

function render() {
  const shown = cells.filter(c => Object.entries(layout.filters).every(([k, v]) =>
    k === layout.rows || k === layout.cols || v === "\u0000all" || c.values[k] === v));
  const rows = layout.rows ? valuesOf(layout.rows) : [null];
  const cols = layout.cols ? valuesOf(layout.cols) : [null];
  const t = el("table", {class: "grid"});
  if (layout.cols) {
    const head = el("tr", {}, el("th", {text: layout.rows ? layout.rows + " \\ " + layout.cols : layout.cols}));
    for (const v of cols) head.append(el("th", {text: layout.cols + "=" + v}));
    t.append(head);
  }
  for (const rv of rows) {
    const tr = el("tr");
    tr.append(el("th", {text: layout.rows ? layout.rows + "=" + rv : ""}));
    for (const cv of cols) {
      const td = el("td");
      for (const c of shown) {
        if (layout.rows && c.values[layout.rows] !== rv) continue;
        if (layout.cols && c.values[layout.cols] !== cv) continue;
        td.append(card(c));
      }
      tr.append(td);
    }
    t.append(tr);
  }
  $("grid").textContent = ""; $("grid").append(t);
  reference();
  if (!$("modal").hidden && current) showLarge();
}

let current = null;
function openLarge(c) { current = c; $("modal").hidden = false; showLarge(); }
function closeLarge() { $("modal").hidden = true; current = null; }
function showLarge() {
  const c = current, p = picOf(c, octave);
  const img = $("large");
  if (p) { img.src = p.l; img.style.display = ""; img.setAttribute("data-octave", String(Math.min(octave, c.pics.length))); }
  else { img.removeAttribute("src"); img.style.display = "none"; }
  const oct = $("modal-octaves"); oct.textContent = "";
  c.pics.forEach((_, k) => {
    const b = el("button", {class: k + 1 === Math.min(octave, c.pics.length) ? "on" : "", text: "octave " + (k + 1)});
    b.addEventListener("click", (e) => { e.stopPropagation(); octave = k + 1; $("octave").value = String(octave);
                                         $("octave-value").textContent = octave; render(); });
    oct.append(b);
  });
  const t = $("modal-text"); t.textContent = "";
  t.append(el("h2", {text: (c.i === "origin" ? "grew from: " : "") + label(c)}),
           el("div", {text: c.status.toLowerCase() + "  final loss " + num(c.loss) + "  " +
                            (c.seconds == null ? "-" : c.seconds.toFixed(1)) + " s" + (c.name ? "  (" + c.name + ")" : "")}));
  if (c.error) t.append(el("div", {class: "error", text: c.error}));
  if (c.run_url) {
    t.append(el("p", {}, "MLflow run: ", el("a", {href: c.run_url, target: "_blank", rel: "noopener", class: "runlink",
                                                 text: c.run_id || c.run_url})),
             el("div", {class: "url", text: c.run_url}));
    if (framed) t.append(el("div", {id: "framed-note", class: "meta",
      text: "Inside MLflow's artifact view this page is sandboxed: links cannot open here. Copy the address above into a new tab."}));
  }
  if (c.command) t.append(el("p", {text: "Reproduce it (or add overrides to grow a sweep from it):"}), el("pre", {class: "command", text: c.command}));
  if (c.config) t.append(el("p", {text: "Resolved config:"}), el("pre", {class: "config", text: c.config}));
}
$("close").addEventListener("click", closeLarge);
$("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeLarge(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeLarge(); });

const SVGNS = "http://www.w3.org/2000/svg";
const sv = (tag, attrs) => { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
function chart() {
  const W = 900, H = 360, L = 80, R = 20, T = 14, B = 40;
  const curves = cells.filter(c => c.losses.length);
  const box = $("chart"); box.textContent = "";
  if (!curves.length) { box.textContent = "no loss curves"; return; }
  const n = Math.max(...curves.map(c => c.losses.length));
  const all = curves.flatMap(c => c.losses);
  let lo = Math.min(...all), hi = Math.max(...all); if (hi === lo) { hi += 1; lo -= 1; }
  const x = (s) => L + (W - L - R) * (n > 1 ? s / (n - 1) : 0.5);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  const svg = sv("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  svg.append(sv("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"}),
             sv("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"}));
  const text = (x0, y0, s, anchor) => { const t = sv("text", {x: x0, y: y0, "font-size": 11, "text-anchor": anchor || "middle", fill: "#444"}); t.textContent = s; svg.append(t); };
  for (let i = 0; i <= 4; i++) { const v = lo + (hi - lo) * i / 4; text(L - 6, y(v) + 4, num(v), "end");
    svg.append(sv("line", {x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: "#eee"})); }
  for (let i = 0; i <= 4; i++) { const s = Math.round((n - 1) * i / 4); text(x(s), H - B + 16, String(s)); }
  text((L + W - R) / 2, H - 6, "step"); text(L - 6, H - 6, "loss", "end");
  curves.forEach((c, j) => {
    const pts = c.losses.map((v, s) => x(s).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
    const line = sv("polyline", {points: pts, stroke: `hsl(${(j * 137.5) % 360},65%,45%)`, "data-i": String(c.i)});
    const tip = sv("title", {}); tip.textContent = label(c) + "  final loss " + num(c.loss); line.append(tip);
    line.addEventListener("mouseenter", () => highlight(c.i, true));
    line.addEventListener("mouseleave", () => highlight(c.i, false));
    svg.append(line);
  });
  box.append(svg);
}
function highlight(i, on) {
  document.querySelectorAll(`.cell[data-i="${i}"], #chart polyline[data-i="${i}"]`).forEach(e => e.classList.toggle("hl", on));
}

$("title").textContent = D.title; $("subtitle").textContent = D.subtitle; $("note").textContent = D.note;
controls(); render(); chart();
"""
