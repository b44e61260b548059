"""List a backbone's layers with their output shapes, marking the presets' layers.

    python -m dreamlab.layers backbone=mobilenet_v2 [backbone.weights=null] [grep=add]

Shapes are those of a 224 px input; layers whose output is a 4-D feature map can dream.
"""

from __future__ import annotations

import sys

from .errors import DreamlabError


def table(backbone: str, weights=None, grep: str = "") -> str:
    from . import backbones

    spec = backbones.spec(backbone)
    model = backbones.load(backbone, weights)
    marks: dict[str, list[str]] = {}
    for preset, layer_map in spec.presets.items():
        for layer in layer_map:
            marks.setdefault(layer, []).append(preset)
    rows = [f"{'layer':<28} {'output at 224 px':<22} presets"]
    for layer in model.layers:
        if grep and grep not in layer.name:
            continue
        at224 = _shape_at(model, layer.name)
        rows.append(f"{layer.name:<28} {at224:<22} {', '.join(marks.get(layer.name, []))}".rstrip())
    return "\n".join(rows)


def _shape_at(model, name: str, side: int = 224) -> str:
    import keras

    sub = keras.Model(model.inputs, model.get_layer(name).output)
    try:
        shape = sub.compute_output_shape((1, side, side, 3))
    except Exception:
        return "-"
    return "x".join(str(d) for d in shape[1:])


def main(argv: list[str]) -> int:
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(opts) - {"backbone", "backbone.weights", "backbone.path", "backbone.preprocess", "grep"}
    try:
        if unknown or len(opts) != len(argv):
            raise DreamlabError(f"unknown arguments {sorted(unknown) or argv}: use "
                                f"backbone=NAME [backbone.weights=imagenet|null|PATH] [grep=TEXT] "
                                f"(backbone=custom backbone.path=model.keras for your own model)")
        from . import backbones

        weights = opts.get("backbone.weights", "null")
        name = opts.get("backbone", "inception_v3")
        if name == backbones.CUSTOM:
            name = backbones.custom(opts.get("backbone.path", ""), opts.get("backbone.preprocess", "tf"))
        print(table(name, None if weights == "null" else weights, opts.get("grep", "")))
    except DreamlabError as exc:
        print(f"dreamlab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
