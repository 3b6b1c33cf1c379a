"""Quantization-aware training: `quantize` returns a copy of a model that
learns int8 ranges while it fine-tunes, for `export_tflite(...,
quantization="int8")`.

tf_keras only in this release (`tfopt.keras2.quantization`, over TFMOT);
a Keras 3 model is refused with what to do instead
(`tfopt.core.kerases.CAPABILITIES`). The tf_keras names this module held
before (`OutputQuantizeConfig`, ...) are still read from
`tfopt.keras2.quantization` for one release.
"""

from tfopt import legacy
from tfopt.core.kerases import require

__all__ = ["quantize"]


def quantize(
    model, *, layers=None, exclude=None, preserve_sparsity=False, skip_unsupported=True
):
    """Returns a quantization-aware (QAT) copy of `model` to fine-tune.

    Built on TFMOT's `quantize_annotate_layer` + `quantize_apply` with the
    default 8-bit scheme. Fine-tune it for an epoch or two, then
    `tfopt.export_tflite(..., quantization="int8")`.

    Args:
        model: A built Sequential or functional tf_keras model. Nested
            functional models are flattened. A model that still has pruning
            wrappers is stripped first (with a warning).
        layers: Layers to quantize: names, regular expressions or classes.
            Defaults to `None` (every layer).
        exclude: Layers to keep in float, in the same forms. Defaults to
            `None`.
        preserve_sparsity: Use TFMOT's prune-preserving scheme (PQAT), so the
            zeros of a pruned and stripped model survive fine-tuning.
            Defaults to `False`.
        skip_unsupported: Leave layers TFMOT cannot quantize (a Lambda, a
            BatchNormalization after an Add, ...) in float, listed in a warning
            and in `model.tfopt_skipped_layers`; with `False` they raise.
            Defaults to `True`.

    Returns:
        The QAT model, in float32 even under a mixed-precision policy, with
        `tfopt_skipped_layers`, a tuple of "name (Class)" strings of the
        layers left in float, and `tfopt_float_reasons`, a dict from their
        names to why.

    Raises:
        TypeError: If `model` is a Keras 3 model (not available yet: the
            capability table of `tfopt.core.kerases`), not a tf_keras
            Sequential/functional model, or an argument has the wrong type.
        ValueError: If a named layer does not exist, the model is already
            quantized, or (with `skip_unsupported=False`) a layer cannot be
            quantized.

    Example:

    >>> import tfopt
    >>> qat = tfopt.quantize(tfopt.models.build("tfmot_mnist", (8, 8), 10))
    >>> qat.tfopt_skipped_layers
    ()
    """
    require("quantize", model, "tfopt.quantize")
    from tfopt.keras2 import quantization as implementation

    return implementation.quantize(
        model, layers, exclude, preserve_sparsity, skip_unsupported
    )


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
