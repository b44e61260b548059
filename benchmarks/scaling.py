"""Time and peak memory as the picture grows, tiling on (the default tile_size=512).

    .venv/bin/python benchmarks/scaling.py [SIZE ...]        (default 512 1024 2048 4096)

Each size runs in a fresh process, so its peak RSS is its own: InceptionV3 (mixed3+mixed5,
random weights), one octave, the default tile (512), 2 steps timed after one that builds
and traces. Writes outputs/bench/scaling.{csv,json}; `make bench` runs it as its scaling
section.
"""

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time
import numpy as np
import dreamlab
size, steps = int(sys.argv[1]), int(sys.argv[2])
photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
args = dict(backbone="inception_v3", weights=None, layers="default", octaves=1, jitter=32)
dreamlab.dream(photo[:600, :600], steps=1, **args)  # build and trace outside the timing
start = time.perf_counter()
result = dreamlab.dream(photo, steps=steps, **args)
seconds = (time.perf_counter() - start) / steps
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through
# fork and exec, so a child of a 2 GB process would report 2 GB whatever it used.
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(f"RESULT {size} {seconds:.3f} {rss:.0f}")
"""


def measure(size: int, steps: int = 2) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(steps)], capture_output=True,
                         text=True, check=True).stdout
    _, side, seconds, rss = next(l for l in out.splitlines() if l.startswith("RESULT")).split()
    seconds = float(seconds)
    return {"size_px": int(side), "s_per_step": seconds, "peak_rss_mb": float(rss),
            "us_per_pixel_step": seconds / int(side) ** 2 * 1e6}


def main(sizes: list[int]) -> list[dict]:
    rows = []
    print(f"{'size':>6} {'s/step':>8} {'peak RSS MB':>12} {'us/pixel/step':>14}")
    for size in sizes:
        row = measure(size)
        rows.append(row)
        print(f"{row['size_px']:>6} {row['s_per_step']:>8.2f} {row['peak_rss_mb']:>12.0f} "
              f"{row['us_per_pixel_step']:>14.3f}", flush=True)
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(rows, indent=2))
    keys = list(rows[0])
    (out / "scaling.csv").write_text("\n".join([",".join(keys)] + [
        ",".join(str(r[k]) for k in keys) for r in rows]) + "\n")
    return rows


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [512, 1024, 2048, 4096])
