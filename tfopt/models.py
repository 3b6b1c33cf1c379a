"""Small reference models: functional classifiers with logits out, built
with Keras 3 (`keras_version=3`, the default: TensorFlow's `tf.keras`) or
tf_keras (`keras_version=2`, the Keras TFMOT takes).

`tfmot_mnist` is the model of TFMOT's "pruning in Keras" example, so results
can be compared with the published ones. `teacher_cnn` and `student_cnn` are
a distillation pair (267k and 20k parameters on 28x28 inputs), and
`resnet_tiny` gathers the layers that are hard for pruning and QAT: residual
adds, BatchNormalization and DepthwiseConv2D. `mobilenet_v2` is
`keras.applications.MobileNetV2` at width 0.35 (400k parameters),
resized to at least 32x32: the architecture people deploy, small enough to
train on the bundled data sets.
"""

import importlib

from tfopt.core import checks
from tfopt.core.kerases import Keras

# Keras version -> the module that builds it; imported when first asked for,
# so building Keras 3 models never loads tf_keras.
KERASES = {keras.value: keras for keras in Keras}  # keras_version -> Keras
# Keras's default 0.99 needs thousands of steps before the moving statistics
# (used at inference) match the data; the small bundled data sets give
# hundreds, so a model would evaluate at chance after a few epochs.
_BN_MOMENTUM = 0.9


def _batch_norm(keras, name):
    # Keras 3 leaves each replica's moving statistics to itself (they drift
    # apart under a strategy); `synchronized=True` all-reduces the batch
    # statistics, so every replica and worker keeps the same ones, as
    # tf_keras's mean-aggregated statistics do.
    keras3 = Keras.from_version(keras.__version__) is Keras.KERAS3
    extra = {"synchronized": True} if keras3 else {}
    return keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=name, **extra)


def keras_module(keras):
    """The Keras module of `keras` (a `Keras`, or its version: 2 for
    tf_keras as tfopt binds it, 3 for Keras 3), imported on first use."""
    if Keras(keras) is Keras.KERAS3:
        return importlib.import_module("keras")
    return importlib.import_module("tfopt.keras2.binding").keras


def _inputs(keras, input_shape):
    return keras.Input(shape=input_shape, name="image")


def _with_channels(input_shape):
    return tuple(input_shape) if len(input_shape) == 3 else (*input_shape, 1)


def _tfmot_mnist(keras, input_shape, num_classes):
    layers = keras.layers
    inputs = _inputs(keras, input_shape)
    x = layers.Reshape(_with_channels(input_shape), name="reshape")(inputs)
    x = layers.Conv2D(12, 3, activation="relu", name="conv2d")(x)
    x = layers.MaxPooling2D(2, name="max_pooling2d")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, name="dense")(x)
    return keras.Model(inputs, outputs, name="tfmot_mnist")


def _conv_bn_relu(keras, x, filters, name):
    layers = keras.layers
    # The convolution's bias is redundant before BatchNormalization.
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(
        x
    )
    x = _batch_norm(keras, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _teacher_cnn(keras, input_shape, num_classes):
    layers = keras.layers
    inputs = _inputs(keras, input_shape)
    x = layers.Reshape(_with_channels(input_shape), name="reshape")(inputs)
    x = _conv_bn_relu(keras, x, 32, "block1a")
    x = _conv_bn_relu(keras, x, 32, "block1b")
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = _conv_bn_relu(keras, x, 64, "block2a")
    x = _conv_bn_relu(keras, x, 64, "block2b")
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="teacher_cnn")


def _student_cnn(keras, input_shape, num_classes):
    layers = keras.layers
    inputs = _inputs(keras, input_shape)
    x = layers.Reshape(_with_channels(input_shape), name="reshape")(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="student_cnn")


def _residual_block(keras, x, filters, stride, name):
    layers = keras.layers
    shortcut = x
    y = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    y = _batch_norm(keras, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
    y = _batch_norm(keras, name=f"{name}_pw_bn")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_proj"
        )(x)
        shortcut = _batch_norm(keras, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _resnet_tiny(keras, input_shape, num_classes):
    layers = keras.layers
    inputs = _inputs(keras, input_shape)
    x = layers.Reshape(_with_channels(input_shape), name="reshape")(inputs)
    x = _conv_bn_relu(keras, x, 16, "stem")
    x = _residual_block(keras, x, 16, 1, "res1")
    x = _residual_block(keras, x, 32, 2, "res2")
    x = _residual_block(keras, x, 32, 1, "res3")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet_tiny")


def _mobilenet_v2(keras, input_shape, num_classes):
    layers = keras.layers
    inputs = _inputs(keras, input_shape)
    x = layers.Reshape(_with_channels(input_shape), name="reshape")(inputs)
    height, width = input_shape[:2]
    if min(height, width) < 32:  # the application's smallest input
        height, width = max(height, 32), max(width, 32)
        x = layers.Resizing(height, width, name="resize")(x)
    # Built on the tensor, so the result is one flat functional model.
    model = keras.applications.MobileNetV2(
        input_tensor=x,
        alpha=0.35,
        weights=None,
        classes=num_classes,
        classifier_activation=None,
    )
    result = keras.Model(inputs, model.output, name="mobilenet_v2")
    for layer in result.layers:  # the application's 0.999: see _BN_MOMENTUM
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = _BN_MOMENTUM
            if hasattr(layer, "synchronized"):  # Keras 3: see _batch_norm
                layer.synchronized = True
    return result


BUILDERS = {
    "tfmot_mnist": _tfmot_mnist,
    "teacher_cnn": _teacher_cnn,
    "student_cnn": _student_cnn,
    "resnet_tiny": _resnet_tiny,
    "mobilenet_v2": _mobilenet_v2,
}


def build(name, input_shape, num_classes, *, keras_version=3):
    """Builds a reference model, freshly initialized.

    Args:
        name: One of `BUILDERS`: `tfmot_mnist`, `teacher_cnn`, `student_cnn`,
            `resnet_tiny`, `mobilenet_v2`.
        input_shape: `(height, width)` or `(height, width, channels)`, e.g.
            `DatasetInfo.input_shape`.
        num_classes: Number of output logits, at least 2.
        keras_version: `3` (Keras 3, the `keras` package, which is
            TensorFlow's `tf.keras`) or `2` (tf_keras, the Keras TFMOT
            takes). Defaults to `3`.

    Returns:
        A functional Model of that Keras that outputs logits (no softmax).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `name` is unknown or a shape or count is out of range.

    Example:

    >>> import tfopt
    >>> tfopt.models.build("tfmot_mnist", (28, 28, 1), 10).count_params()
    20410
    """
    checks.check_name(name, "name", BUILDERS)
    if not isinstance(input_shape, (tuple, list)) or not all(
        checks.is_int(d) for d in input_shape
    ):
        raise TypeError(
            "`input_shape` must be a tuple of ints such as (28, 28, 1). "
            f"Received: input_shape={input_shape!r}"
        )
    if len(input_shape) not in (2, 3) or min(input_shape) < 1:
        raise ValueError(
            "`input_shape` must be (height, width) or (height, width, "
            f"channels) of positive ints. Received: input_shape={input_shape!r}"
        )
    checks.check_int(num_classes, "num_classes", minimum=2)
    checks.check_choice(keras_version, "keras_version", tuple(KERASES))
    return BUILDERS[name](
        keras_module(keras_version),
        tuple(int(d) for d in input_shape),
        int(num_classes),
    )
