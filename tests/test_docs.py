"""The documentation: the site builds offline and strictly, its options table is the schema's,
and the README is a short page whose links all lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_site_builds_strictly_with_every_option_of_the_schema(tmp_path):
    from dreamlab.config import options

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    page = (tmp_path / "configuration.html").read_text()
    assert "<!-- options -->" not in page
    missing = [o.key for o in options() if f"<td><code>{o.key}</code></td>" not in page]  # a row each
    assert not missing, f"options missing from configuration.html: {missing}"


def test_the_readme_is_short_and_its_links_lead_to_files():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert relative, "the README links to no page"
    broken = [t for t in relative if not (ROOT / t).is_file()]
    assert not broken, f"README links to missing files: {broken}"


def test_the_docs_stand_on_their_own():
    """The repository carries its own description of the references; nothing outside it."""
    files = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").glob("*.md"))]
    leaks = [f.name for f in files if re.search(r"\.\./shared|shared/docs", f.read_text())]
    assert not leaks, f"these refer to files outside the repository: {leaks}"


def test_the_options_table_needs_no_tensorflow():
    """docs/hooks.py imports dreamlab.config: the site builds without loading TensorFlow."""
    code = ("import sys, dreamlab.config; dreamlab.config.options(); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]", loaded.stdout
