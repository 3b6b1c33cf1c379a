"""Keras-neutral core: what both Kerases share. Nothing here imports a
Keras (TensorFlow only where a TFLite file or a tensor needs it)."""
