"""The layers of a Keras 3 quantization-aware model (`tfopt.quantize`),
built from Keras 3's own `fake_quant_with_min_max_vars`, which the TFLite
converter reads as int8 quantization parameters.

`QuantizeRange` learns one activation range as a moving average of batch
extremes (or holds the fixed range TFLite gives LOGISTIC, SOFTMAX and
TANH outputs). `QuantizedLayer` is a Conv1D/Conv2D/DepthwiseConv2D/Dense
computed as TFLite's int8 kernel will: its kernel (with a following
BatchNormalization folded in, as the converter folds it) fake-quantized
symmetric per output channel on [-127, 127], ReLU/ReLU6 fused; a
`QuantizeRange` follows it in the graph.

Both are registered as `tfopt>...` serialisable classes when this module is
imported: `import tfopt` does it where Keras is loaded (`tfopt.keras3.saving`),
so plain `keras.saving.load_model` reads a QAT model's `.keras` file.
"""

import keras
import tensorflow as tf
from keras import ops

# The ranges' moving-average decay (TFMOT's MovingAverageQuantizer's).
_DECAY = 0.999
# A weight channel that is all zeros (a pruned channel) still needs a
# positive range: 1e-8 quantizes it to zeros.
_TINY = 1e-8

# The fixed output ranges of TFLite's int8 kernels: LOGISTIC and SOFTMAX
# output steps of 1/256 from 0, TANH steps of 1/128 around 0.
FIXED_RANGES = {
    "sigmoid": (0.0, 255 / 256),
    "softmax": (0.0, 255 / 256),
    "tanh": (-1.0, 127 / 128),
}
# Activations TFLite fuses into the convolution or fully connected op before it.
FUSED = {"linear": None, "relu": 0.0, "relu6": 6.0}


