"""The sweep gallery (gallery.html) in a real browser, `compare --html` from a tracking server,
and `from_run=RUN_ID`. Real CLI, a real `mlflow ui` on loopback (started and stopped here,
every wait bounded), Playwright driving Debian's headless Chromium."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, TRAINED_WEIGHTS, error_lines, run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
LAYERS = ("block_9_add", "block_12_add", "no_such_layer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_data(html: str) -> dict:
    """The data the page's script reads (its one JSON block)."""
    blob = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1)
    return json.loads(blob.replace("<\\/", "</"))


@pytest.fixture(scope="session")
def served(tmp_path_factory, square_photo):
    """A real `mlflow ui` on a free loopback port, and a 3x2 sweep tracked on it: layers (one
    misspelt: 2 failed jobs) x octaves, the trained MobileNetV2 at 128 px."""
    work = tmp_path_factory.mktemp("gallery")
    photo = work / "photo.png"
    shutil.copy(square_photo, photo)
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
                               f"sqlite:///{work / 'server.db'}", "--artifacts-destination", str(work / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port)], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow ui did not answer within 90 s")
                time.sleep(0.5)
        args = ["-m", f"layers={','.join(LAYERS)}", "octaves=2,3", "backbone=mobilenet_v2",
                f"backbone.weights={TRAINED_WEIGHTS}", f"image={photo}", "max_size=128", "steps=5",
                "progress=false", f"mlflow.tracking_uri={url}", "hydra.sweep.dir=sweep"]
        started = time.perf_counter()
        proc = run_cli(args, cwd=work, timeout=300)
        yield {"work": work, "url": url, "proc": proc, "sweep_dir": work / "sweep", "photo": photo,
               "seconds": time.perf_counter() - started}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _parent(client, sweep_dir: Path):
    exp = client.get_experiment_by_name("dreamlab").experiment_id
    return client.search_runs([exp], f"tags.`dreamlab.sweep` = '{sweep_dir.resolve()}' and "
                                     f"tags.`dreamlab.role` = 'sweep'")[0]


def _browser(p):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def test_a_sweep_writes_one_self_contained_gallery_and_logs_it_on_its_parent_run(served):
    proc = served["proc"]
    assert proc.returncode == 1, proc.stderr[-2000:]  # two jobs failed, the sweep says so
    page = served["sweep_dir"] / "gallery.html"
    assert f"gallery: {Path('sweep') / 'gallery.html'}" in proc.stdout
    html = page.read_text()
    # Self-contained: no reference to another file or host, no external script, style or font.
    assert not re.search(r'(src|href)="(?!data:|#)', html) and "<link" not in html
    assert "@import" not in html and "url(" not in html and "@font-face" not in html
    data = page_data(html)
    assert data["keys"] == ["layers", "octaves"] and len(data["cells"]) == 6
    failed = [c for c in data["cells"] if c["status"] == "FAILED"]
    assert len(failed) == 2 and all("no_such_layer" in c["error"] for c in failed)
    done = [c for c in data["cells"] if c["status"] == "FINISHED"]
    assert sorted(len(c["pics"]) for c in done) == [2, 2, 3, 3]
    assert all(c["run_url"].startswith(served["url"] + "/#/experiments/") for c in done)
    assert all(c["pics"][0]["t"].startswith("data:image/jpeg;base64,") for c in done)
    assert data["photo"] is not None and data["note"] == ""  # a server: links open as they are
    client = MlflowClient(served["url"])
    parent = _parent(client, served["sweep_dir"])
    assert "gallery.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_the_gallery_in_chromium_grid_octaves_large_picture_and_run_link(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    page_path = served["sweep_dir"] / "gallery.html"
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.locator("#grid .cell").first.wait_for(timeout=15_000)
        # No network: every request the page made is itself or an embedded picture.
        assert all(u.startswith(("file:", "data:")) for u in requests), requests
        assert not errors
        cells = page.locator("#grid .cell")
        assert cells.count() == 6
        labels = sorted(cells.locator(".label").all_inner_texts())
        assert labels == sorted(f"layers={l} octaves={o}" for l in LAYERS for o in (2, 3))
        assert page.locator("#grid .cell.failed").count() == 2
        assert "no_such_layer" in page.locator("#grid .cell.failed .error").first.inner_text()
        assert page.locator("#grid tr th").all_inner_texts()[1:3] == ["octaves=2", "octaves=3"]
        assert page.locator("#chart polyline").count() == 4
        page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
        shot = ROOT / "docs" / "images" / "gallery.png"
        if not shot.exists():  # the docs' picture, taken once from this real page
            page.screenshot(path=str(shot), full_page=True)
        # The octave control: every finished cell switches to an earlier picture.
        imgs = page.locator("#grid .cell img")
        last = imgs.evaluate_all("els => els.map(e => e.src)")
        assert len(last) == 4
        page.locator("#octave").fill("1")
        first = imgs.evaluate_all("els => els.map(e => e.src)")
        assert page.locator("#octave-value").inner_text() == "1"
        assert all(a != b for a, b in zip(first, last))
        assert imgs.evaluate_all("els => els.map(e => e.dataset.octave)") == ["1"] * 4
        # Hovering a loss curve highlights its cell.
        page.locator("#chart").scroll_into_view_if_needed()
        x, y = page.locator("#chart polyline").first.evaluate(
            "e => { const p = e.points.getItem(Math.floor(e.points.numberOfItems / 2)), m = e.getScreenCTM();"
            " return [p.x * m.a + p.y * m.c + m.e, p.x * m.b + p.y * m.d + m.f]; }")
        page.mouse.move(x, y)
        assert page.locator("#grid .cell.hl").count() == 1 and page.locator("#chart polyline.hl").count() == 1
        # One picture large, with its config, command and run link; the link opens its run.
        page.locator("#grid .cell:not(.failed) img").first.click()
        assert page.locator("#modal").is_visible()
        assert page.locator("#large").get_attribute("src").startswith("data:image/jpeg;base64,")
        assert "backbone:" in page.locator("#modal-text pre.config").inner_text()
        assert "from_run=" in page.locator("#modal-text pre.command").inner_text()
        link = page.locator("#modal-text a.runlink")
        run_id = link.inner_text()
        assert link.get_attribute("href").startswith(served["url"])
        with context.expect_page(timeout=30_000) as opened:
            link.click()
        run_page = opened.value
        run_name = MlflowClient(served["url"]).get_run(run_id).info.run_name
        run_page.get_by_text(run_name).first.wait_for(timeout=90_000)
        assert run_id in run_page.url
        browser.close()


