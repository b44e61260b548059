"""The typed schema is the one source of every option's meaning and role: the resume
fingerprint, `compare`, `reproduce`'s environment check, `--help` and the docs all follow it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from dreamlab import config, settings, tracking
from dreamlab.config import PLACE, Config, Environment, option


@pytest.fixture
def extended(monkeypatch):
    """The schema with two new fields, one that shapes the picture and one that does not, and
    a new place tag: what a developer adding a knob writes, and nothing else."""

    @dataclasses.dataclass
    class Extended(Config):
        lens: float = option(1.0, "a new knob that changes the picture")
        colour_of_the_log: str = option("blue", "a new knob that only changes how a run is shown", role=PLACE)

    @dataclasses.dataclass
    class MoreEnvironment(Environment):
        rack: str = option("", "the rack the job ran in", role=PLACE)

    monkeypatch.setattr(config, "Config", Extended)
    monkeypatch.setattr(config, "Environment", MoreEnvironment)
    return Extended


def test_every_field_has_a_one_line_meaning_and_a_role():
    for schema in (Config, Environment):
        for o in config.options(schema):
            assert o.help and "\n" not in o.help and o.role in settings.ROLES, o
    keys = [o.key for o in config.options()]
    assert "backbone.weights" in keys and "mlflow.tracking_uri" in keys and len(keys) == len(set(keys))
    assert {o.key for o in config.options() if o.role == PLACE} == {
        "resume", "progress", "threads", "from_run", "mlflow.tracking_uri", "mlflow.experiment", "mlflow.enabled"}


def test_a_new_field_reaches_the_fingerprint_compare_and_place_tags(extended):
    resolved = {"octaves": 4, "lens": 1.0, "colour_of_the_log": "blue", "image": "a.png",
                "mlflow": {"experiment": "x", "tracking_uri": "sqlite:///a.db"}, "progress": True}

    def fp(**changes):
        return tracking.fingerprint({**resolved, **changes}, "google", "sha-a", "none", "w")

    assert fp() != fp(lens=2.0) and fp() != fp(octaves=5)           # work keys shape the picture
    assert fp() == fp(colour_of_the_log="red") == fp(progress=False)  # place keys do not
    assert fp() == fp(image="moved/a.png")  # the photo counts by its content (sha), not its path
    assert fp() == fp(mlflow={"experiment": "y", "tracking_uri": "sqlite:///b.db"})

    runs = [SimpleNamespace(data=SimpleNamespace(params=p)) for p in (
        {"lens": "1.0", "colour_of_the_log": "blue", "mlflow.experiment": "x", "octaves": "4"},
        {"lens": "2.0", "colour_of_the_log": "red", "mlflow.experiment": "y", "octaves": "4"})]
    from dreamlab import compare

    assert compare.varying(runs) == ["lens"]
    assert "env.rack" in config.place_tags() and "env.device" in config.place_tags()
    assert "env.cpu" not in config.place_tags()
    assert "lens" in config.options_help() and "colour_of_the_log" in config.options_help()


def test_every_env_tag_a_run_gets_is_declared_in_the_schema():
    import json
    import subprocess
    import sys

    declared = {f"env.{f.name}" for f in dataclasses.fields(Environment)}
    # In a process of its own: TensorFlow's thread pools are set once per process.
    code = ("import json; from dreamlab import slots, tracking; "
            "print(json.dumps(sorted(set(tracking.environment()) | set(slots.configure(None, 1)[0]))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    made = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "env.cpu" in made and "env.device" in made
    assert made <= declared, made - declared


def test_help_lists_every_option_with_its_meaning():
    from conftest import ROOT, run_cli

    proc = run_cli(["--help"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for o in config.options():
        line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith(o.key + " ")), None)
        assert line is not None and o.help in line, o.key
