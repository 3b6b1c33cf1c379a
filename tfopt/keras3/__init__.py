"""Keras 3 (the `keras` package), tfopt's own code: pruning, distillation,
export, fit. Nothing here imports tf_keras or TFMOT."""
