"""One int8 range per group of tensors that TFLite requires to share one.

TFLite's int8 CONCATENATION, MAX_POOL_2D, AVERAGE_POOL_2D and PAD take
their output's scale for every input. Where the QAT model has a range on
more than one tensor of such a group (DenseNet's chain of concatenations,
each with its own range and each feeding the next and a convolution), the
converter inserts an int8-to-int8 QUANTIZE (a requantize) at each change.

`shared_ranges` picks, per group, the one tensor whose range the group
keeps (the group's only output that feeds no other member: the last
concatenation, whose values include every other member's) and lists the
layers whose own range must go: the other concatenations and pools, and
the layers (convolutions, activations) that produce the group's inputs.
The converter then gives the whole group the kept range, as it already does
for a convolution that feeds one concatenation.
"""

import copy

import tensorflow_model_optimization as tfmot

from tfopt.keras2 import graph
from tfopt.keras2.binding import keras

_qat = tfmot.quantization.keras

# TFLite runs these in int8 with one scale for their inputs and output.
SAME_SCALE = (
    keras.layers.Concatenate,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
)


def _graph(model):
    """(layer name -> names of the layers it reads, -> names reading it)."""
    inputs = {
        name: set(sources)
        for name, sources in graph.inbound(model.get_config()).items()
    }
    consumers = {}
    for name, sources in inputs.items():
        for source in sources:
            consumers.setdefault(source, set()).add(name)
    return inputs, consumers


def _reaches(start, targets, group, consumers):
    """Whether a path of `group`'s layers leads from `start` to `targets`."""
    seen, stack = set(), [start]
    while stack:
        for name in consumers.get(stack.pop(), set()) & group:
            if name in targets:
                return True
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return False


def shared_ranges(model):
    """(same-scale layers, producers) of `model` whose output range the
    group they belong to takes from another layer: names, two sets.

    Only groups with exactly one concatenation that feeds no other one
    (the layer that keeps its range) are changed; a group with several
    keeps its ranges, and its requantizes.
    """
    layers = {layer.name: layer for layer in model.layers}
    inputs, consumers = _graph(model)
    same = {name for name, layer in layers.items() if isinstance(layer, SAME_SCALE)}
    followers, producers, seen = set(), set(), set()
    for start in sorted(same):
        if start in seen:
            continue
        group, stack = set(), [start]
        while stack:  # the same-scale layers connected to `start`
            name = stack.pop()
            if name in group:
                continue
            group.add(name)
            stack.extend((inputs[name] | consumers.get(name, set())) & same)
        seen |= group
        # Pools and paddings have no range of their own (`tfopt.quantize`
        # gives average pools their input's): only concatenations count.
        concats = {
            name for name in group if isinstance(layers[name], keras.layers.Concatenate)
        }
        sinks = [
            name
            for name in concats
            if not _reaches(name, concats - {name}, group, consumers)
        ]
        if len(sinks) != 1:
            continue
        followers |= group - set(sinks)
        producers |= {source for name in group for source in inputs[name]} - group
    return followers, producers


def _without_range(layer, config, registry, no_range):
    """`config` (None: `registry`'s) for `layer` with no range on its
    output, or None where nothing is to change or it cannot: a fixed range
    (a sigmoid's) is TFLite's own, and a config of another form is left."""
    if config is None:
        if not registry.supports(layer):
            return None
        config = registry.get_quantize_config(layer)
    outputs = config.get_output_quantizers(layer)
    if any(isinstance(q, _qat.quantizers.FixedQuantizer) for q in outputs):
        return None
    if not (
        config.get_weights_and_quantizers(layer)
        or config.get_activations_and_quantizers(layer)
    ):
        return no_range() if outputs else None
    if hasattr(config, "activation_attrs") and hasattr(config, "quantize_output"):
        config = copy.deepcopy(config)
        config.activation_attrs, config.quantize_output = [], False
        return config
    return None


class _Layout(_qat.QuantizeLayoutTransform):
    """A scheme's layout transform, after which `names` lose their output
    ranges. (After, not by annotation: a layer with a config of its own
    stops TFMOT folding a BatchNormalization and ReLU into a convolution.)"""

    def __init__(self, layout, registry, names, no_range):
        self._layout, self._registry = layout, registry
        self._names, self._no_range = names, no_range

    def apply(self, model, layer_quantize_map):
        model, layer_quantize_map = self._layout.apply(model, layer_quantize_map)
        for layer in model.layers:
            entry = layer_quantize_map.get(layer.name)
            if layer.name in self._names and entry is not None:
                config = _without_range(
                    layer, entry.get("quantize_config"), self._registry, self._no_range
                )
                if config is not None:
                    entry["quantize_config"] = config
        return model, layer_quantize_map


class SharedRangeScheme(_qat.QuantizeScheme):
    """`scheme`, with one range per same-scale group of `model` (see
    `shared_ranges`); `no_range()` makes the config of a layer without."""

    def __init__(self, scheme, model, no_range):
        self._scheme, self._no_range = scheme, no_range
        followers, producers = shared_ranges(model)
        self._names = followers | producers

    def get_layout_transformer(self):
        return _Layout(
            self._scheme.get_layout_transformer(),
            self._scheme.get_quantize_registry(),
            self._names,
            self._no_range,
        )

    def get_quantize_registry(self):
        return self._scheme.get_quantize_registry()
