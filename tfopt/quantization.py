"""Quantization-aware training: `quantize` returns a copy of a model that
learns int8 ranges while it fine-tunes, for `export_tflite(...,
quantization="int8")`.

A tf_keras model goes to `tfopt.keras2.quantization` (over TFMOT), a
Keras 3 model to `tfopt.keras3.quantization` (tfopt's own, from Keras 3's
fake-quant op). The tf_keras names this module held
before (`OutputQuantizeConfig`, ...) are still read from
`tfopt.keras2.quantization` for one release.
"""

from tfopt import legacy
from tfopt.core.kerases import Keras, require

__all__ = ["quantize"]


def quantize(
    model, *, layers=None, exclude=None, preserve_sparsity=False, skip_unsupported=True
):
    """Returns a quantization-aware (QAT) copy of `model` to fine-tune.

    The copy computes what TFLite's int8 kernels will: int8 weights (per
    output channel for convolutions), BatchNormalization folded into the
    convolution before it, learned activation ranges, the fixed ranges of
    sigmoid/softmax. tf_keras: TFMOT's `quantize_annotate_layer` +
    `quantize_apply` with the default 8-bit scheme. Keras 3: tfopt's own
    layers (`tfopt.keras3.quantizers`), whose folded batch norms keep their
    moving statistics frozen. Fine-tune it for an epoch or two (its ranges
    are set by the first training batches), then
    `tfopt.export_tflite(..., quantization="int8")`.

    Args:
        model: A built Sequential or functional model of either Keras.
            Nested models are flattened (tf_keras) or quantized inside
            (Keras 3). A model that is still pruned is stripped first (with
            a warning).
        layers: Layers to quantize: names, regular expressions or classes.
            Defaults to `None` (every layer).
        exclude: Layers to keep in float, in the same forms. Defaults to
            `None`.
        preserve_sparsity: Use TFMOT's prune-preserving scheme (PQAT), so the
            zeros of a pruned and stripped model survive fine-tuning.
            Defaults to `False`.
        skip_unsupported: Leave layers that cannot be quantized (a Lambda, a
            LayerNormalization, ...) in float, listed in a warning
            and in `model.tfopt_skipped_layers`; with `False` they raise.
            Defaults to `True`.

    Returns:
        The QAT model, in float32 even under a mixed-precision policy, with
        `tfopt_skipped_layers`, a tuple of "name (Class)" strings of the
        layers left in float, and `tfopt_float_reasons`, a dict from their
        names to why.

    Raises:
        TypeError: If `model` is not a Sequential/functional model, or an
            argument has the wrong type.
        ValueError: If a named layer does not exist, the model is already
            quantized, or (with `skip_unsupported=False`) a layer cannot be
            quantized.

    Example:

    >>> import tfopt
    >>> qat = tfopt.quantize(tfopt.models.build("tfmot_mnist", (8, 8), 10))
    >>> qat.tfopt_skipped_layers
    ()
    """
    if require("quantize", model, "tfopt.quantize") is Keras.KERAS3:
        from tfopt.keras3 import quantization as implementation
    else:
        from tfopt.keras2 import quantization as implementation

    return implementation.quantize(
        model, layers, exclude, preserve_sparsity, skip_unsupported
    )


def quantization_aware(model):
    """Whether `model` (either Keras) is a QAT model `quantize` made."""
    if Keras.of(model) is Keras.KERAS3:
        from tfopt.keras3 import pruning, quantizers

        return quantizers.quantization_aware(pruning.flat_layers(model))
    from tfopt.keras2 import selection

    return selection.is_quantized(model)


# The tf_keras names this module held before (the QAT configs).
__getattr__ = legacy.moved(
    __name__,
    dict.fromkeys(
        (
            "InputRangeQuantizeConfig",
            "OUTPUT_ONLY",
            "OutputQuantizeConfig",
            "SAME_RANGE",
            "SigmoidQuantizeConfig",
        ),
        "tfopt.keras2.quantization",
    ),
)
