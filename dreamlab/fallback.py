"""What `make dream` and `make sweep` add to the command line when InceptionV3's ImageNet
weights cannot be had: `backbone=mobilenet_v2 backbone.weights=bundled`, the trained network
shipped inside dreamlab (dreamlab/data/README.md).

    python -m dreamlab.fallback   # the overrides on stdout (nothing when InceptionV3 works),
                                  # the reason in one line on stderr

Only these two make targets, a newcomer's first commands, fall back: `python -m dreamlab`
runs the experiment it is given, or fails saying what to do, and never swaps a backbone.
The check costs no TensorFlow import: the weights file in the Keras cache, else a HEAD
request to Keras' download address with a 5 s timeout.
"""

from __future__ import annotations

import os
import sys
import urllib.request

# keras.applications.inception_v3's no-top weights: the file name in the Keras cache and
# its download address (Keras 3).
FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + FILE
OVERRIDES = "backbone=mobilenet_v2 backbone.weights=bundled"


def cached() -> bool:
    from .internals import keras_download_dir

    return os.path.isfile(os.path.join(keras_download_dir("models"), FILE))


def unreachable(timeout: float = 5.0) -> str | None:
    """None when the weights can be downloaded, else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(ORIGIN, method="HEAD"), timeout=timeout) as answer:
            return None if answer.status == 200 else f"HTTP {answer.status}"
    except Exception as exc:  # DNS, refused, timeout, proxy, TLS: all mean "not here"
        return str(getattr(exc, "reason", exc)) or type(exc).__name__


def main() -> int:
    if cached():
        return 0
    reason = unreachable()
    if reason is None:
        return 0
    print(f"dreamlab: InceptionV3's ImageNet weights are not in the Keras cache and cannot be "
          f"downloaded here ({reason}): dreaming with the bundled MobileNetV2 ({OVERRIDES})",
          file=sys.stderr)
    print(OVERRIDES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
