"""What the dream maximises: a weighted sum of layer scores, written as a value.

`layers` is given as a preset name of the backbone (`tutorial`), a layer name (`mixed3`), a
list of names (weight 1 each), or a map `{layer: weight}` whose weight may also be
`{weight: W, channels: [i, j]}` to target chosen channels; weights may be negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import DreamlabError


@dataclass(frozen=True)
class Term:
    layer: str
    weight: float = 1.0
    channels: tuple[int, ...] = ()  # empty: every channel


@dataclass(frozen=True)
class Objective:
    terms: tuple[Term, ...]
    form: str = "mean_square"  # see DreamSettings.objective
    border: int = 0

    @property
    def layers(self) -> list[str]:
        return [t.layer for t in self.terms]

    def describe(self) -> str:
        parts = []
        for t in self.terms:
            ch = f"[{','.join(map(str, t.channels))}]" if t.channels else ""
            parts.append(f"{t.layer}{ch}:{t.weight:g}")
        return ",".join(parts)


def parse_layers(layers: Any, presets: Mapping[str, Mapping] | None = None) -> tuple[Term, ...]:
    """Terms from the `layers` option; a string is a preset name first, else a layer name."""
    presets = presets or {}
    if isinstance(layers, str):
        if layers in presets:
            return parse_layers(dict(presets[layers]))
        return (Term(layers),)
    if isinstance(layers, Mapping):
        terms = tuple(_term(str(name), value) for name, value in layers.items())
    elif isinstance(layers, Sequence):
        terms = tuple(Term(str(name)) for name in layers)
    else:
        raise DreamlabError(
            f"layers must be a layer or preset name, a list of layers or a {{layer: weight}} map, "
            f"not {layers!r} (for example layers=mixed3 or 'layers={{mixed3:1,mixed5:1.5}}')")
    if not terms:
        raise DreamlabError("layers is empty: name at least one layer (for example layers=mixed3)")
    return terms


def _term(layer: str, value: Any) -> Term:
    if isinstance(value, Mapping):
        unknown = set(value) - {"weight", "channels"}
        if unknown:
            raise DreamlabError(
                f"layers.{layer} has unknown keys {sorted(unknown)}: use weight and channels "
                f"(for example 'layers={{{layer}:{{weight:1,channels:[3,7]}}}}')")
        weight, channels = value.get("weight", 1.0), value.get("channels") or ()
    else:
        weight, channels = value, ()
    try:
        weight = float(weight)
        channels = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise DreamlabError(
            f"layers.{layer}: the weight must be a number and channels a list of integers "
            f"(for example 'layers={{{layer}:1.5}}')") from None
    return Term(layer, weight, channels)
