"""The TFMOT internals tfopt needs, isolated here.

TFMOT's public API (`tfmot.sparsity.keras`, `tfmot.quantization.keras`) does
not export the pruning wrapper class (needed for `isinstance` checks on
models pruned by TFMOT itself), a way to ask which weights of a layer it
would prune, the input `QuantizeLayer`, nor a hook into how QAT collects
activation ranges (which is wrong under distribution). All live in
`tensorflow_model_optimization.python.*`; this is the only module that
imports from there. Nothing here changes TFMOT itself: tfopt's fixes are
subclasses given to the layers of tfopt's own models (`adopt`).
"""

import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_layer,
    quantize_wrapper,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as _registry8,
)
from tensorflow_model_optimization.python.core.sparsity.keras import (
    prune_registry,
    pruning_wrapper,
)

from tfopt.keras2.binding import keras

sparsity = tfmot.sparsity.keras

# The class of every pruning wrapper, TFMOT's own and tfopt's subclass.
PruneLowMagnitudeBase = pruning_wrapper.PruneLowMagnitude


def prunable_weights(layer):
    """Returns the weights TFMOT would prune in a built `layer`, or [].

    A registry-supported layer gets TFMOT's `get_prunable_weights` method
    attached, exactly as wrapping it would.
    """
    if not hasattr(layer, "get_prunable_weights"):
        if not prune_registry.PruneRegistry.supports(layer):
            return []
        layer = prune_registry.PruneRegistry.make_prunable(layer)
    return list(layer.get_prunable_weights())


def quantized_prunable_variables(wrapper):
    """The variables a QAT `wrapper` holds for its layer's prunable weights.

    The wrapper replaces `layer.kernel` with its fake-quantized tensor (and
    the layer stops tracking it), so they are found among the wrapper's
    variables, by the attribute names TFMOT's pruning registry lists.
    """
    if not prune_registry.PruneRegistry.supports(wrapper.layer):
        return []
    names = prune_registry.PruneRegistry._weight_names(wrapper.layer)
    return [v for v in wrapper.weights if v.name.split("/")[-1].split(":")[0] in names]


def _global_extremes(inputs, per_channel, context):
    """Min and max of `inputs` over the global batch, gathered from replicas."""
    axes = list(range(inputs.shape.rank - 1)) if per_channel else None
    local = tf.stack(
        [tf.reduce_min(inputs, axis=axes), tf.reduce_max(inputs, axis=axes)]
    )
    gathered = context.all_gather(local[None], axis=0)
    return tf.reduce_min(gathered[:, 0], axis=0), tf.reduce_max(gathered[:, 1], axis=0)


class _GlobalRange:
    """A range-collecting quantizer that, under a strategy with several
    replicas, sees the global batch's min and max.

    TFMOT computes the batch min/max on each replica's slice and then averages
    the range updates across replicas (TFMOT issue #1068), so the learned
    ranges depend on the replica count. Two rows holding the global min and
    max are appended to the batch the quantizer sees (its reductions then
    return the global values) and cut from its output, which is elementwise.
    """

    def __call__(self, inputs, training, weights, **kwargs):
        context = tf.distribute.get_replica_context()
        if training is False or context is None or context.num_replicas_in_sync == 1:
            return super().__call__(inputs, training, weights, **kwargs)
        per_channel = bool(self.per_axis) and inputs.shape.rank in (2, 4)
        low, high = _global_extremes(inputs, per_channel, context)
        row = tf.shape(inputs)[1:]
        extremes = tf.stop_gradient(
            tf.stack([tf.broadcast_to(low, row), tf.broadcast_to(high, row)])
        )
        out = super().__call__(
            tf.concat([inputs, tf.cast(extremes, inputs.dtype)], 0),
            training,
            weights,
            **kwargs,
        )
        return out[:-2]


_quantizers = tfmot.quantization.keras.quantizers


@keras.utils.register_keras_serializable(package="tfopt")
class GlobalRangeMovingAverageQuantizer(
    _GlobalRange, _quantizers.MovingAverageQuantizer
):
    """TFMOT's `MovingAverageQuantizer`, with replica-count-independent ranges."""


@keras.utils.register_keras_serializable(package="tfopt")
class GlobalRangeAllValuesQuantizer(_GlobalRange, _quantizers.AllValuesQuantizer):
    """TFMOT's `AllValuesQuantizer`, with replica-count-independent ranges."""


# Weights use LastValueQuantizer, which sees the whole, identical weight
# tensor on every replica and needs no change.
_GLOBAL_RANGE = {
    _quantizers.MovingAverageQuantizer: GlobalRangeMovingAverageQuantizer,
    _quantizers.AllValuesQuantizer: GlobalRangeAllValuesQuantizer,
}


def _global_range(quantizer):
    cls = _GLOBAL_RANGE.get(type(quantizer))
    return quantizer if cls is None else cls.from_config(quantizer.get_config())


def _use_global_ranges(layer):
    """Replaces the activation quantizers a built QAT layer holds by their
    global-range versions, in this layer only.

    TFMOT offers no hook for the quantizers its transforms and wrappers
    create, so they are replaced where the wrapper keeps them: its
    quantize_config, the QuantizeAwareActivations and the output quantizers
    (new objects: nothing shared with other models changes).
    """
    if isinstance(layer, quantize_layer.QuantizeLayer):
        layer.quantizer = _global_range(layer.quantizer)  # None stays None
        return
    config = layer.quantize_config
    for name, value in vars(config).items():
        if type(value) in _GLOBAL_RANGE:
            setattr(config, name, _global_range(value))
    for activation in layer._quantize_activations:
        activation.quantizer = _global_range(activation.quantizer)
    layer._output_quantizers = [_global_range(q) for q in layer._output_quantizers]


