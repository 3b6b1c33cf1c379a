"""Whether a sparse TFLite file can take XNNPACK's sparse path, and why not.

XNNPACK runs a float model in its sparse (NCHW) layout only when all of
this holds (XNNPACK `src/subgraph.c`, `xnn_subgraph_rewrite_for_nchw`, and
TFLite's XNNPACK delegate; read 2026-11):
- the file holds sparse-encoded weights (the converter's
  `Optimize.EXPERIMENTAL_SPARSITY` encodes a weight with at least 30%
  zeros, behind a DENSIFY op), which is what makes the delegate ask for it;
- the values are float (int8 and dynamic-range files never qualify);
- the cluster starts at a 3x3, stride-2 convolution of the 3 image
  channels with one pixel of padding on every side: explicit, since
  TensorFlow's SAME padding at stride 2 is refused;
- every layer after it, up to a global average pooling, is one XNNPACK can
  run in that layout: 1x1 stride-1 convolutions, 3x3 or 5x5 depthwise
  convolutions (stride 2 only with explicit symmetric padding), adds,
  multiplies and activations;
- more than 2/3 of the 1x1 convolutions' weights are zeros, all together;
- the CPU is ARM or WebAssembly: on x86 with AVX, XNNPACK turns its sparse
  kernels off (dense is faster there), whatever the file.
"""

from typing import NamedTuple

import numpy as np

# Layers by class name, the same in both Kerases (so this module serves both
# without importing either). Ignored by the layout check: folded or free in
# TFLite.
_NEUTRAL = {
    "InputLayer",
    "BatchNormalization",
    "Dropout",
    "Identity",
    "Reshape",
    "Rescaling",
}
_ELEMENTWISE = {"ReLU", "Activation", "Add", "Multiply", "LeakyReLU", "ELU"}


def _kind(layer):
    return type(layer).__name__


NOTE = (
    "XNNPACK runs sparse kernels for float32 models on ARM and WebAssembly "
    "only: on x86 CPUs with AVX it turns them off, and int8 files never use "
    "them."
)


class SparseEligibility(NamedTuple):
    """What `export_tflite(..., sparse=True)` found about the file."""

    eligible: bool  # for XNNPACK's sparse path, on ARM/WebAssembly
    reasons: tuple  # why not, one sentence each
    sparse_1x1_fraction: float  # zeros over all 1x1 convolution weights
    densify_ops: int  # sparse-encoded weights in the file
    note: str = NOTE


def _explicit_padding(layer, previous, pixels):
    if layer.padding != "valid" or _kind(previous) != "ZeroPadding2D":
        return False
    return tuple(map(tuple, previous.padding)) == ((pixels, pixels), (pixels, pixels))


def _compatible(layer, previous):
    if _kind(layer) in _NEUTRAL | _ELEMENTWISE | {"ZeroPadding2D"}:
        return True
    if _kind(layer) == "DepthwiseConv2D":
        size = layer.kernel_size[0]
        if (
            layer.kernel_size != (size, size)
            or size not in (3, 5)
            or (layer.depth_multiplier != 1 or layer.dilation_rate != (1, 1))
        ):
            return False
        return layer.strides == (1, 1) or (
            layer.strides == (2, 2) and _explicit_padding(layer, previous, size // 2)
        )
    if _kind(layer) == "Conv2D":
        return (
            layer.kernel_size == (1, 1)
            and layer.strides == (1, 1)
            and (layer.groups == 1)
        )
    return False


def eligibility(layers, quantization, densify_ops):
    """`SparseEligibility` of the file converted from a model of either
    Keras whose layers, nested models flattened, are `layers` in order."""
    reasons = []
    if quantization in ("int8", "dynamic"):
        reasons.append(
            f"quantization={quantization!r}: XNNPACK's sparse path "
            "is for float models only."
        )
    if not densify_ops:
        reasons.append(
            "the converter encoded no weight as sparse (it needs at "
            "least 30% zeros in a weight)."
        )
    layers = [layer for layer in layers if _kind(layer) != "InputLayer"]
    convs = [
        i
        for i, layer in enumerate(layers)
        if _kind(layer) in ("Conv2D", "DepthwiseConv2D")
    ]
    zeros = total = 0
    if not convs:
        reasons.append("the model has no convolution.")
    else:
        first = convs[0]
        stem = layers[first]
        previous = layers[first - 1] if first else None
        if not (
            _kind(stem) == "Conv2D"
            and stem.kernel_size == (3, 3)
            and stem.strides == (2, 2)
            and stem.kernel.shape[-2] == 3
            and _explicit_padding(stem, previous, 1)
        ):
            reasons.append(
                f"the first convolution ({stem.name}) must be 3x3, stride 2, on 3 "
                "input channels, with one pixel of padding on every side "
                "(ZeroPadding2D(1) then padding='valid'); TensorFlow's SAME "
                "padding at stride 2 is not symmetric."
            )
        odd = []
        for i in range(first + 1, len(layers)):
            layer = layers[i]
            if _kind(layer) == "GlobalAveragePooling2D":
                break
            if not _compatible(layer, layers[i - 1]):
                odd.append(layer.name)
            elif _kind(layer) == "Conv2D":
                kernel = np.asarray(layer.kernel)
                zeros += int(np.sum(kernel == 0))
                total += kernel.size
        if odd:
            shown = ", ".join(odd[:5]) + (
                f" and {len(odd) - 5} more" if len(odd) > 5 else ""
            )
            reasons.append(f"layers XNNPACK cannot run in its sparse layout: {shown}.")
    fraction = zeros / total if total else 0.0
    if fraction * 3 <= 2:
        reasons.append(
            f"the 1x1 convolutions are {fraction:.0%} zeros; XNNPACK "
            "needs more than 2/3."
        )
    return SparseEligibility(not reasons, tuple(reasons), fraction, densify_ops)
