"""MkDocs hook: the options table of configuration.md, generated from the typed schema.

The schema (`dreamlab.config.options()`) is the one place an option, its type, its default
and its meaning are written, so the site cannot drift from the code. Importing
`dreamlab.config` imports neither TensorFlow nor MLflow, so the build stays fast.
"""

from __future__ import annotations

from mkdocs.exceptions import PluginError

MARKER = "<!-- options -->"
PAGE = "configuration.md"


def _cell(text: str) -> str:
    """Plain text as one Markdown table cell: pipes would split the cell, and `*`, `_` or `<`
    in a formula (`scale**i`, `0.5*sum(a^2)`) would turn into emphasis or HTML."""
    for char in ("\\", "|", "*", "_", "`", "["):
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;")


def _code(text: str) -> str:
    """A value as inline code; an empty default shows as ''."""
    if text == "":
        return "`''`"
    if "`" in text or "|" in text:  # would close the code span or split the cell
        return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "&#124;") + "</code>"
    return f"`{text}`"


def options_table() -> str:
    from dreamlab.config import options

    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| {_code(o.key)} | {_code(o.type)} | {_code(o.default)} | {_cell(o.help)} |" for o in options()]
    by_role: dict[str, list[str]] = {}
    for o in options():
        by_role.setdefault(o.role, []).append(f"`{o.key}`")
    notes = [f"Role `{role}`: {', '.join(keys)}." for role, keys in by_role.items() if role != "work"]
    return "\n".join(rows) + ("\n\n" + "\n\n".join(notes) if notes else "") + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:  # the table would silently vanish from the site
        raise PluginError(f"docs/{PAGE} has lost its {MARKER} marker, where the options table goes")
    return markdown.replace(MARKER, options_table())
