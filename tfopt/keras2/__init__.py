"""tf_keras (Keras 2) through TFMOT: pruning, channels, quantization,
distillation, export. Loading any of it binds tf_keras (see `binding`)."""
