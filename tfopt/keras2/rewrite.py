"""Rewrites that make a model quantizable, on a flat float32 copy of it.

TFMOT quantizes layers, and an int8 TFLite file is only integer where every
op's output has a range. These common patterns have neither:
- an image `Rescaling` or `Normalization` (two float ops, MUL and ADD, in
  the file): it becomes an equal, frozen 1x1 `DepthwiseConv2D`; ConvNeXt's
  `LayerScale` (a per-channel MUL) an equal, trainable one, and so does a
  `BatchNormalization` that TFMOT cannot fold into a convolution (after an
  Add in ResNetV2, a Concatenate in DenseNet), its statistics frozen;
- a TensorFlow op on a Keras tensor and a constant (`x + 3.0`, `x * (1/6)`
  in MobileNetV3's hard-swish), a `TFOpLambda` that TFMOT's wrapper cannot
  call: it becomes a `ScalarOp` layer, which `tfopt.quantize` gives an
  output range; the same op on two tensors (`x + residual` in ConvNeXt and
  RegNet) becomes an `Add`, `Subtract` or `Multiply` layer;
- a sigmoid or swish (LOGISTIC, and MUL, in the file) inside a Conv/Dense
  layer or as an `Activation`: every sigmoid becomes an `Activation` layer
  of its own, whose output `tfopt.quantize` quantizes as TFLite does, and
  every swish that sigmoid and a `Multiply`;
- InceptionResNetV2's `CustomScaleLayer` (x + r * scale), a custom layer
  TFMOT cannot quantize: it becomes a ScalarOp and an Add.
"""

import numbers

import numpy as np

from tfopt.keras2 import graph
from tfopt.keras2.binding import keras
from tfopt.keras2.scalar_op import ScalarOp, op_layer


def _is_layer_scale(layer):
    # ConvNeXt's LayerScale (tf_keras.applications.convnext): x * gamma.
    return type(layer).__name__ == "LayerScale" and len(layer.weights) == 1


# Layers a following BatchNormalization folds into (TFMOT's layout
# transforms; a separable convolution is split into two first).
_FOLDS_BN = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def _folds(source):
    return isinstance(source, _FOLDS_BN) and (source.activation.__name__ == "linear")


def _batch_norm(layer):
    """(scale, offset) per channel that `layer` applies at inference."""
    channels = layer.moving_mean.shape[0]
    gamma = layer.gamma.numpy() if layer.scale else np.ones(channels, np.float32)
    beta = layer.beta.numpy() if layer.center else np.zeros(channels, np.float32)
    scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    return scale, beta - layer.moving_mean.numpy() * scale


def _affine(layer, source):
    """(kernel, bias or None, trainable) of the 1x1 depthwise convolution
    equal to a `Rescaling` or `Normalization` over the channels of an image,
    a ConvNeXt `LayerScale`, or a `BatchNormalization` that does not follow
    a layer it folds into (`source`, its input's layer), else None.

    TFMOT quantizes none of them, and each is one or two float ops (MUL,
    ADD) in an int8 file; a 1x1 DepthwiseConv2D is one int8 op with
    per-channel weights.
    """
    # Node 0: tfopt's copies (prune, strip, ...) share weightless layers.
    shape = layer.get_input_shape_at(0)
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] is None:
        return None
    channels = shape[-1]
    if isinstance(layer, keras.layers.BatchNormalization):
        # After an Add (ResNetV2) or a Concatenate (DenseNet): its
        # statistics freeze at their current values, and QAT fine-tunes
        # the per-channel scale and offset they give.
        if _folds(source) or tuple(a % 4 for a in np.ravel(layer.axis)) != (3,):
            return None
        scale, offset = _batch_norm(layer)
        return scale.reshape(1, 1, channels, 1), offset, True
    if _is_layer_scale(layer):
        gamma = np.asarray(layer.get_weights()[0], np.float32)
        # Only a layer that really is x * gamma per channel (a user's
        # "LayerScale" might be something else).
        ones = np.ones((1, 1, 1, channels), np.float32)
        if gamma.shape != (channels,) or not np.allclose(layer(ones), gamma):
            return None
        return gamma.reshape(1, 1, channels, 1), None, True
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = layer.scale, layer.offset
    elif isinstance(layer, keras.layers.Normalization) and tuple(
        a % 4 for a in layer.axis
    ) == (3,):
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
    return scale.reshape(1, 1, channels, 1), offset.copy(), False


