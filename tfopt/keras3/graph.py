"""The layer graph of a Keras 3 functional model, read from its config
(the public record of who calls whom): which layer reads which, how many
read each, and which activation layers TFLite fuses into the op before them.
"""


def activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None)
    return name if isinstance(name, str) else None


def relu_kind(layer):
    """`relu`/`relu6` if `layer` is an activation layer TFLite fuses into a
    convolution before it, else None."""
    kind = type(layer).__name__
    if kind == "Activation":
        name = activation_name(layer)
        return name if name in ("relu", "relu6") else None
    if kind == "ReLU":
        config = layer.get_config()
        if config["negative_slope"] or config["threshold"]:
            return None
        return {None: "relu", 6.0: "relu6"}.get(config["max_value"])
    return None


def _history(value):
    """The layer names a functional config's call arguments read."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for item in value.values() for name in _history(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _history(item)]
    return []


def output_names(value):
    """The layer names of a functional config's `output_layers`: one
    `[name, node, tensor]` or a list of them."""
    if value and isinstance(value[0], str):
        return [value[0]]
    return [name for item in value for name in output_names(item)]


class Graph:
    """Who feeds whom in a functional model, from its config."""

    def __init__(self, model):
        config = model.get_config()
        self.inputs, self.readers, self.shared = {}, {}, set()
        for entry in config["layers"]:
            name, nodes = entry["name"], entry.get("inbound_nodes", [])
            if len(nodes) > 1:
                self.shared.add(name)
            sources = _history(nodes)
            self.inputs[name] = sources
            for source in sources:
                self.readers.setdefault(source, []).append(name)
        for name in output_names(config["output_layers"]):
            # A model output is one more reader.
            self.readers.setdefault(name, []).append(None)

    def sole_reader(self, source):
        """The layer that alone reads `source`'s single output, and only it;
        None if there is no such layer."""
        readers = self.readers.get(source, [])
        if len(readers) != 1 or readers[0] is None:
            return None
        (reader,) = readers
        if self.inputs[reader] != [source] or {reader, source} & self.shared:
            return None
        return reader


def shared_ranges(graph, joins, through):
    """The range owners that must share one range, as {owner: (group,
    site)}: each layer `joins(name)` is true of (a concatenation) with the
    owners of its inputs, transitively (a chain of concatenations is one
    group). An input's owner is the first layer up its chain that
    `through(name)` is false of (what pooling or padding passes on).
    `group` is the group's first owner; `site` an owner's index in it."""
    parent = {}

    def root(name):
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    def owner(name):
        while through(name) and len(graph.inputs.get(name, ())) == 1:
            name = graph.inputs[name][0]
        return name

    for name, sources in graph.inputs.items():
        if joins(name):
            for source in sources:
                parent.setdefault(name, name)
                top = owner(source)
                parent.setdefault(top, top)
                parent[root(top)] = root(name)
    groups = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    return {
        name: (members[0], site)
        for members in groups.values()
        if len(members) > 1
        for site, name in enumerate(members)
    }
