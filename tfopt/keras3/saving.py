"""Registers tfopt's Keras 3 classes with Keras's serialisation (`tfopt>`
names), so a `.keras` file holding them loads with plain
`keras.saving.load_model`: the pruning mask constraint, the Distiller, and
the QAT layers. `import tfopt` imports this module when Keras is loaded."""

from tfopt.keras3 import distillation, pruning, quantizers

CLASSES = (
    pruning.PruningMask,
    distillation.Distiller,
    quantizers.QuantizeRange,
    quantizers.QuantizedLayer,
)