# Activations TFLite runs with a LOGISTIC, whose int8 output has a fixed
# scale of 1/256 that TFMOT's QAT model does not simulate.
_SWISH = frozenset({"swish", "silu"})
_SPLIT = _SWISH | {"sigmoid"}


def _output(name):
    """The reference to layer `name`'s (first) output in a functional config."""
    return [name, 0, 0, {}]


def _activation(name, activation, source):
    """A functional config entry: `Activation(activation)` of ref `source`."""
    return {
        "class_name": "Activation",
        "name": name,
        "config": {"name": name, "activation": activation, "dtype": "float32"},
        "inbound_nodes": [[source]],
    }


def _split_activations(config):
    """Makes every sigmoid and swish its own layer, in place: a Conv/Dense
    layer's sigmoid becomes an `Activation` `<layer>_sigmoid` after it, and
    each swish x * sigmoid(x) a sigmoid `Activation` and a `Multiply` (an
    `Activation` swish layer keeps its name on the Multiply; a Conv/Dense's
    is `<layer>_swish`). Returns the names of the layers changed.

    So every LOGISTIC of the int8 file has a layer whose output range
    `tfopt.quantize` fixes as TFLite's; TFMOT quantizes a swish only after
    it and a sigmoid only before (EfficientNet's int8 file and QAT model
    then disagreed by 1-2 points on mnist5k). A Conv's own output also
    gets a range that way (before, its swish left it and both ops float).
    """
    taken = {entry["config"]["name"] for entry in config["layers"]}

    def unique(name):
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    # `inner`: the layers that read a Conv/Dense's own (now linear) output.
    moved, inner, changed, layers = {}, set(), set(), []
    for entry in config["layers"]:
        activation = entry["config"].get("activation")
        name = entry["config"]["name"]
        is_layer = entry["class_name"] == "Activation"
        if (
            activation not in _SPLIT
            or len(entry["inbound_nodes"]) != 1
            or is_layer
            and activation == "sigmoid"
        ):
            layers.append(entry)
            continue
        sigmoid = unique(f"{name}_sigmoid")
        changed |= {name, sigmoid}
        if is_layer:  # Activation(swish) -> sigmoid, Multiply of the same name
            (source,) = entry["inbound_nodes"][0]
            layers.append(_activation(sigmoid, "sigmoid", source))
            _replace(entry, "Multiply", {"name": name, "dtype": "float32"})
            entry["inbound_nodes"] = [[source, _output(sigmoid)]]
            layers.append(entry)
            continue
        entry["config"]["activation"] = "linear"
        layers += [entry, _activation(sigmoid, "sigmoid", _output(name))]
        moved[name] = sigmoid
        if activation in _SWISH:
            moved[name] = unique(f"{name}_swish")
            layers.append(
                {
                    "class_name": "Multiply",
                    "name": moved[name],
                    "config": {"name": moved[name], "dtype": "float32"},
                    "inbound_nodes": [[_output(name), _output(sigmoid)]],
                }
            )
        inner |= {sigmoid, moved[name]}

    def rewire(ref):
        return [moved[ref[0]], *ref[1:]] if ref[0] in moved else ref

    for entry in layers:
        if entry["config"]["name"] not in inner:
            entry["inbound_nodes"] = graph._map_refs(entry["inbound_nodes"], rewire)
    config["output_layers"] = graph._map_refs(config["output_layers"], rewire)
    config["layers"] = layers
    return changed | inner


def _is_scaled_sum(layer):
    """Whether `layer` is InceptionResNetV2's CustomScaleLayer, x + r * scale
    (checked by calling it: a user's layer of that name may differ)."""
    if type(layer).__name__ != "CustomScaleLayer" or layer.weights:
        return False
    scale = getattr(layer, "scale", None)
    if not isinstance(scale, numbers.Real):
        return False
    ones = np.ones((1, 2), np.float32)
    try:
        return np.allclose(layer([ones, 2 * ones]), 1 + 2 * scale)
    except (TypeError, ValueError, IndexError):
        return False


