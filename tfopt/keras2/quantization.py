"""Quantization-aware training: one call over TFMOT's 8-bit QAT.

`quantize` annotates every layer TFMOT can quantize and leaves the rest in
float (listing them), flattens nested models, keeps pruned zeros with
`preserve_sparsity=True`, builds the QAT model in float32 whatever the
Keras precision policy, and makes the learned activation ranges independent
of the number of replicas (`keras2.tfmot.GlobalRangeMovingAverageQuantizer`).
Tensors TFLite must give one int8 scale (a chain of concatenations, pools
and paddings) share one range (`tfopt.keras2.ranges`), so the file needs no rescale.

TFMOT itself is left as it is: the fixes are tfopt subclasses that
`keras2.tfmot.adopt` gives to the layers of the models `quantize` returns.
"""

import contextlib
import functools
import warnings

import tensorflow_model_optimization as tfmot

from tfopt.core import checks
from tfopt.keras2 import (
    binding,
    graph,
    pruning,
    ranges,
    rewrite,
    selection,
)
from tfopt.keras2 import (
    tfmot as _tfmot,
)
from tfopt.keras2.binding import keras

__all__ = [
    "OUTPUT_ONLY",
    "SAME_RANGE",
    "InputRangeQuantizeConfig",
    "OutputQuantizeConfig",
    "SigmoidQuantizeConfig",
    "quantize",
]

_qat = tfmot.quantization.keras


