"""The wheels a machine without internet needs for dreamlab, minus what it already has.

    python -m dreamlab.wheelhouse --python-version 3.12 --have pip-list.txt \\
        [--platform manylinux_2_28_x86_64] [--extras jax] [--out wheelhouse] [--budget-mb 60]

Run on a machine with internet, from a checkout (`make wheelhouse`). It builds dreamlab's own
wheel, asks pip to resolve `dreamlab[jax]` for the target (`pip install --dry-run --report`
with `--platform`, `--python-version`, `--implementation cp`, `--only-binary=:all:`: metadata
only, nothing is installed), and downloads into `--out` the wheels of that resolution that the
target lacks. `--have` is the target's package list (`pip list --format=freeze` or one name a
line, `NAME==VERSION` where the version is known): a package it names is the target's own and
is not downloaded, nor is anything only it needs; its pinned versions are passed to pip as
constraints, so that what is downloaded works with them (numpy==2.5.2 keeps every wheel to
one built for numpy 2). A requirement with no wheel on the index at all (hydra-core's
antlr4-python3-runtime 4.9 is a source release) is built here, and taken when that gives a
pure-Python wheel.

It prints the size and the wheel count, writes `wheelhouse.json` beside the wheels (the
target, the wheels, and the target's packages the wheels rely on), and fails in one line when
the wheels are over the budget. `python -m dreamlab.gpucheck` installs them on the target.

Imports neither Hydra nor MLflow nor Keras: it runs before any of them is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

MANIFEST = "wheelhouse.json"
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
DEFAULT_BUDGET_MB = 60.0
MB = 1e6  # pip and PyPI count in decimal megabytes; so does the 60 MB of a trip


class WheelhouseError(Exception):
    """A one-line reason the wheelhouse could not be made."""


def canonical(name: str) -> str:
    """PEP 503's normalised name: typing_extensions, Typing-Extensions -> typing-extensions."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_have(path: Optional[str]) -> dict[str, Optional[str]]:
    """The target's packages, {name: version or None}, from a pip list file: `NAME==VERSION`,
    a bare `NAME`, `# comments`; `pip list`'s table (`NAME VERSION`) is read too."""
    have: dict[str, Optional[str]] = {}
    if not path:
        return have
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or set(line) <= set("- "):
            continue
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
        elif " @ " in line:
            name, version = line.split(" @ ", 1)[0].strip(), None
        else:
            parts = line.split()
            if parts[0].lower() == "package" and len(parts) == 2:  # pip list's header
                continue
            name, version = parts[0], (parts[1] if len(parts) > 1 else None)
        have[canonical(name)] = version or None
    return have


def platforms(platform: str) -> list[str]:
    """pip's --platform values for a target: a manylinux_2_Y platform also runs every older
    manylinux wheel (pip does not widen it by itself), down to manylinux1."""
    found = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not found:
        return [platform]
    glibc, arch = int(found.group(1)), found.group(2)
    tags = [f"manylinux_2_{y}_{arch}" for y in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for y, name in legacy.items() if y <= glibc]


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """The PEP 508 marker values of the target, for the requirements' `; python_version ...`."""
    arch = re.sub(r"^(many|musl)?linux(_\d+_\d+|\d+)?_|^macosx_\d+_\d+_|^win_?", "", platform) or "x86_64"
    if platform.startswith("macosx"):
        system, sys_platform, os_name = "Darwin", "darwin", "posix"
    elif platform.startswith("win"):
        system, sys_platform, os_name, arch = "Windows", "win32", "nt", {"amd64": "AMD64"}.get(arch, arch)
    else:
        system, sys_platform, os_name = "Linux", "linux", "posix"
    full = python_version if python_version.count(".") >= 2 else python_version + ".0"
    return {"python_version": ".".join(python_version.split(".")[:2]), "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython", "platform_system": system,
            "sys_platform": sys_platform, "os_name": os_name, "platform_machine": arch,
            "platform_release": "", "platform_version": ""}


def _packaging():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always has its own copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def _pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise WheelhouseError(_pip_error(done))
    return done


def _pip_error(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()
             if line.strip().startswith("ERROR:")]
    return " ".join(lines[:3]) or f"pip exited with code {done.returncode}"


