"""conf/ is the package dreamlab.conf once installed (pyproject.toml maps it), so Hydra finds
the config through its package search path, pkg://dreamlab.conf, from any folder."""
