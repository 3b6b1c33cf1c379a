"""The TFMOT internals tfopt needs, isolated here.

TFMOT's public API (`tfmot.sparsity.keras`, `tfmot.quantization.keras`) does
not export the pruning wrapper class (needed for `isinstance` checks on
models pruned by TFMOT itself) nor a way to ask which weights of a layer it
would prune. Both live in `tensorflow_model_optimization.python.*`; this is
the only module that imports from there.
"""

import tensorflow_model_optimization as tfmot
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