@keras.utils.register_keras_serializable(package="tfopt")
class QuantizeLayer(quantize_layer.QuantizeLayer):
    """TFMOT's input `QuantizeLayer`, with global-range quantizers and a
    `.keras` round trip.

    TFMOT's `build` never marks the layer built, so loading a `.keras` file
    builds it twice (once from its build config, once when the graph is
    called) and fails with "Layer 'quantize_layer' expected 5 variables, but
    received 3".
    """

    def build(self, input_shape):
        super().build(input_shape)
        _use_global_ranges(self)
        self.built = True


@keras.utils.register_keras_serializable(package="tfopt")
class QuantizeWrapperV2(quantize_wrapper.QuantizeWrapperV2):
    """TFMOT's `QuantizeWrapperV2`, with global-range quantizers and one
    consistent variable list in the `.keras` format.

    Without the list fix a saved QAT model fails to load with "Layer
    'quant_conv2d' expected 6 variables, but received 8".
    """

    def build(self, input_shape):
        super().build(input_shape)
        _use_global_ranges(self)

    def _own_variables(self):
        # The wrapper's variable lists hold the kernel twice (and the bias)
        # when it was built by quantize_apply, but once (and no bias) when
        # built from a saved config; the inner layer saves the bias itself.
        # Unique, minus the inner layer's, in list order, is the same in both.
        inner = {id(v) for v in self.layer.weights}
        unique = {
            id(v): v
            for v in self._trainable_weights + self._non_trainable_weights
            if id(v) not in inner
        }
        return list(unique.values())

    def save_own_variables(self, store):
        for index, variable in enumerate(self._own_variables()):
            store[f"{index}"] = variable.numpy()

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expected {len(variables)} variables, but "
                f"the file holds {len(store.keys())}: it was not saved from a "
                "model of tfopt.quantize."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[f"{index}"])


@keras.utils.register_keras_serializable(package="tfopt")
class DepthwiseKernelQuantizer(_quantizers.LastValueQuantizer):
    """8-bit symmetric quantizer with one range per output channel of a
    depthwise kernel (kh, kw, channels, multiplier), as TFLite quantizes it.

    TFMOT's per-axis weight quantizer takes the kernel's last axis, the
    channel multiplier (1): one range for all channels. The int8 file is
    then more precise than the QAT model that simulates it, and the two
    disagree (EfficientNetB0 on mnist5k: 71.7% QAT, 73.3% int8).
    """

    def __init__(self, **kwargs):  # the settings are fixed: TFLite's
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        channels = tensor_shape[2] * tensor_shape[3]
        return {
            key: layer.add_weight(
                f"{name}_{key[:3]}",
                shape=(channels,),
                trainable=False,
                initializer=keras.initializers.Constant(value),
            )
            for key, value in (("min_var", -6.0), ("max_var", 6.0))
        }

    def __call__(self, inputs, training, weights, **kwargs):
        # Output channel c * multiplier + m is TFLite's channel order too
        # (TFMOT's per-channel op takes rank 2 or 4).
        shape = inputs.shape
        flat = tf.reshape(inputs, [shape[0], shape[1], 1, shape[2] * shape[3]])
        return tf.reshape(super().__call__(flat, training, weights, **kwargs), shape)

    def get_config(self):
        return {}


@keras.utils.register_keras_serializable(package="tfopt")
class DepthwiseQuantizeConfig(_registry8.Default8BitConvQuantizeConfig):
    """TFMOT's config for DepthwiseConv2D, with `DepthwiseKernelQuantizer`."""

    def __init__(
        self,
        weight_attrs=("depthwise_kernel",),
        activation_attrs=("activation",),
        quantize_output=False,
    ):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseKernelQuantizer()


class Default8BitQuantizeRegistry(_registry8.Default8BitQuantizeRegistry):
    """TFMOT's 8-bit registry, with per-channel depthwise kernels."""

    def get_quantize_config(self, layer):
        if type(layer) is keras.layers.DepthwiseConv2D:
            return DepthwiseQuantizeConfig()
        return super().get_quantize_config(layer)


class Default8BitQuantizeScheme(
    tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme
):
    """TFMOT's default 8-bit scheme with tfopt's registry."""

    def get_quantize_registry(self):
        return Default8BitQuantizeRegistry()


# TFMOT's class -> tfopt's subclass, for the layers quantize_apply makes.
_ADOPTED = {
    quantize_layer.QuantizeLayer: QuantizeLayer,
    quantize_wrapper.QuantizeWrapperV2: QuantizeWrapperV2,
}
# Names under which TFMOT's classes appear in saved models.
RAW_NAMES = {raw.__name__: ours for raw, ours in _ADOPTED.items()}


def adopt(model):
    """Turns the QAT layers `quantize_apply` made in `model` into tfopt's
    subclasses, in place; returns `model`.

    quantize_apply builds TFMOT's own classes, and TFMOT has no option to
    build others; re-creating the layers from their configs would change
    their variable lists. So each built layer object of this one model gets
    tfopt's subclass (which adds no state) and global-range quantizers.
    """
    for layer in model.layers:
        cls = _ADOPTED.get(type(layer))
        if cls is not None:
            object.__setattr__(layer, "__class__", cls)
            _use_global_ranges(layer)
    return model