def test_the_gallery_inside_the_mlflow_ui_artifact_view(served, tmp_path):
    """MLflow 3 shows an HTML artifact from a blob URL in an iframe sandboxed with
    allow-scripts only: the page still draws its grid and pictures, and says how to open
    run links there."""
    sync_api = pytest.importorskip("playwright.sync_api")
    client = MlflowClient(served["url"])
    parent = _parent(client, served["sweep_dir"])
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{served['url']}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
                  f"/artifacts/gallery.html")
        page.locator("iframe.mlflow-html-iframe").wait_for(timeout=90_000)
        assert page.locator("iframe.mlflow-html-iframe").get_attribute("sandbox") == "allow-scripts"
        frame = page.frame_locator("iframe.mlflow-html-iframe")
        frame.locator("#grid .cell").first.wait_for(timeout=30_000)
        assert frame.locator("#grid .cell").count() == 6
        frame.locator("#grid .cell:not(.failed) img").first.wait_for(timeout=10_000)
        frame.locator("#grid .cell:not(.failed) img").first.click()
        assert frame.locator("#framed-note").is_visible()
        assert frame.locator(".url").first.inner_text().startswith(served["url"])
        loaded = frame.locator("#large").evaluate("e => e.complete && e.naturalWidth > 0")
        assert loaded
        page.screenshot(path=str(tmp_path / "in_mlflow.png"))
        browser.close()


