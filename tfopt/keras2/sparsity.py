"""The zeros of a tf_keras model's prunable weights, as TFMOT would prune
them: wrapped (counted as masked), QAT-wrapped or plain layers."""

from tfopt.core import sparsity
from tfopt.keras2 import binding, tfmot
from tfopt.keras2.binding import keras


def rows(model, m_by_n):
    for layer in model.layers:
        if isinstance(layer, tfmot.PruneLowMagnitudeBase):
            # The wrapped weight can hold non-zeros under a zero mask between
            # an optimizer step and the next masking: count what the layer uses.
            pairs = [(w, w.numpy() * m.numpy()) for w, m, _ in layer.pruning_vars]
            name, pruned = layer.layer.name, True
        elif isinstance(layer, keras.Model):
            yield from rows(layer, m_by_n)
            continue
        elif isinstance(layer, keras.layers.Wrapper):  # QAT's QuantizeWrapper
            pairs = [(w, w.numpy()) for w in tfmot.quantized_prunable_variables(layer)]
            name, pruned = layer.layer.name, False
        else:
            pairs = [(w, w.numpy()) for w in tfmot.prunable_weights(layer)]
            name, pruned = layer.name, False
        for variable, values in pairs:
            yield sparsity.row(name, variable, values, pruned, m_by_n)


def sparsity_report(model, *, m_by_n=(2, 4)):
    """`tfopt.sparsity_report` for a tf_keras model: wrapped weights counted as
    masked, QAT-wrapped and plain ones as they are, nested models walked."""
    binding.check_model(model)
    sparsity.check_m_by_n(m_by_n, "m_by_n")
    return sparsity.SparsityReport(rows(model, tuple(m_by_n)), m_by_n)