def _global_extremes(low, high):
    """The batch's (min, max) over every replica: each replica sees its part
    of the global batch, and the mean of per-replica extremes (what a
    mirrored variable's update would give) depends on the replica count."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return low, high
    both = context.all_gather(ops.reshape(ops.stack([low, high]), (1, 2)), axis=0)
    return ops.min(both[:, 0]), ops.max(both[:, 1])


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizeRange(keras.layers.Layer):
    """Fake-quantizes its input to int8 with a learned (or fixed) range.

    Training moves the range towards each batch's extremes (the first batch
    sets it), always including 0 so that zero is exact, as TFLite requires;
    inference uses the stored range. A range called at several places
    (`sites`; each call passes its `site`) is the union of what each place
    learned: the tensors TFLite must give one scale (a concatenation and its
    inputs) share one.

    Args:
        fixed: `(min, max)` to use instead of learning one, or None.
        sites: How many places call it. Defaults to 1.
    """

    def __init__(self, fixed=None, sites=1, **kwargs):
        super().__init__(**kwargs)
        self.fixed = None if fixed is None else tuple(float(v) for v in fixed)
        self.sites = int(sites)

    def build(self, input_shape):
        if self.fixed is not None:
            return
        settings = dict(trainable=False, aggregation="mean")
        # The range used: [-6, 6] (TFMOT's start) until a training batch sets it.
        self.range_min = self.add_weight(
            name="range_min",
            shape=(),
            initializer=keras.initializers.Constant(-6.0),
            **settings,
        )
        self.range_max = self.add_weight(
            name="range_max",
            shape=(),
            initializer=keras.initializers.Constant(6.0),
            **settings,
        )
        self.seen = self.add_weight(
            name="seen", shape=(), initializer="zeros", **settings
        )
        # What each site learned; 0 is in every range, so an unseen site's
        # zeros leave the union as it is.
        shape = (self.sites,)
        self.site_min = self.add_weight(
            name="site_min", shape=shape, initializer="zeros", **settings
        )
        self.site_max = self.add_weight(
            name="site_max", shape=shape, initializer="zeros", **settings
        )
        self.site_seen = self.add_weight(
            name="site_seen", shape=shape, initializer="zeros", **settings
        )

    def _learn(self, inputs, site):
        values = ops.cast(inputs, "float32")
        batch_low, batch_high = _global_extremes(
            ops.minimum(ops.min(values), 0.0), ops.maximum(ops.max(values), 0.0)
        )
        here = ops.one_hot(site, self.sites)
        first = ops.equal(self.site_seen, 0.0)
        low = ops.where(
            first, batch_low, self.site_min * _DECAY + batch_low * (1 - _DECAY)
        )
        high = ops.where(
            first, batch_high, self.site_max * _DECAY + batch_high * (1 - _DECAY)
        )
        self.site_min.assign(self.site_min * (1 - here) + low * here)
        self.site_max.assign(self.site_max * (1 - here) + high * here)
        self.site_seen.assign(ops.maximum(self.site_seen, here))
        self.range_min.assign(ops.min(self.site_min))
        self.range_max.assign(ops.max(self.site_max))
        self.seen.assign(1.0)
        return self.range_min, self.range_max

    def call(self, inputs, site=0, training=False):
        if self.fixed is not None:
            low, high = self.fixed
        elif training:
            low, high = self._learn(inputs, site)
        else:
            low, high = self.range_min, self.range_max
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs, low, high, num_bits=8
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "fixed": self.fixed, "sites": self.sites}


def quantized_kernel(kernel, kind):
    """`kernel` fake-quantized as TFLite stores it: int8 on [-127, 127], one
    scale per output channel (the last axis; a depthwise kernel's last two)
    for a convolution, one for all of a Dense kernel (the converter's
    FULLY_CONNECTED takes its kernel transposed, and a per-channel range
    then names the wrong axis)."""
    if kind == "Dense":
        bound = ops.maximum(ops.max(ops.abs(kernel)), _TINY)
        return keras.quantizers.fake_quant_with_min_max_vars(
            kernel, -bound, bound, num_bits=8, narrow_range=True
        )
    shape = ops.shape(kernel)
    depthwise = kind == "DepthwiseConv2D"
    flat = ops.reshape(kernel, (*shape[:-2], -1)) if depthwise else kernel
    axes = tuple(range(len(flat.shape) - 1))
    bound = ops.maximum(ops.max(ops.abs(flat), axis=axes), _TINY)
    quantized = keras.quantizers.fake_quant_with_min_max_vars(
        flat, -bound, bound, num_bits=8, narrow_range=True, axis=-1
    )
    return ops.reshape(quantized, shape) if depthwise else quantized


# The layers QuantizedLayer computes, by class name.
KINDS = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


@keras.saving.register_keras_serializable(package="tfopt")
class QuantizedLayer(keras.layers.Layer):
    """A Conv1D, Conv2D, DepthwiseConv2D or Dense as TFLite's int8 kernel
    computes it, with a BatchNormalization after it folded in.

    The batch norm's moving statistics are frozen (folded as the file folds
    them); its scale and offset, like the kernel and bias, keep training.

    Args:
        layer: The layer's config (`keras.layers.serialize`), its activation
            linear.
        batch_norm: The folded BatchNormalization's config, or None.
        activation: The fused activation, `linear`, `relu` or `relu6`.
        sparse: Keep the zeros the kernel has when built from weights
            (`preserve_sparsity`): a fixed mask multiplies it.
    """

    def __init__(
        self, layer, batch_norm=None, activation="linear", sparse=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.layer = keras.layers.deserialize(layer)
        self.batch_norm = (
            None if batch_norm is None else keras.layers.deserialize(batch_norm)
        )
        self.activation = activation
        self.sparse = sparse

    @property
    def depthwise(self):
        return type(self.layer).__name__ == "DepthwiseConv2D"

    def build(self, input_shape):
        # Deserialised sublayers come built (their configs carry their shapes).
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(output_shape)
        if self.sparse:
            self.mask = self.add_weight(
                name="sparsity_mask",
                shape=self.layer.kernel.shape,
                initializer="ones",
                trainable=False,
                aggregation="mean",
            )

    def folded(self):
        """(kernel, bias) as the file will hold them before quantization."""
        kernel = self.layer.kernel
        if self.sparse:
            # The mask's zeros get no gradient, so they stay zeros.
            kernel = kernel * self.mask
        channels = (
            kernel.shape[-2] * kernel.shape[-1] if self.depthwise else kernel.shape[-1]
        )
        bias = self.layer.bias if self.layer.use_bias else ops.zeros((channels,))
        norm = self.batch_norm
        if norm is not None:
            scale = ops.rsqrt(norm.moving_variance + norm.epsilon)
            if norm.scale:
                scale = scale * norm.gamma
            offset = -norm.moving_mean * scale
            if norm.center:
                offset = offset + norm.beta
            kernel = kernel * (
                ops.reshape(scale, kernel.shape[-2:]) if self.depthwise else scale
            )
            bias = bias * scale + offset
        return kernel, bias

    def call(self, inputs):
        layer = self.layer
        kind = type(layer).__name__
        kernel, bias = self.folded()
        kernel = quantized_kernel(kernel, kind)
        if kind == "Dense":
            outputs = ops.matmul(inputs, kernel)
        else:
            convolution = ops.depthwise_conv if self.depthwise else ops.conv
            outputs = convolution(
                inputs,
                kernel,
                strides=layer.strides,
                padding=layer.padding,
                data_format=layer.data_format,
                dilation_rate=layer.dilation_rate,
            )
        if kind != "Dense" and layer.data_format == "channels_first":
            bias = ops.reshape(bias, (-1,) + (1,) * (len(outputs.shape) - 2))
        outputs = outputs + bias
        if self.activation == "relu":
            outputs = ops.relu(outputs)
        elif self.activation == "relu6":
            outputs = ops.relu6(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "layer": keras.layers.serialize(self.layer),
            "batch_norm": None
            if self.batch_norm is None
            else keras.layers.serialize(self.batch_norm),
            "activation": self.activation,
            "sparse": self.sparse,
        }


def quantization_aware(layers):
    """Whether any of `layers` is one of a QAT model's."""
    return any(isinstance(layer, (QuantizeRange, QuantizedLayer)) for layer in layers)
