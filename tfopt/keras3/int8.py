"""What TFLite's int8 kernels make of each Keras 3 layer (and functional-API
op), for `tfopt.keras3.quantization`: which run in their input's scale,
which have an output scale of their own, which convolutions a batch norm
and a ReLU fold into, and why the others stay float.
"""

import keras
import numpy as np

from tfopt.keras3 import graph
from tfopt.keras3.quantizers import KINDS

# Split into a depthwise and a pointwise QuantizedLayer (as the converter
# splits it), the range between them learned.
SEPARABLE = "SeparableConv2D"

# Run by TFLite in their input's scale: no range of their own.
SAME_SCALE = {
    "InputLayer", "Identity", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "Reshape", "Flatten", "Permute",
    "RepeatVector",
    # keras.ops of the functional API (x[..., :4], ops.reshape, ...)
    "GetItem", "ExpandDims", "Squeeze", "Transpose", "Pad",
}  # fmt: skip
# An int8 TFLite kernel whose output has a scale of its own.
OWN_RANGE = {
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "Rescaling", "ReLU", "LeakyReLU", "Softmax", "UpSampling1D", "UpSampling2D",
    # keras.ops of the functional API (x + 3.0, ops.relu6(x), ...)
    "Divide", "TrueDivide", "Relu", "Relu6", "HardSigmoid", "HardSilu",
    "Sigmoid", "Mean",
}  # fmt: skip
# Activations (by name) with an int8 TFLite kernel.
INT8_ACTIVATIONS = {
    "linear", "relu", "relu6", "sigmoid", "softmax", "tanh", "swish", "silu",
    "hard_swish", "hard_silu", "hard_sigmoid", "leaky_relu", "elu", "gelu",
}  # fmt: skip


def plans(model, layers, chosen):
    """Which layers fold into which: {conv name: (bn, relu)}, and the names
    of the layers folded away (become identities)."""
    by_name = {op.name: op for op in model.operations}
    plans, absorbed = {}, set()
    for layer in model.layers:
        if not wrappable(layer) or layer.name not in chosen:
            continue
        name, norm, relu = layer.name, None, graph.activation_name(layer)
        tail = name
        if relu == "linear":
            relu = None
            reader = layers.sole_reader(name)
            candidate = by_name.get(reader)
            if (
                type(candidate).__name__ == "BatchNormalization"
                and reader in chosen
                and candidate.axis in (-1, len(candidate.input.shape) - 1)
            ):
                norm, tail = candidate, reader
            reader = layers.sole_reader(tail)
            kind = graph.relu_kind(by_name[reader]) if reader else None
            if kind and reader in chosen:
                relu = kind
                absorbed.add(reader)
        if norm is not None:
            absorbed.add(norm.name)
        plans[name] = (norm, relu)
    return plans, absorbed


def wrappable(layer):
    kind = type(layer).__name__
    if kind not in (*KINDS, SEPARABLE):
        return False
    config = layer.get_config()
    if config.get("padding") == "causal":
        return False
    if config.get("groups", 1) != 1:
        return channelwise(layer)
    return kind != "Dense" or len(layer.kernel.shape) == 2


def channelwise(layer):
    """Whether `layer` is a Conv2D with one group per input channel and one
    filter per group (ConvNeXt's depthwise convolution): a DepthwiseConv2D."""
    config = layer.get_config()
    return (
        type(layer).__name__ == "Conv2D"
        and config["groups"] == layer.kernel.shape[-1]
        and layer.kernel.shape[-2] == 1
    )


def _depthwise(config, **settings):
    """A DepthwiseConv2D with the window of the convolution whose config is
    `config`."""
    window = ("kernel_size", "strides", "padding", "data_format", "dilation_rate")
    return keras.layers.DepthwiseConv2D(**{k: config[k] for k in window}, **settings)


def as_depthwise_conv(layer, config):
    """A channel-wise Conv2D as the DepthwiseConv2D it is (config, weights):
    its (h, w, 1, C) kernel is a depthwise (h, w, C, 1) one."""
    depthwise = _depthwise(config, use_bias=config["use_bias"])
    kernel = np.transpose(layer.kernel.numpy(), (0, 1, 3, 2))
    weights = [kernel, layer.bias.numpy()] if config["use_bias"] else [kernel]
    return keras.layers.serialize(depthwise), weights


def why_float(layer):
    kind = type(layer).__name__
    if kind in KINDS:
        return "a grouped or causal convolution, which TFLite has no int8 kernel for"
    if kind == "BatchNormalization":
        return (
            "a BatchNormalization that follows no convolution or Dense, over a "
            "tensor that is not an image"
        )
    if kind == "LayerNormalization":
        return "TFLite has no int8 layer-norm kernel"
    if kind == "Lambda":
        return "arbitrary code that tfopt cannot quantize"
    if kind == "Activation":
        name = graph.activation_name(layer)
        return f"TFLite has no int8 kernel for the {name!r} activation"
    if not type(layer).__module__.startswith("keras."):
        return "a custom layer: tfopt does not know what TFLite will make of it"
    return f"TFLite has no int8 kernel tfopt knows of for {kind}"


def separable_halves(layer, config):
    """A SeparableConv2D as TFLite runs it: (a DepthwiseConv2D, its weights,
    a 1x1 Conv2D, its weights), `config` the layer's (activation linear)."""
    depthwise = _depthwise(
        config, depth_multiplier=config["depth_multiplier"], use_bias=False
    )
    pointwise = keras.layers.Conv2D(
        config["filters"],
        1,
        data_format=config["data_format"],
        use_bias=config["use_bias"],
    )
    weights = [layer.pointwise_kernel.numpy()]
    if config["use_bias"]:
        weights.append(layer.bias.numpy())
    return depthwise, [layer.depthwise_kernel.numpy()], pointwise, weights


def affine_map(layer, kind):
    """(per-channel scale, offset or None) of a Rescaling, a (not inverted,
    last-axis) Normalization or ConvNeXt's LayerScale, or None."""
    config = layer.get_config()
    if kind == "Rescaling":
        return config["scale"], config["offset"]
    if kind == "LayerScale":
        # ConvNeXt's x * gamma (its gamma then stays as trained).
        if not type(layer).__module__.endswith("applications.convnext"):
            return None
        return layer.gamma.numpy(), None
    axis = np.ravel(config.get("axis")) % len(layer.input.shape)
    if config.get("invert") or axis.tolist() != [len(layer.input.shape) - 1]:
        return None
    mean = np.asarray(layer.mean, "float32").reshape(-1)
    deviation = np.maximum(
        np.sqrt(np.asarray(layer.variance, "float32").reshape(-1)),
        keras.backend.epsilon(),
    )
    return 1 / deviation, -mean / deviation
