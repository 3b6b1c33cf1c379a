"""`ScalarOp`: a TensorFlow op on a Keras tensor and a constant (`x + 3.0`,
`x * (1/6)` in MobileNetV3's hard-swish) as a layer that TFMOT can wrap and
`tfopt.quantize` can give an output range; `op_layer` says which layer
replaces a `TFOpLambda` of a functional config.
"""

import numbers

from tfopt.keras2 import graph
from tfopt.keras2.binding import keras


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


# TFOpLambda symbol -> (ScalarOp op, how its constant maps, the merge layer
# for two tensors).
_TF_OPS = {
    "__operators__.add": ("add", lambda c: c, "Add"),
    "math.add": ("add", lambda c: c, "Add"),
    "math.subtract": ("add", lambda c: -c, "Subtract"),
    "math.multiply": ("multiply", lambda c: c, "Multiply"),
    "math.truediv": ("multiply", lambda c: 1.0 / c, None),
}


def op_layer(entry):
    """(class name, config, inbound nodes) of the layer replacing a
    TFOpLambda `entry` of a functional config: a ScalarOp for a tensor and a
    number, an Add/Subtract/Multiply for two tensors; None for anything else.
    """
    if entry["class_name"] != "TFOpLambda":
        return None
    kind = _TF_OPS.get(entry["config"].get("function"))
    nodes = entry["inbound_nodes"]
    if kind is None or len(nodes) != 1:
        return None
    # A TFOpLambda's node is its one tensor argument itself, with the other
    # call arguments as its kwargs: [source, node, tensor, {"y": 3.0, ...}].
    ref = nodes[0]
    if not (graph.is_ref(ref) and len(ref) == 4):
        return None
    source, node, tensor, kwargs = ref
    other = kwargs.get("y")
    if set(kwargs) - {"y", "name"}:
        return None
    name = entry["config"]["name"]
    if graph.is_ref(other) and len(other) == 3 and kind[2]:
        return (
            kind[2],
            {"name": name, "dtype": "float32"},
            [[[source, node, tensor, {}], [*other, {}]]],
        )
    number = isinstance(other, numbers.Real) and not isinstance(other, bool)
    if not number or (entry["config"]["function"] == "math.truediv" and other == 0):
        return None
    config = {
        "name": name,
        "op": kind[0],
        "constant": kind[1](float(other)),
        "dtype": "float32",
    }
    return "ScalarOp", config, [[[source, node, tensor, {}]]]