@keras.utils.register_keras_serializable(package="tfopt")
class OutputQuantizeConfig(_qat.QuantizeConfig):
    """Quantizes a layer's output only, as TFMOT's registry does for `Add`.

    For the layers without weights that TFLite runs in int8 but TFMOT's
    8-bit registry leaves out (`OUTPUT_ONLY`): element-wise merges such as
    squeeze-excite's `Multiply`, hard-swish's arithmetic (`ScalarOp`), and
    `Rescaling`/`Normalization` that are not over an image's channels.
    Without an output range each stays a float island between a DEQUANTIZE
    and a QUANTIZE in the int8 file.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [
            _qat.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False
            )
        ]

    def get_config(self):
        return {}


@keras.utils.register_keras_serializable(package="tfopt")
class InputRangeQuantizeConfig(OutputQuantizeConfig):
    """No range of its own: the output keeps its input's quantization.

    TFLite's int8 AVERAGE_POOL_2D requires its output scale to equal its
    input's; TFMOT's registry gives `AveragePooling` an output range of its
    own, which the converter then rejects ("quantization parameters violate
    the same scale constraint") wherever the input has a range too, as
    after DenseNet's transition convolutions.
    """

    def get_output_quantizers(self, layer):
        return []


@keras.utils.register_keras_serializable(package="tfopt")
class SigmoidQuantizeConfig(OutputQuantizeConfig):
    """A sigmoid's output range as TFLite's int8 LOGISTIC has it: [0, 255/256]
    in steps of 1/256.

    TFMOT quantizes a sigmoid's input only, so its QAT model computed with
    exact sigmoid values where the int8 file rounds them; with 16
    squeeze-excite gates and 49 swishes (x * sigmoid(x)), EfficientNetB0's
    file and QAT model disagreed by 1-2 points of accuracy.
    """

    def get_output_quantizers(self, layer):
        return [
            _qat.quantizers.FixedQuantizer(
                num_bits=8, init_min=0.0, init_max=255 / 256, narrow_range=False
            )
        ]


def _is_sigmoid(layer):
    return isinstance(layer, keras.layers.Activation) and (
        layer.get_config()["activation"] == "sigmoid"
    )


SAME_RANGE = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)

# Layers quantized with OutputQuantizeConfig when the scheme's registry does
# not support them; TFLite has int8 kernels for all of them. (Image
# Rescaling/Normalization become 1x1 depthwise convolutions first, and
# `x + 3.0`-style TFOpLambdas ScalarOps: see `tfopt.keras2.rewrite`.)
OUTPUT_ONLY = (
    keras.layers.Multiply,
    keras.layers.Subtract,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Average,
    keras.layers.Rescaling,
    keras.layers.Normalization,
    rewrite.ScalarOp,
)
# Layers outside the registry that the scheme's layout transforms rewrite
# into quantizable ones (as raw quantize_model does): BatchNormalization is
# folded into a preceding Conv/Dense, a separable convolution becomes a
# depthwise and a pointwise one.
_TRANSFORMED = (
    keras.layers.BatchNormalization,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def _why_float(layer):
    """Why `tfopt.quantize` leaves `layer` in float, for its warning."""
    if isinstance(layer, keras.layers.LayerNormalization):
        return (
            "TFLite has no int8 layer-norm kernel, and its MEAN/RSQRT "
            "decomposition has no ranges"
        )
    if type(layer).__name__ in ("Lambda", "TFOpLambda"):
        return "arbitrary TensorFlow code that TFMOT cannot quantize"
    if isinstance(layer, _TRANSFORMED):
        return "TFMOT cannot fold it into a neighbouring layer"
    if not type(layer).__module__.startswith("tf_keras"):
        return "a custom layer: annotate it with a tfmot QuantizeConfig"
    return "not in TFMOT's 8-bit registry"


@functools.cache
def _registry():
    """The default 8-bit registry: it decides what is supported, for both
    schemes (the prune-preserving one takes its configs from it). One, made
    on first use: `supports` is asked for every layer of every model."""
    return _qat.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()


_PrunePreserve = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme


class _PrunePreserveRegistry(type(_PrunePreserve().get_quantize_registry())):
    """TFMOT's prune-preserving registry, except that `supports` answers as
    the default 8-bit one. TFMOT's says yes to every layer without trainable
    weights (a Lambda, InceptionResNetV2's CustomScaleLayer) and then fails
    to give it a config ("called on an unsupported layer"), also for layers
    `quantize_apply` only looks at because an annotated layer follows."""

    def supports(self, layer):
        return _registry().supports(layer)


class _PrunePreserveScheme(_PrunePreserve):
    def get_quantize_registry(self):
        return _PrunePreserveRegistry()


def _scheme(preserve_sparsity):
    if preserve_sparsity:
        # (TFMOT's prune-preserving configs know only its own config classes:
        # depthwise kernels keep one range here.)
        return _PrunePreserveScheme()
    return _tfmot.Default8BitQuantizeScheme()


@contextlib.contextmanager
def _float32_policy():
    # QAT's fake-quant ops and range variables are float32: build the QAT
    # model under a float32 policy even when the global one is mixed.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _apply(base, annotated, scheme):
    registry = _registry()

    def annotate(layer):
        if layer.name not in annotated:
            return layer
        if isinstance(layer, SAME_RANGE):
            return _qat.quantize_annotate_layer(layer, InputRangeQuantizeConfig())
        if _is_sigmoid(layer):
            return _qat.quantize_annotate_layer(layer, SigmoidQuantizeConfig())
        if isinstance(layer, OUTPUT_ONLY) and not registry.supports(layer):
            return _qat.quantize_annotate_layer(layer, OutputQuantizeConfig())
        return _qat.quantize_annotate_layer(layer)

    with _qat.quantize_scope(), graph.rebuilding(base):
        marked = keras.models.clone_model(base, clone_function=annotate)
        return _tfmot.adopt(_qat.quantize_apply(marked, scheme))


def _rejected(error, annotated):
    """The annotated layer TFMOT's error says it cannot quantize, if any."""
    named = [name for name in annotated if f"Layer {name}:" in str(error)]
    return max(named, key=len) if named else None


def quantize(model, layers, exclude, preserve_sparsity, skip_unsupported):
    """`tfopt.quantize` of a tf_keras model (the front, `tfopt.quantization`,
    documents the arguments): TFMOT's `quantize_annotate_layer` +
    `quantize_apply` with the default 8-bit scheme, after the rewrites of
    `tfopt.keras2.rewrite`."""
    binding.check_model(model)
    selection.check_graph_model(model, "quantization")
    selection.check_specs(layers, "layers")
    selection.check_specs(exclude, "exclude")
    checks.check_bool(preserve_sparsity, "preserve_sparsity")
    checks.check_bool(skip_unsupported, "skip_unsupported")
    if binding.frozen(model):
        warnings.warn(
            "quantize: "
            + binding.frozen_message(
                model, "model", "QAT fine-tuning would learn only the ranges"
            ),
            UserWarning,
            stacklevel=2,
        )
    if selection.is_quantized(model):
        raise ValueError(
            "`model` is already quantization-aware: fine-tune it, or export "
            f"it with tfopt.export_tflite. Received: model={model.name!r}"
        )
    if pruning.wrappers(model):
        hint = (
            ""
            if preserve_sparsity
            else (" Pass preserve_sparsity=True to keep its zeros through QAT.")
        )
        warnings.warn(
            "quantize: `model` still has pruning wrappers; stripping them "
            f"(tfopt.strip) before QAT.{hint}",
            UserWarning,
            stacklevel=2,
        )
        model = pruning.strip(model)

    scheme, registry = _scheme(preserve_sparsity), _registry()
    with _float32_policy():
        base = rewrite.quantizable_copy(model)
        chosen = selection.chosen_layers(base, layers, exclude)
        # Other layers outside the registry cannot be quantized. TFMOT says
        # which transformed ones (e.g. a BN after an Add) it could not.
        annotated = {
            layer.name
            for layer in chosen
            if registry.supports(layer) or isinstance(layer, _TRANSFORMED + OUTPUT_ONLY)
        }
        # Its groups are of `base`, the same for every try below.
        scheme = ranges.SharedRangeScheme(scheme, base, InputRangeQuantizeConfig)
        while True:
            try:
                qat = _apply(base, annotated, scheme)
                break
            except RuntimeError as error:
                name = _rejected(error, annotated)
                if name is None:
                    raise
                annotated.discard(name)
    left = [layer for layer in chosen if layer.name not in annotated]
    skipped = tuple(f"{layer.name} ({type(layer).__name__})" for layer in left)
    reasons = {layer.name: _why_float(layer) for layer in left}
    if skipped and not skip_unsupported:
        raise ValueError(
            f"TFMOT cannot quantize these layers: {list(skipped)}. Exclude them, "
            "or pass skip_unsupported=True to leave them in float. "
            "Received: skip_unsupported=False"
        )
    if skipped:
        why = "; ".join(f"{layer.name}: {reasons[layer.name]}" for layer in left)
        warnings.warn(
            f"quantize: TFMOT cannot quantize {list(skipped)}; they stay in float "
            f"({why}).",
            UserWarning,
            stacklevel=2,
        )
    qat.tfopt_skipped_layers = skipped
    qat.tfopt_float_reasons = reasons
    return qat
