"""Rewrites that make a model quantizable, on a flat float32 copy of it.

TFMOT quantizes layers, and an int8 TFLite file is only integer where every
op's output has a range. Two common patterns have neither:
- an image `Rescaling` or `Normalization` (two float ops, MUL and ADD, in
  the file): it becomes an equal, frozen 1x1 `DepthwiseConv2D`;
- a TensorFlow op on a Keras tensor and a constant (`x + 3.0`, `x * (1/6)`
  in MobileNetV3's hard-swish), a `TFOpLambda` that TFMOT's wrapper cannot
  call: it becomes a `ScalarOp` layer, which `tfopt.quantize` gives an
  output range.
"""

import numbers

import numpy as np

from tfopt import _flatten
from tfopt._keras import keras


@keras.utils.register_keras_serializable(package="tfopt")
class ScalarOp(keras.layers.Layer):
    """`inputs + constant` or `inputs * constant`, as a layer.

    Args:
        op: `add` or `multiply`.
        constant: The Python number.
    """

    def __init__(self, op, constant, **kwargs):
        super().__init__(**kwargs)
        if op not in ("add", "multiply"):
            raise ValueError(f"`op` must be 'add' or 'multiply'. Received: op={op!r}")
        self.op, self.constant = op, float(constant)

    def call(self, inputs):
        if self.op == "add":
            return inputs + self.constant
        return inputs * self.constant

    def get_config(self):
        return {**super().get_config(), "op": self.op, "constant": self.constant}


# TFOpLambda symbol -> (ScalarOp op, how its constant maps).
_SCALAR_OPS = {
    "__operators__.add": ("add", lambda c: c), "math.add": ("add", lambda c: c),
    "math.subtract": ("add", lambda c: -c),
    "math.multiply": ("multiply", lambda c: c),
    "math.truediv": ("multiply", lambda c: 1.0 / c),
}


def _scalar_op(entry):
    """The ScalarOp config replacing a TFOpLambda `entry` of a functional
    config, and its inbound nodes; None when it is not tensor-op-number."""
    if entry["class_name"] != "TFOpLambda":
        return None
    kind = _SCALAR_OPS.get(entry["config"].get("function"))
    nodes = entry["inbound_nodes"]
    if kind is None or len(nodes) != 1:
        return None
    # A TFOpLambda's node is its one tensor argument itself, with the other
    # call arguments as its kwargs: [source, node, tensor, {"y": 3.0, ...}].
    ref = nodes[0]
    if len(ref) != 4 or not isinstance(ref[0], str) or not isinstance(ref[3], dict):
        return None
    source, node, tensor, kwargs = ref
    constant = kwargs.get("y")
    number = isinstance(constant, numbers.Real) and not isinstance(constant, bool)
    if set(kwargs) - {"y", "name"} or not number or (
        entry["config"]["function"] == "math.truediv" and constant == 0
    ):
        return None
    config = {"name": entry["config"]["name"], "op": kind[0],
              "constant": kind[1](float(constant)), "dtype": "float32"}
    return config, [[[source, node, tensor, {}]]]


def _affine(layer):
    """(kernel, bias) of the 1x1 depthwise convolution equal to a
    `Rescaling` or `Normalization` over the channels of an image, else None.

    TFMOT quantizes neither, and each is two float ops (MUL, ADD) in an int8
    file; a 1x1 DepthwiseConv2D is one int8 op with per-channel weights.
    """
    shape = layer.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] is None:
        return None
    channels = shape[-1]
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = layer.scale, layer.offset
    elif isinstance(layer, keras.layers.Normalization) and tuple(
        a % 4 for a in layer.axis) == (3,):
        mean = np.asarray(layer.mean, np.float32).reshape(-1)
        deviation = np.sqrt(np.asarray(layer.variance, np.float32).reshape(-1))
        if layer.invert:
            scale, offset = deviation, mean
        else:
            scale = 1.0 / np.maximum(deviation, keras.backend.epsilon())
            offset = -mean * scale
    else:
        return None
    scale = np.broadcast_to(np.asarray(scale, np.float32), (channels,))
    offset = np.broadcast_to(np.asarray(offset, np.float32), (channels,))
    return scale.reshape(1, 1, channels, 1), offset.copy()


def _replace(entry, class_name, config):
    """Makes a functional config `entry` another layer of the same name."""
    for key in ("module", "registered_name"):
        entry.pop(key, None)
    entry["class_name"], entry["config"] = class_name, config


def quantizable_copy(model):
    """A flat float32 functional copy of `model` with the same weights, its
    image `Rescaling` and `Normalization` layers as 1x1 depthwise
    convolutions (same names, not trainable) and its tensor-op-number
    TFOpLambdas as ScalarOps (same names)."""
    flat = _flatten.flatten(model)  # also a copy: the user's model stays as is
    affine = {layer.name: _affine(layer) for layer in flat.layers
              if isinstance(layer, (keras.layers.Rescaling,
                                    keras.layers.Normalization))}
    affine = {name: weights for name, weights in affine.items() if weights}
    config = flat.get_config()
    scalar = {entry["config"]["name"]: _scalar_op(entry)
              for entry in config["layers"]}
    scalar = {name: op for name, op in scalar.items() if op}
    if not affine and not scalar and all(layer.dtype_policy.name == "float32"
                                         for layer in flat.layers):
        return flat
    for entry in config["layers"]:
        if "dtype" in entry["config"]:
            entry["config"]["dtype"] = "float32"
        name = entry["config"]["name"]
        if name in scalar:
            _replace(entry, "ScalarOp", scalar[name][0])
            entry["inbound_nodes"] = scalar[name][1]
        elif name in affine:
            _replace(entry, "DepthwiseConv2D", {
                "name": name, "kernel_size": 1, "use_bias": True,
                "trainable": False, "dtype": "float32"})
    with _flatten.rebuilding(flat), keras.utils.custom_object_scope(
        {"ScalarOp": ScalarOp}
    ):
        copy = keras.Model.from_config(config)
    for layer, source in zip(copy.layers, flat.layers, strict=True):
        # Same names, same order: a rewritten layer replaces its original.
        if layer.name in affine:
            layer.set_weights(list(affine[layer.name]))
        elif layer.weights:
            layer.set_weights(source.get_weights())
    return copy