def build_own_wheel(source: Path, into: Path) -> Path:
    """dreamlab's wheel from the checkout at `source`. Without build isolation when this
    Python has setuptools>=77 (offline, fast); else pip's isolated build fetches it."""
    args = ["wheel", "-q", "--no-deps", "-w", str(into)]
    try:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 77:
            args.append("--no-build-isolation")
    except (ImportError, ValueError):
        pass
    _pip(*args, str(source))
    built = sorted(into.glob("dreamlab-*.whl"))
    if not built:
        raise WheelhouseError(f"pip wheel {source} made no dreamlab wheel")
    return built[-1]


def _unresolvable(done: subprocess.CompletedProcess) -> dict[str, str]:
    """{name: requirement} that pip found no wheel for at all, from its error text."""
    text = done.stderr + done.stdout
    names = set(re.findall(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", text))
    block = re.search(r"no matching distributions available for your environment:[ \t]*\n((?:[ \t]+\S+[ \t]*\n)+)", text)
    if block:
        names.update(block.group(1).split())
    wanted = {}
    for name in names:
        spec = re.search(rf"depends on ({re.escape(name)}[^\s)]*)", text, re.IGNORECASE)
        wanted[canonical(name)] = spec.group(1) if spec else name
    return wanted


def _build_pure(requirement: str, into: Path) -> Path:
    """A wheel built here from a source release; only a pure-Python one runs on another machine."""
    before = set(into.glob("*.whl"))
    done = _pip("wheel", "-q", "--no-deps", "-w", str(into), requirement, check=False)
    made = sorted(set(into.glob("*.whl")) - before)
    if done.returncode != 0 or not made:
        raise WheelhouseError(f"{requirement} has no wheel for the target and could not be built here: "
                              f"{_pip_error(done)}")
    if not made[0].name.endswith("-none-any.whl"):
        raise WheelhouseError(f"{requirement} has no wheel for the target (pip wheel here gives {made[0].name}, "
                              f"which runs on this machine only)")
    return made[0]


def resolve(requirements: list[str], target: list[str], constraints: Path, local: Path,
            report: Path, have: dict[str, Optional[str]]) -> dict:
    """pip's resolution of `requirements` for the target (its --report JSON), building the
    pure-Python wheels of requirements that have none into `local` as it goes."""
    built: set[str] = set()
    while True:
        done = _pip("install", "--dry-run", "--ignore-installed", "--report", str(report),
                    "--only-binary=:all:", *target, "-c", str(constraints), "--find-links", str(local),
                    *requirements, check=False)
        if done.returncode == 0:
            return json.loads(report.read_text())
        missing = {name: spec for name, spec in _unresolvable(done).items() if name not in built}
        if not missing:
            raise WheelhouseError(f"pip cannot resolve {' '.join(requirements)} for the target: {_pip_error(done)}")
        for name, spec in missing.items():
            if have.get(name):
                raise WheelhouseError(f"{spec} is needed, and the target has {name}=={have[name]}: no wheel set "
                                      f"works with its own {name}")
            _build_pure(spec, local)
            built.add(name)


def needed(report: dict, root: str, extras: list[str], have: dict[str, Optional[str]],
           environment: dict[str, str]) -> tuple[dict[str, dict], dict[str, Optional[str]], dict[str, str]]:
    """Walk the resolution from `root[extras]`, stopping at the target's own packages.

    Returns (the report's items to download, the target's packages they rely on, requirements
    that apply on the target but that pip left out: it evaluated markers for the Python it runs on)."""
    Requirement = _packaging()
    items = {canonical(item["metadata"]["name"]): item for item in report["install"]}
    take: dict[str, dict] = {}
    relies: dict[str, Optional[str]] = {}
    absent: dict[str, str] = {}
    todo = [(canonical(root), set(extras))]
    seen: dict[str, set[str]] = {}
    while todo:
        name, wanted = todo.pop()
        if name in seen and wanted <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | wanted
        item = items[name]
        take[name] = item
        for text in item["metadata"].get("requires_dist", []):
            req = Requirement(text)
            if req.marker is not None and not any(
                    req.marker.evaluate({**environment, "extra": extra}) for extra in (seen[name] or {""})):
                continue
            dep = canonical(req.name)
            if dep in have:
                relies[dep] = have[dep]
            elif dep in items:
                todo.append((dep, set(req.extras)))
            else:
                absent[dep] = text.split(";")[0].strip()
    return take, relies, absent


def make(out: Path, python_version: str, platform: str = DEFAULT_PLATFORM, have_file: Optional[str] = None,
         extras: tuple[str, ...] = ("jax",), budget_mb: float = DEFAULT_BUDGET_MB,
         source: Optional[Path] = None, work: Optional[Path] = None) -> dict:
    """Write the wheelhouse into `out` (its old wheels removed first) and return its manifest."""
    source = Path(source or Path(__file__).resolve().parent.parent)
    if not (source / "pyproject.toml").is_file():
        raise WheelhouseError(f"{source} is not a dreamlab checkout (no pyproject.toml): give --source")
    have = read_have(have_file)
    environment = marker_environment(python_version, platform)
    target = [f"--platform={p}" for p in platforms(platform)]
    target += [f"--python-version={python_version}", "--implementation=cp"]
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir=work) as tmp:
        tmp = Path(tmp)
        local = tmp / "built"
        local.mkdir()
        own = build_own_wheel(source, local)
        constraints = tmp / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(have.items()) if version))
        requirements = [f"dreamlab[{','.join(extras)}] @ {own.resolve().as_uri()}" if extras
                        else f"dreamlab @ {own.resolve().as_uri()}"]
        while True:
            report = resolve(requirements, target, constraints, local, tmp / "report.json", have)
            take, relies, absent = needed(report, "dreamlab", list(extras), have, environment)
            new = [spec for spec in absent.values() if spec not in requirements]
            if not new:
                break
            requirements += new  # markers that hold on the target only: resolve them too
        out.mkdir(parents=True, exist_ok=True)
        for old in list(out.glob("*.whl")) + [out / MANIFEST]:
            old.unlink(missing_ok=True)
        shutil.copy2(own, out / own.name)
        pins = [f"{item['metadata']['name']}=={item['metadata']['version']}"
                for name, item in sorted(take.items()) if name != "dreamlab"]
        if pins:
            _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", *target, "--find-links", str(local),
                 "-d", str(out), *pins)
    wheels = sorted(out.glob("*.whl"), key=lambda p: -p.stat().st_size)
    size = sum(p.stat().st_size for p in wheels)
    manifest = {
        "python_version": python_version, "platform": platform, "extras": list(extras),
        "have": os.path.basename(have_file) if have_file else None,
        "size_bytes": size, "budget_bytes": int(budget_mb * MB),
        "wheels": [{"file": p.name, "bytes": p.stat().st_size} for p in wheels],
        "relies_on": {name: version for name, version in sorted(relies.items())},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def describe(out: Path, manifest: dict) -> list[str]:
    wheels = manifest["wheels"]
    largest = ", ".join(f"{w['file'].split('-')[0]} {w['bytes'] / MB:.1f}" for w in wheels[:4])
    known = [f"{n} {v}" for n, v in manifest["relies_on"].items() if v]
    unknown = [n for n, v in manifest["relies_on"].items() if not v]
    return [
        f"{out}/: {len(wheels)} wheels, {manifest['size_bytes'] / MB:.1f} MB for Python "
        f"{manifest['python_version']} {manifest['platform']} (budget {manifest['budget_bytes'] / MB:.0f} MB; "
        f"largest, MB: {largest})",
        f"relies on the target's own: {', '.join(known) or 'nothing pinned'}"
        + (f"; and, at the version it has: {', '.join(unknown)}" if unknown else ""),
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamlab.wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", required=True, help="the target's Python, e.g. 3.12")
    parser.add_argument("--have", help="the target's package list (NAME==VERSION or NAME a line)")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help=f"the target's wheel platform ({DEFAULT_PLATFORM})")
    parser.add_argument("--extras", default="jax", help="dreamlab's extras to take, comma-separated (jax)")
    parser.add_argument("--out", default="wheelhouse", help="the folder to write (wheelhouse)")
    parser.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB,
                        help=f"fail when the wheels are larger (MB, default {DEFAULT_BUDGET_MB:.0f})")
    parser.add_argument("--source", help="dreamlab's checkout (default: the one this file is in)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.have and not Path(args.have).is_file():
            raise WheelhouseError(f"--have {args.have}: no such file (the target's `pip list --format=freeze`)")
        manifest = make(out, args.python_version, args.platform, args.have,
                        tuple(e for e in args.extras.split(",") if e), args.budget_mb,
                        Path(args.source) if args.source else None)
    except WheelhouseError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    for line in describe(out, manifest):
        print(line)
    if manifest["size_bytes"] > manifest["budget_bytes"]:
        print(f"dreamlab: error: {out}/ is {manifest['size_bytes'] / MB:.1f} MB, over the budget of "
              f"{args.budget_mb:.0f} MB (--budget-mb): list what the target already has in --have, or "
              f"raise --budget-mb", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
