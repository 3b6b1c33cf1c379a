"""A Keras 3 functional model as `tfopt.core.channel_groups` reads it: its
layers and functional-API ops (`x + 3.0`, `x * gate`) as `Node`s, from the
model's config (the public record of who calls whom), and what follows from
them: channel groups, their cost, the largest reachable cut.
"""

import keras

from tfopt.core import channel_cost
from tfopt.core import channel_groups as _groups
from tfopt.keras3 import graph


def functional(model):
    """`model` as a functional model over the same layers (a Sequential's
    graph, read through the public inputs and outputs)."""
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _constants(value):
    """The numbers a config's call arguments hold besides tensors."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return []
        return [c for item in value.values() for c in _constants(item)]
    if isinstance(value, (list, tuple)):
        return [c for item in value for c in _constants(item)]
    return [value] if isinstance(value, (int, float)) and value is not True else []


def _shape(operation):
    try:
        return tuple(operation.output.shape)
    except (AttributeError, ValueError):  # called more than once
        return None


def nodes(model):
    """The `Node`s of functional `model`, in graph order."""
    config = model.get_config()
    by_name = {op.name: op for op in model.operations}
    found = []
    for entry in config["layers"]:
        name, calls = entry["name"], entry.get("inbound_nodes", [])
        op = by_name[name]
        layer = isinstance(op, keras.layers.Layer)
        found.append(
            _groups.Node(
                name=name,
                layer=op,
                kind=_groups.kind_of(op) if layer else f"op:{type(op).__name__}",
                sources=tuple(graph._history(calls)),
                shape=_shape(op),
                repeated=len(calls) > 1,
                constants=tuple(_constants([c.get("args") for c in calls])),
                activation=graph.activation_name(op),
            )
        )
    return found


def ends(model):
    config = model.get_config()
    return graph.output_names(config["input_layers"]) + graph.output_names(
        config["output_layers"]
    )


def analyse(model):
    """`core.channel_groups.analyse` of functional Keras 3 `model`."""
    return _groups.analyse(nodes(model), ends(model))


class Terms:
    """A model's nodes and cost terms (`core.channel_cost`), computed once."""

    def __init__(self, model):
        self.nodes = nodes(model)
        self.terms = channel_cost.cost_terms(
            self.nodes,
            lambda node: node.layer.weights if hasattr(node.layer, "weights") else [],
            lambda node: tuple(node.layer.input.shape),
        )
