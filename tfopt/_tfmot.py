"""The TFMOT internals tfopt needs, isolated here.

TFMOT's public API (`tfmot.sparsity.keras`, `tfmot.quantization.keras`) does
not export the pruning wrapper class (needed for `isinstance` checks on
models pruned by TFMOT itself), a way to ask which weights of a layer it
would prune, nor a hook into how QAT collects activation ranges (which is
wrong under distribution). All live in `tensorflow_model_optimization.python.*`;
this is the only module that imports from there.
"""

import functools

import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import (
    quant_ops,
    quantize_layer,
    quantize_wrapper,
)
from tensorflow_model_optimization.python.core.sparsity.keras import (
    prune_registry,
    pruning_wrapper,
)

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
    return [v for v in wrapper.weights
            if v.name.split("/")[-1].split(":")[0] in names]


def _global_extremes(inputs, per_channel, context):
    """Min and max of `inputs` over the global batch, gathered from replicas."""
    axes = list(range(inputs.shape.rank - 1)) if per_channel else None
    local = tf.stack([tf.reduce_min(inputs, axis=axes),
                      tf.reduce_max(inputs, axis=axes)])
    gathered = context.all_gather(local[None], axis=0)
    return tf.reduce_min(gathered[:, 0], axis=0), tf.reduce_max(gathered[:, 1], axis=0)


def _replica_consistent(range_quantize):
    """Wraps a TFMOT range-collecting quantize op so that, under a strategy
    with several replicas, it sees the global batch's min and max.

    TFMOT computes the batch min/max on each replica's slice and then averages
    the range updates across replicas (TFMOT issue #1068), so the learned
    ranges depend on the replica count. Two rows holding the global min and
    max are appended to the batch the op sees (its reductions then return the
    global values) and cut from its output, which is elementwise.
    """

    @functools.wraps(range_quantize)
    def quantize(inputs, min_var, max_var, *args, **kwargs):
        context = tf.distribute.get_replica_context()
        if (kwargs.get("is_training", True) is False or context is None
                or context.num_replicas_in_sync == 1):
            return range_quantize(inputs, min_var, max_var, *args, **kwargs)
        per_channel = bool(kwargs.get("per_channel")) and inputs.shape.rank in (2, 4)
        low, high = _global_extremes(inputs, per_channel, context)
        row = tf.shape(inputs)[1:]
        extremes = tf.stop_gradient(tf.stack([tf.broadcast_to(low, row),
                                              tf.broadcast_to(high, row)]))
        out = range_quantize(tf.concat([inputs, tf.cast(extremes, inputs.dtype)], 0),
                             min_var, max_var, *args, **kwargs)
        return out[:-2]

    quantize.tfopt_replica_consistent = True
    return quantize


def make_quantizer_ranges_replica_consistent():
    """Patches TFMOT's activation-range ops; idempotent.

    `MovingAverageQuantizer` and `AllValuesQuantizer` look these functions up
    on the `quant_ops` module at call time, so replacing them there reaches
    every QAT model (weights use `LastValueQuantize`, which sees the whole,
    identical weight tensor on every replica and needs no change).
    """
    for name in ("MovingAvgQuantize", "AllValuesQuantize"):
        op = getattr(quant_ops, name)
        if not getattr(op, "tfopt_replica_consistent", False):
            setattr(quant_ops, name, _replica_consistent(op))


def fix_quantize_layer_reload():
    """Makes QAT models load from the `.keras` format; idempotent.

    `QuantizeLayer.build` never marks the layer built, so loading a `.keras`
    file builds it twice (once from its build config, once when the graph is
    called) and fails with "Layer 'quantize_layer' expected 5 variables, but
    received 3". Marking it built after the first build fixes that.
    """
    layer_class = quantize_layer.QuantizeLayer
    if getattr(layer_class.build_from_config, "tfopt_fixed", False):
        return
    original = layer_class.build_from_config

    @functools.wraps(original)
    def build_from_config(self, config):
        original(self, config)
        self.built = True

    build_from_config.tfopt_fixed = True
    layer_class.build_from_config = build_from_config


def _own_variables(wrapper):
    # The wrapper's variable lists hold the kernel twice (and the bias) when
    # it was built by quantize_apply, but once (and no bias) when built from
    # a saved config; the inner layer saves the bias itself. Unique, minus
    # the inner layer's, in list order, is the same in both cases.
    inner = {id(v) for v in wrapper.layer.weights}
    unique = {id(v): v for v in wrapper._trainable_weights
              + wrapper._non_trainable_weights if id(v) not in inner}
    return list(unique.values())


def fix_quantize_wrapper_reload():
    """Makes QAT wrappers save and load one consistent variable list in the
    `.keras` format; idempotent. Without it a saved QAT model fails to load
    with "Layer 'quant_conv2d' expected 6 variables, but received 8"."""
    wrapper_class = quantize_wrapper.QuantizeWrapperV2
    if getattr(wrapper_class.save_own_variables, "tfopt_fixed", False):
        return

    def save_own_variables(self, store):
        for index, variable in enumerate(_own_variables(self)):
            store[f"{index}"] = variable.numpy()

    def load_own_variables(self, store):
        variables = _own_variables(self)
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expected {len(variables)} variables, but "
                f"the file holds {len(store.keys())}: it was saved without "
                "tfopt's QAT save fix. Save it again after importing tfopt.")
        for index, variable in enumerate(variables):
            variable.assign(store[f"{index}"])

    save_own_variables.tfopt_fixed = True
    wrapper_class.save_own_variables = save_own_variables
    wrapper_class.load_own_variables = load_own_variables