def test_compare_html_writes_the_page_for_runs_on_a_tracking_server(served, tmp_path):
    client = MlflowClient(served["url"])
    parent = _parent(client, served["sweep_dir"])
    out = tmp_path / "compare"
    proc = subprocess.run([sys.executable, "-m", "dreamlab.compare", "--sweep", parent.info.run_id,
                           "--tracking-uri", served["url"], "--out", str(out), "--html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = page_data((out / "gallery.html").read_text())
    # The jobs that became runs (the misspelt layer failed before its run existed).
    assert data["keys"] == ["layers", "octaves"] and len(data["cells"]) == 4
    assert sorted(len(c["pics"]) for c in data["cells"]) == [2, 2, 3, 3]
    assert all(c["losses"] and c["config"] and c["run_url"].startswith(served["url"]) for c in data["cells"])
    assert data["photo"] is not None


def test_from_run_grows_a_sweep_and_unchanged_reproduces_the_bytes(served):
    work, url = served["work"], served["url"]
    client = MlflowClient(url)
    origin_dir = served["sweep_dir"] / "0"
    origin = json.loads((origin_dir / "job.json").read_text())["run_id"]
    grown = run_cli(["-m", f"from_run={origin}", "step_size=0.005,0.02", f"mlflow.tracking_uri={url}",
                     "hydra.sweep.dir=grown"], cwd=work, timeout=300)
    assert grown.returncode == 0, grown.stderr[-2000:]
    parent = _parent(client, work / "grown")
    assert parent.data.tags["dreamlab.from_run"] == origin and parent.data.params["from_run"] == origin
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2
    original = client.get_run(origin)
    for run in children:
        assert run.data.tags["dreamlab.from_run"] == origin
        # The original's config, the override on top.
        assert run.data.params["layers"] == original.data.params["layers"]
        assert run.data.params["max_size"] == "128" and run.data.params["backbone.name"] == "mobilenet_v2"
    assert sorted(r.data.params["step_size"] for r in children) == ["0.005", "0.02"]
    data = page_data((work / "grown" / "gallery.html").read_text())
    assert data["origin"]["run_id"] == origin and len(data["origin"]["pics"]) == 2
    # No overrides: the original again, byte for byte (its photo fetched from the store).
    again = run_cli([f"from_run={origin}", f"mlflow.tracking_uri={url}", "hydra.run.dir=again"], cwd=work,
                    timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (work / "again" / "dream.png").read_bytes() == (origin_dir / "dream.png").read_bytes()


def test_from_run_of_a_missing_run_or_one_without_a_config_is_one_line_before_any_job(served):
    work, url = served["work"], served["url"]
    missing = run_cli(["-m", "from_run=0123456789abcdef0123456789abcdef", "octaves=1,2",
                       f"mlflow.tracking_uri={url}", "hydra.sweep.dir=missing"], cwd=work, timeout=300)
    assert missing.returncode == 1
    lines = error_lines(missing.stderr)
    assert len(lines) == 1 and "no run 0123456789abcdef0123456789abcdef" in lines[0], missing.stderr[-2000:]
    assert not list((work / "missing").glob("*/job.json")) and "Traceback" not in missing.stderr
    parent = _parent(MlflowClient(url), served["sweep_dir"]).info.run_id  # a sweep's run has no config
    single = run_cli([f"from_run={parent}", f"mlflow.tracking_uri={url}", "hydra.run.dir=noconfig"], cwd=work,
                     timeout=300)
    assert single.returncode == 1
    lines = error_lines(single.stderr)
    assert len(lines) == 1 and "has no config.yaml" in lines[0], single.stderr[-2000:]
    assert not (work / "noconfig" / "dream.png").exists() and "Traceback" not in single.stderr


def test_the_page_builder_keeps_the_size_budget_and_lays_out_three_keys(tmp_path):
    """24 jobs of 512 px dreams with 4 octaves: under 15 MB in under 5 s (docs/sweeps.md has
    the numbers); with three swept keys the page lets the user pick rows, columns and filters."""
    import numpy as np
    from PIL import Image

    from dreamlab import gallery

    with Image.open(ROOT / "docs" / "images" / "after.jpg") as im:
        dream = np.asarray(im.convert("RGB").resize((512, 512), Image.BICUBIC))
    cells = []
    for j in range(24):
        octaves = [np.roll(np.asarray(Image.fromarray(dream).resize((round(512 / 1.4 ** (3 - k)),) * 2)), j * 7, axis=1)
                   for k in range(4)]
        cells.append(gallery.Cell(values={"layers": f"l{j % 3}", "octaves": str(4 + j // 12), "seed": str(j // 3 % 4)},
                                  octaves=octaves, losses=[float(j + s) for s in range(80)], loss=j + 79.0,
                                  seconds=1.0, run_id=f"{j:032x}", run_url=f"http://h/#/{j}", config="a: 1\n"))
    started = time.perf_counter()
    page = gallery.write(tmp_path / "gallery.html", cells, ["layers", "octaves", "seed"], photo=dream)
    seconds = time.perf_counter() - started
    assert page.stat().st_size < 15e6 and seconds < 5, (page.stat().st_size, seconds)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.goto(page.as_uri())
        grid = tab.locator("#grid .cell")
        grid.first.wait_for(timeout=15_000)
        assert grid.count() == 6  # layers x octaves, seed filtered to its first value
        tab.locator("select.filter[data-key=seed]").select_option("\u0000all")
        assert grid.count() == 24
        tab.locator("#cols").select_option("seed")
        assert tab.locator("#grid tr").first.locator("th").all_inner_texts()[1:] == [f"seed={s}" for s in range(4)]
        assert grid.count() == 12  # layers x seed; octaves is now the filter, at its first value
        browser.close()
