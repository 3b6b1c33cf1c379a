"""Quantization-aware training: `quantize` returns a copy of a model that
learns int8 ranges while it fine-tunes, for `export_tflite(...,
quantization="int8")`.

tf_keras only in this release (`tfopt.keras2.quantization`, over TFMOT);
a Keras 3 model is refused with what to do instead
(`tfopt.core.kerases.CAPABILITIES`). The tf_keras names this module held
before (`OutputQuantizeConfig`, ...) are still read from
`tfopt.keras2.quantization` for one release.
"""

from tfopt.core.kerases import require

__all__ = ["quantize"]


def quantize(
    model, *, layers=None, exclude=None, preserve_sparsity=False, skip_unsupported=True
):
    """Returns a quantization-aware (QAT) copy of `model` to fine-tune.

    See `tfopt.keras2.quantization.quantize` for the arguments and what is
    returned.

    Raises:
        TypeError: For a Keras 3 model (not available yet), a model that is
            not a Sequential/functional tf_keras model, or a bad argument.
        ValueError: For a bad value, named with it.

    Example:

    >>> import tfopt
    >>> qat = tfopt.quantize(tfopt.models.build("tfmot_mnist", (8, 8), 10))
    >>> qat.tfopt_skipped_layers
    ()
    """
    require("quantize", model, "tfopt.quantize")
    from tfopt.keras2 import quantization as implementation

    return implementation.quantize(
        model,
        layers=layers,
        exclude=exclude,
        preserve_sparsity=preserve_sparsity,
        skip_unsupported=skip_unsupported,
    )


def __getattr__(name):
    import importlib

    legacy = importlib.import_module("tfopt.keras2.quantization")
    if name.startswith("__") or not hasattr(legacy, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(legacy, name)
