"""The zeros of a Keras 3 model's prunable weights (`tfopt.sparsity_report`),
counted as the mask leaves them, and its multiply-accumulates per example."""

import keras
import numpy as np

from tfopt.core.sparsity import SparsityReport, check_m_by_n, row
from tfopt.keras3.pruning import (
    PruningMask,
    flat_layers,
    prunable,
    unprunable,
    values_of,
)
from tfopt.keras3.quantizers import QuantizedLayer


def rows(model, m_by_n):
    """`tfopt.core.sparsity.Row`s of the prunable weights of Keras 3 `model`."""
    for layer in flat_layers(model):
        if isinstance(layer, QuantizedLayer):
            # A QAT model's kernel as it computes with it: its sparsity mask
            # applied (a batch norm made a depthwise has no kernel to count).
            if layer.layer.trainable:
                kernel = layer.layer.kernel
                values = kernel.numpy() * (layer.mask.numpy() if layer.sparse else 1)
                yield row(layer.name, kernel, values, layer.sparse, m_by_n)
            continue
        if unprunable(layer):
            # Counted, so that the overall figure is of the whole model.
            for weight in layer.trainable_weights:
                if len(weight.shape) >= 2:
                    yield row(layer.name, weight, weight.numpy(), False, m_by_n)
            continue
        names = prunable(layer)
        if not names:
            continue
        variable = getattr(layer, names[0])
        constraint = variable.constraint
        pruned = isinstance(constraint, PruningMask)
        values = values_of(variable, constraint) if pruned else variable.numpy()
        yield row(layer.name, variable, values, pruned, m_by_n)


_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


def macs(model):
    """Multiply-accumulates per example of Keras 3 `model`, counted as
    `tfopt.keras2.cost.cost` counts a tf_keras one: every kernel's size times the
    positions it is applied at (the output's middle dimensions; the input's
    for a transposed convolution). Biases and BatchNorm add none."""
    total = 0
    for layer in flat_layers(model):
        transposed = isinstance(
            layer,
            (
                keras.layers.Conv1DTranspose,
                keras.layers.Conv2DTranspose,
                keras.layers.Conv3DTranspose,
            ),
        )
        shape = (layer.input if transposed else layer.output).shape
        positions = int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1
        total += sum(
            int(np.prod(w.shape)) * positions
            for w in layer.weights
            if w.name in _KERNELS
        )
    return total


def sparsity_report(model, *, m_by_n=(2, 4)):
    """`tfopt.sparsity_report` for a Keras 3 model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras 3 Model. Received: model={model!r}")
    check_m_by_n(m_by_n, "m_by_n")
    return SparsityReport(rows(model, tuple(m_by_n)), m_by_n)