def _split_scaled_sums(config, layers):
    """Makes each CustomScaleLayer `name` (x + r * scale, one call) a
    ScalarOp `name_scale` (r * scale) and an Add `name`, in place; returns
    the names. Two layers, so that r * scale gets a range of its own."""
    names, entries = set(), []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        nodes = entry["inbound_nodes"]
        if not (
            len(nodes) == 1 and len(nodes[0]) == 2 and _is_scaled_sum(layers.get(name))
        ):
            entries.append(entry)
            continue
        (x, residual), scaled = nodes[0], f"{name}_scale"
        entries.append(
            {
                "class_name": "ScalarOp",
                "name": scaled,
                "config": {
                    "name": scaled,
                    "op": "multiply",
                    "dtype": "float32",
                    "constant": float(layers[name].scale),
                },
                "inbound_nodes": [[residual]],
            }
        )
        _replace(entry, "Add", {"name": name, "dtype": "float32"})
        entry["inbound_nodes"] = [[x, _output(scaled)]]
        entries.append(entry)
        names.add(name)
    config["layers"] = entries
    return names


def _replace(entry, class_name, config):
    """Makes a functional config `entry` another layer of the same name."""
    for key in ("module", "registered_name"):
        entry.pop(key, None)
    entry["class_name"], entry["config"] = class_name, config


_AFFINE = (
    keras.layers.Rescaling,
    keras.layers.Normalization,
    keras.layers.BatchNormalization,
)


def _source(entry, layers):
    """The layer whose output is the one input of the functional config
    `entry`, else None. (From the config, not `layer.inbound_nodes`: TFMOT's
    clones share the layers they do not wrap, which then have a node in
    every copy.)"""
    refs = graph._refs(entry["inbound_nodes"])
    if len(entry["inbound_nodes"]) != 1 or len(refs) != 1:
        return None
    return layers.get(refs[0][0])


def quantizable_copy(model):
    """A flat float32 functional model computing what `model` does,
    rewritten as the module docstring says. Rewritten layers keep their
    names; the new ones are named after them (`<layer>_sigmoid`,
    `<layer>_swish`, `<layer>_scale`).

    `model` itself when it is already that (nothing to flatten or rewrite):
    callers must not change it; TFMOT's `quantize_apply` works on a copy.
    """
    flat = graph.flat(model)  # a copy if flattened: the user's model stays
    config = flat.get_config()
    layers = {layer.name: layer for layer in flat.layers}
    affine = {}
    for entry in config["layers"]:
        layer = layers[entry["config"]["name"]]
        if isinstance(layer, _AFFINE) or _is_layer_scale(layer):
            affine[layer.name] = _affine(layer, _source(entry, layers))
    affine = {name: weights for name, weights in affine.items() if weights}
    ops = {entry["config"]["name"]: op_layer(entry) for entry in config["layers"]}
    ops = {name: op for name, op in ops.items() if op}
    split = _split_activations(config) | _split_scaled_sums(config, layers)
    if (
        not affine
        and not ops
        and not split
        and all(layer.dtype_policy.name == "float32" for layer in flat.layers)
    ):
        return flat
    for entry in config["layers"]:
        if "dtype" in entry["config"]:
            entry["config"]["dtype"] = "float32"
        name = entry["config"]["name"]
        if name in ops:
            _replace(entry, ops[name][0], ops[name][1])
            entry["inbound_nodes"] = ops[name][2]
        elif name in affine:
            _replace(
                entry,
                "DepthwiseConv2D",
                {
                    "name": name,
                    "kernel_size": 1,
                    "use_bias": affine[name][1] is not None,
                    "trainable": affine[name][2],
                    "dtype": "float32",
                },
            )
    with (
        graph.rebuilding(flat),
        keras.utils.custom_object_scope({"ScalarOp": ScalarOp}),
    ):
        copy = keras.Model.from_config(config)
    for layer in copy.layers:
        # A rewritten layer keeps its original's name.
        if layer.name in affine:
            layer.set_weights([w for w in affine[layer.name][:2] if w is not None])
        elif layer.weights:
            layer.set_weights(layers[layer.name].get_weights())
    return copy
