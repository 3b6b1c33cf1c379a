import warnings

import numpy as np
import pytest

import tfopt
from tests.support import cluster, helpers
from tests.support.helpers import compiled
from tfopt import keras, models
from tfopt.keras2 import ranges, rewrite

L = keras.layers


def _trained(name, data, epochs=2):
    keras.utils.set_random_seed(0)
    model = compiled(models.build(name, data.info.input_shape, 10, keras_version=2))
    model.fit(data.train, epochs=epochs, verbose=0)
    return model


def _quantize_quietly(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tfopt.quantize(model, **kwargs)


def _awkward():
    """A Dense, an Add, a BatchNormalization after the Add and a Lambda: the
    last two are beyond TFMOT's 8-bit scheme."""
    inputs = keras.Input((8,))
    x = L.Dense(8, name="dense_a")(inputs)
    x = L.Add(name="add")([x, inputs])
    x = L.BatchNormalization(name="bn_after_add")(x)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    return keras.Model(inputs, L.Dense(3, name="dense_b")(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tfmot_mnist", "resnet_tiny"])
def test_qat_fine_tuning_trains_and_leaves_the_input_alone(digits, name):
    model = _trained(name, digits, epochs=1)
    before = [w.copy() for w in model.get_weights()]
    qat = compiled(tfopt.quantize(model), 1e-3)
    assert qat.tfopt_skipped_layers == ()
    assert sum("QuantizeWrapper" in type(layer).__name__ for layer in qat.layers) >= 4
    history = qat.fit(digits.train, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unsupported_layers_are_skipped_and_reported():
    with pytest.warns(
        UserWarning,
        match=(
            r"^quantize: TFMOT cannot quantize \['bn_after_add "
            r"\(BatchNormalization\)', 'double \(Lambda\)'\]; they stay in float "
            r"\(bn_after_add: TFMOT cannot fold it into a neighbouring layer; "
            r"double: arbitrary TensorFlow code that TFMOT cannot quantize\).$"
        ),
    ):
        qat = tfopt.quantize(_awkward())
    assert qat.tfopt_skipped_layers == (
        "bn_after_add (BatchNormalization)",
        "double (Lambda)",
    )
    kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert kinds["bn_after_add"] == "BatchNormalization"
    assert kinds["double"] == "Lambda"
    assert kinds["quant_dense_a"] == "QuantizeWrapperV2"
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    assert qat(x).shape == (4, 3)


def test_skip_unsupported_false_names_each_layer():
    with pytest.raises(
        ValueError,
        match=(
            r"^TFMOT cannot quantize these layers: \['bn_after_add "
            r"\(BatchNormalization\)', 'double \(Lambda\)'\]. Exclude them, or pass "
            r"skip_unsupported=True to leave them in float. "
            r"Received: skip_unsupported=False$"
        ),
    ):
        tfopt.quantize(_awkward(), skip_unsupported=False)


def test_excluded_and_selected_layers(digits):
    base = models.build("tfmot_mnist", digits.info.input_shape, 10, keras_version=2)
    qat = _quantize_quietly(base, exclude=["dense"])
    kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert kinds["dense"] == "Dense" and kinds["quant_conv2d"] == "QuantizeWrapperV2"
    only = _quantize_quietly(base, layers=[L.Conv2D])
    kinds = {layer.name: type(layer).__name__ for layer in only.layers}
    assert kinds["quant_conv2d"] == "QuantizeWrapperV2"
    assert kinds["dense"] == "Dense" and kinds["flatten"] == "Flatten"


def test_nested_models_are_flattened(digits):
    inner = models.build("tfmot_mnist", digits.info.input_shape, 10, keras_version=2)
    inputs = keras.Input(digits.info.input_shape)
    outer = keras.Model(inputs, L.Dense(4, name="head")(inner(inputs)))
    qat = tfopt.quantize(outer)
    names = [layer.name for layer in qat.layers]
    assert {"quant_conv2d", "quant_dense", "quant_head"} <= set(names)
    for name, source in (
        ("quant_conv2d", inner.get_layer("conv2d")),
        ("quant_head", outer.get_layer("head")),
    ):
        [kernel] = [
            w for w in qat.get_layer(name).weights if w.name.endswith("/kernel:0")
        ]
        np.testing.assert_array_equal(kernel.numpy(), source.kernel.numpy())


def test_pruned_model_is_stripped_first_with_a_warning(digits):
    pruned = tfopt.prune(
        models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2), 0.5
    )
    with pytest.warns(
        UserWarning,
        match=(
            r"^quantize: `model` still has pruning wrappers; stripping them "
            r"\(tfopt.strip\) before QAT. Pass preserve_sparsity=True to keep its "
            r"zeros through QAT.$"
        ),
    ):
        qat = tfopt.quantize(pruned)
    assert not any("Prune" in type(layer).__name__ for layer in qat.layers)


@pytest.fixture(scope="module")
def pruned_and_stripped(digits):
    keras.utils.set_random_seed(0)
    model = compiled(
        tfopt.prune(
            models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2), 0.6, end=1.0
        )
    )
    model.fit(digits.train, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()])
    return tfopt.strip(model)


def test_preserve_sparsity_keeps_the_zeros_through_fine_tuning(
    digits, pruned_and_stripped
):
    before = tfopt.sparsity_report(pruned_and_stripped).sparsity
    assert before == pytest.approx(0.6, abs=0.01)
    kept = compiled(tfopt.quantize(pruned_and_stripped, preserve_sparsity=True))
    kept.fit(digits.train, epochs=2, verbose=0)
    assert tfopt.sparsity_report(kept).sparsity == pytest.approx(before, abs=0.01)
    # Without the prune-preserving scheme the zeros fill back in.
    lost = compiled(tfopt.quantize(pruned_and_stripped))
    lost.fit(digits.train, epochs=2, verbose=0)
    assert tfopt.sparsity_report(lost).sparsity < before - 0.3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_builds_a_float32_qat_model_that_trains(digits, policy):
    try:
        keras.mixed_precision.set_global_policy(policy)
        model = models.build(
            "tfmot_mnist", digits.info.input_shape, 10, keras_version=2
        )
        assert model.layers[2].compute_dtype != "float32"
        qat = compiled(tfopt.quantize(model))
        assert keras.mixed_precision.global_policy().name == policy
        assert {layer.compute_dtype for layer in qat.layers} == {"float32"}
        history = qat.fit(digits.train.take(5), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_ranges_and_weights_equal_on_default_and_mirrored(mirrored):
    single = helpers.train_qat(tfopt.get_strategy("default"))
    double = helpers.train_qat(mirrored)
    assert any("post_activation_max" in name for name, _ in single)
    for (name, a), (_, b) in zip(single, double, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_ranges_and_weights_equal_on_two_worker_processes():
    first, second = cluster.run_workers(helpers.qat_multi_worker_job)
    single = helpers.train_qat(tfopt.get_strategy("default"))
    for (name, a), (_, b), (_, c) in zip(single, first, second, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(b, c, err_msg=name)


class _Subclassed(keras.Model):
    def call(self, inputs):
        return inputs


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"layers": "dense"}, TypeError, r"Received: layers='dense'$"),
        (
            {"exclude": ["nope"]},
            ValueError,
            r"^`exclude` names 'nope', which matches no layer of the model",
        ),
        (
            {"preserve_sparsity": "yes"},
            TypeError,
            r"^`preserve_sparsity` must be a bool. Received: preserve_sparsity='yes'$",
        ),
        (
            {"skip_unsupported": None},
            TypeError,
            r"^`skip_unsupported` must be a bool. Received: skip_unsupported=None$",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.quantize(
            models.build("tfmot_mnist", (8, 8), 10, keras_version=2), **kwargs
        )


def test_bad_models_are_refused(keras3):
    # A Keras 3 model goes to tfopt's own QAT (tests/test_k3_quantization.py).
    sequential = keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)])
    assert type(tfopt.quantize(sequential).layers[-2]).__name__ == "QuantizedLayer"
    model = _Subclassed()
    model(np.zeros((1, 2), np.float32))
    with pytest.raises(
        TypeError,
        match=(
            r"subclassed model \(_Subclassed\) hides its layer graph. Either apply "
            r"quantization to its layers"
        ),
    ):
        tfopt.quantize(model)
    qat = tfopt.quantize(models.build("tfmot_mnist", (8, 8), 10, keras_version=2))
    with pytest.raises(ValueError, match=r"^`model` is already quantization-aware"):
        tfopt.quantize(qat)


def test_a_nested_model_called_twice_cannot_be_flattened():
    inner = keras.Sequential(
        [keras.Input((4,)), L.Dense(4, name="shared")], name="block"
    )
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, L.Add()([inner(inputs), inner(inputs)]))
    with pytest.raises(
        ValueError,
        match=(
            r"^Nested model 'block' is called 2 times; only models called once can "
            r"be flattened.$"
        ),
    ):
        tfopt.quantize(outer)


def _raw_tfmot_untouched_job(directory):
    import os

    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quant_ops,
        quantize_layer,
        quantize_wrapper,
    )

    def snapshot():
        return {
            "MovingAvgQuantize": quant_ops.MovingAvgQuantize,
            "AllValuesQuantize": quant_ops.AllValuesQuantize,
            **{
                f"QuantizeLayer.{name}": getattr(quantize_layer.QuantizeLayer, name)
                for name in ("build", "build_from_config", "call")
            },
            **{
                f"QuantizeWrapperV2.{name}": getattr(
                    quantize_wrapper.QuantizeWrapperV2, name
                )
                for name in (
                    "build",
                    "call",
                    "save_own_variables",
                    "load_own_variables",
                )
            },
        }

    before = snapshot()
    import tfopt

    # Everything tfopt's QAT does, in this process.
    tfopt.quantize(tfopt.models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2))
    changed = [name for name, value in snapshot().items() if value is not before[name]]

    def raw_qat():
        tf_keras.utils.set_random_seed(len(changed))
        base = tf_keras.Sequential(
            [tf_keras.Input((6,)), tf_keras.layers.Dense(4), tf_keras.layers.Dense(1)]
        )
        return tfmot.quantization.keras.quantize_model(base)

    saved = raw_qat()
    kinds = sorted(
        {f"{type(layer).__module__}.{type(layer).__name__}" for layer in saved.layers}
    )
    saved(np.ones((2, 6), np.float32), training=True)  # moves the ranges
    path = os.path.join(directory, "raw.weights.h5")
    saved.save_weights(path)
    loaded = raw_qat()
    loaded.load_weights(path)
    equal = all(
        np.array_equal(a, b)
        for a, b in zip(saved.get_weights(), loaded.get_weights(), strict=True)
    )
    return changed, kinds, equal, len(saved.get_weights())


@pytest.mark.slow
def test_importing_tfopt_leaves_raw_tfmot_untouched(tmp_path):
    [(changed, kinds, equal, count)] = cluster.run_processes(
        _raw_tfmot_untouched_job, [{}], str(tmp_path)
    )
    assert changed == []
    # A raw quantize_model is built of TFMOT's own classes, and its
    # .weights.h5 round-trips as it does without tfopt.
    assert kinds == [
        "tensorflow_model_optimization.python.core.quantization.keras."
        "quantize_layer.QuantizeLayer",
        "tensorflow_model_optimization.python.core.quantization.keras."
        "quantize_wrapper.QuantizeWrapperV2",
    ]
    assert equal and count > 0


def test_tfopt_qat_layers_are_its_subclasses_with_global_ranges():
    from tfopt.keras2 import tfmot as _tfmot

    qat = _quantize_quietly(models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2))
    kinds = {type(layer) for layer in qat.layers if "quant" in layer.name}
    assert kinds == {_tfmot.QuantizeLayer, _tfmot.QuantizeWrapperV2}
    quantizers = (
        [qat.layers[1].quantizer]
        + [
            a.quantizer
            for layer in qat.layers
            for a in getattr(layer, "_quantize_activations", [])
        ]
        + [q for layer in qat.layers for q in getattr(layer, "_output_quantizers", [])]
    )
    assert quantizers and {type(q) for q in quantizers} <= {
        _tfmot.GlobalRangeAllValuesQuantizer,
        _tfmot.GlobalRangeMovingAverageQuantizer,
    }


class _Scale(keras.layers.Layer):
    """A custom layer its author never registered."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def test_an_unregistered_custom_layer_stays_float_and_is_listed(tmp_path):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="a")(inputs)
    x = _Scale(3.0, name="scale")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(x))
    with pytest.warns(
        UserWarning, match=r"TFMOT cannot quantize \['scale \(_Scale\)'\]"
    ):
        qat = tfopt.quantize(model)
    assert qat.tfopt_skipped_layers == ("scale (_Scale)",)
    assert qat.tfopt_float_reasons == {
        "scale": "a custom layer: annotate it with a tfmot QuantizeConfig"
    }
    scale = qat.get_layer("scale")
    assert type(scale) is _Scale and scale.factor == 3.0  # unwrapped, as it was
    path = tmp_path / "custom.tflite"
    tfopt.export_tflite(qat, str(path), quantization="int8")
    assert path.stat().st_size > 0


def _modern_blocks():
    """An input Rescaling, Conv+BN, SeparableConv+BN and a squeeze-excite
    Multiply: what MobileNetV3/EfficientNet/Xception are built of."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.ReLU(name="relu1")(layers.BatchNormalization(name="bn1")(x))
    x = layers.SeparableConv2D(16, 3, padding="same", name="separable")(x)
    x = layers.ReLU(name="relu2")(layers.BatchNormalization(name="bn2")(x))
    s = layers.GlobalAveragePooling2D(name="squeeze")(x)
    s = layers.Dense(4, activation="relu", name="reduce")(s)
    s = layers.Dense(16, activation="sigmoid", name="expand")(s)
    x = layers.Multiply(name="excite")([x, layers.Reshape((1, 1, 16))(s)])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


@pytest.mark.slow
def test_modern_blocks_are_integer_end_to_end(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _modern_blocks()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (128, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left in float
        qat = tfopt.quantize(model)
    assert qat.tfopt_skipped_layers == ()
    # The Rescaling became an equal, frozen 1x1 depthwise convolution.
    rescale = qat.get_layer("quant_rescale")
    assert type(rescale.layer).__name__ == "DepthwiseConv2D"
    assert not rescale.layer.trainable
    # ... which computes what the Rescaling did (a model without BatchNorm,
    # whose QAT training-mode pass is the float model's up to rounding).
    plain = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),
            keras.layers.Conv2D(4, 3),
            keras.layers.Flatten(),
        ]
    )
    # (8-bit steps of about 0.016 over 27 inputs; a wrong scale or offset
    # would be off by about 1.)
    np.testing.assert_allclose(
        tfopt.quantize(plain)(x[:8], training=True), plain(x[:8]), atol=0.1
    )
    compiled(qat).fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "blocks.tflite"
    tfopt.export_tflite(qat, str(path), quantization="int8")
    ops = tfopt.export.tflite_ops(str(path))
    assert (ops.quantize, ops.dequantize, ops.float_ops) == (1, 1, ()), ops.counts
    assert ops.counts["DEPTHWISE_CONV_2D"] == 2 and ops.counts["MUL"] == 1
    # The int8 file computes what the QAT model does: its outputs are within
    # two of the output's quantization steps of the QAT model's. (Argmax
    # agreement is no test here: the barely trained logits span a few
    # steps, so most examples are ties.)
    int8, step = _tflite_outputs(path, x[:32])
    assert np.abs(int8 - qat.predict(x[:32], verbose=0)).max() <= 2 * step + 1e-6
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    assert tfopt.evaluate_tflite(str(path), data).examples == 128


def _tflite_outputs(path, x):
    """The float outputs of the `.tflite` file at `path` for each example of
    `x` (batch 1), and the output's quantization step."""
    from tfopt.core import tflite as export

    interpreter = export.open_interpreter(str(path))
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], (1, *x.shape[1:]))
    interpreter.allocate_tensors()
    target = interpreter.get_output_details()[0]
    outputs = []
    for example in x:
        interpreter.set_tensor(source["index"], export.to_input(example[None], source))
        interpreter.invoke()
        outputs.append(
            export.from_output(interpreter.get_tensor(target["index"]), target)[0]
        )
    # The output is float: the step is that of the DEQUANTIZE's int8 input.
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    (step,) = [
        tensors[op["inputs"][0]]["quantization"][0]
        for op in export.ops_details(interpreter)
        if op["op_name"] == "DEQUANTIZE" and op["outputs"][0] == target["index"]
    ]
    return np.array(outputs), step


def _int8_ops(qat, x, path):
    """Fine-tunes `qat` for an epoch on `x`, exports it to int8 at `path`
    and returns the file's `tflite_ops`."""
    compiled(qat).fit(x, np.zeros(len(x)), epochs=1, verbose=0)
    tfopt.export_tflite(qat, str(path), quantization="int8")
    return tfopt.export.tflite_ops(str(path))


@pytest.mark.slow
def test_hard_swish_arithmetic_is_integer_end_to_end(tmp_path):
    # MobileNetV3's hard-swish: TensorFlow ops with constants on Keras
    # tensors, i.e. TFOpLambda layers TFMOT's wrapper cannot call.
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    gate = layers.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)
    x = layers.Multiply(name="hard_swish")([x, gate])
    x = layers.GlobalAveragePooling2D()(x - 1.0)
    model = keras.Model(inputs, layers.Dense(4, name="logits")(x))
    assert sum(type(layer).__name__ == "TFOpLambda" for layer in model.layers) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = tfopt.quantize(model)
    ops = [
        layer.layer
        for layer in qat.layers
        if type(getattr(layer, "layer", None)).__name__ == "ScalarOp"
    ]
    assert sorted((op.op, round(op.constant, 4)) for op in ops) == [
        ("add", -1.0),
        ("add", 3.0),
        ("multiply", 0.1667),
    ]
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    found = _int8_ops(qat, x, tmp_path / "hard_swish.tflite")
    assert (found.quantize, found.dequantize, found.float_ops) == (1, 1, ()), (
        found.counts
    )
    qat.save(tmp_path / "hard_swish.keras")  # ScalarOp and its config load
    again = tfopt.load_model(str(tmp_path / "hard_swish.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), qat.predict(x, verbose=0))


@keras.utils.register_keras_serializable(package="tests")
class LayerScale(keras.layers.Layer):
    """ConvNeXt's layer scale (tf_keras.applications.convnext.LayerScale)."""

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],))

    def call(self, inputs):
        return inputs * self.gamma


def _residual_swish_block():
    """EfficientNet's squeeze-excite with a swish inside a Conv, and
    ConvNeXt's LayerScale and `x + residual` TensorFlow op."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", activation="swish", name="conv")(inputs)
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(2, 1, activation="swish", name="se_reduce")(s)
    s = layers.Conv2D(4, 1, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="excite")([x, s])
    x = LayerScale(name="layer_scale")(x)
    x = inputs + x  # a TFOpLambda of two tensors
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


@pytest.mark.slow
def test_swish_layer_scale_and_residual_ops_are_integer_end_to_end(tmp_path):

    keras.utils.set_random_seed(0)
    model = _residual_swish_block()
    model.get_layer("layer_scale").set_weights([np.array([0.5, 1, 2, 3], "f")])
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 4)).astype(np.float32)
    copy = rewrite.quantizable_copy(model)
    kinds = {layer.name: type(layer).__name__ for layer in copy.layers}
    # Each swish is its sigmoid and a Multiply; each sigmoid a layer.
    assert kinds["conv_swish"] == kinds["se_reduce_swish"] == "Multiply"
    assert kinds["conv_sigmoid"] == kinds["se_expand_sigmoid"] == "Activation"
    assert copy.get_layer("conv").activation.__name__ == "linear"
    assert copy.get_layer("se_expand").activation.__name__ == "linear"
    assert (
        type(
            tfopt.quantize(model).get_layer("quant_conv_sigmoid").quantize_config
        ).__name__
        == "SigmoidQuantizeConfig"
    )
    assert kinds["layer_scale"] == "DepthwiseConv2D"
    assert copy.get_layer("layer_scale").trainable
    (residual,) = [
        layer.name for layer in model.layers if type(layer).__name__ == "TFOpLambda"
    ]
    assert kinds[residual] == "Add"
    np.testing.assert_allclose(copy(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.get_layer("conv").activation.__name__ == "swish"  # untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = tfopt.quantize(model)
    found = _int8_ops(qat, x, tmp_path / "block.tflite")
    assert (found.quantize, found.dequantize, found.float_ops) == (1, 1, ()), (
        found.counts
    )
    # Its configs and layers (sigmoid, Multiply, the LayerScale's depthwise)
    # are registered: the .keras file loads.
    qat.save(tmp_path / "block.keras")
    again = tfopt.load_model(str(tmp_path / "block.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), qat.predict(x, verbose=0))


def _dense_block():
    """DenseNet's pattern: a padded max pool, then Concatenates each feeding
    the next one and a BatchNormalization, and a transition convolution
    followed by average pooling."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.MaxPooling2D(3, 1, name="stem_pool")(layers.ZeroPadding2D(name="pad")(x))
    for block in range(3):
        y = layers.ReLU()(layers.BatchNormalization(name=f"bn{block}")(x))
        y = layers.Conv2D(4, 3, padding="same", use_bias=False, name=f"conv{block}")(y)
        x = layers.Concatenate(name=f"concat{block}")([x, y])
    x = layers.ReLU()(layers.BatchNormalization(name="transition_bn")(x))
    x = layers.Conv2D(8, 1, use_bias=False, name="transition")(x)
    x = layers.AveragePooling2D(2, name="pool")(x)
    return keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))


@pytest.mark.slow
def test_dense_blocks_share_one_range_and_export_with_no_rescale(tmp_path):

    keras.utils.set_random_seed(0)
    model = _dense_block()
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 4)).astype(np.float32)
    compiled(model).fit(x, np.zeros(64), epochs=2, verbose=0)  # BN statistics
    copy = rewrite.quantizable_copy(model)
    kinds = {layer.name: type(layer).__name__ for layer in copy.layers}
    # Each BN after a Concatenate is its inference-time affine map, trainable;
    # the one after a convolution stays, for TFMOT to fold.
    assert [kinds[f"bn{b}"] for b in range(3)] == ["DepthwiseConv2D"] * 3
    assert kinds["transition_bn"] == "DepthwiseConv2D"
    assert kinds["stem_bn"] == "BatchNormalization"
    assert copy.get_layer("bn0").trainable
    np.testing.assert_allclose(copy(x), model(x), rtol=1e-4, atol=1e-5)
    # The padding, the pool and the first two Concatenates take the last
    # one's range, as do the layers feeding them.
    followers, producers = ranges.shared_ranges(copy)
    assert followers == {"pad", "stem_pool", "concat0", "concat1"}
    assert producers == {"stem_relu", "conv0", "conv1", "conv2"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = tfopt.quantize(model)

    def output_ranges(name):
        return len(qat.get_layer(f"quant_{name}")._output_quantizers)

    assert [output_ranges(f"concat{b}") for b in range(3)] == [0, 0, 1]
    assert output_ranges("stem_relu") == 0
    conv = qat.get_layer("quant_conv0")
    assert not conv.quantize_config.get_activations_and_quantizers(conv.layer)
    assert type(qat.get_layer("quant_pool").quantize_config).__name__ == (
        "InputRangeQuantizeConfig"
    )
    # The export once failed: "'tfl.average_pool_2d' op quantization
    # parameters violate the same scale constraint"; then it rescaled the
    # running feature map before each Concatenate and after the padding.
    found = _int8_ops(qat, x, tmp_path / "dense.tflite")
    assert (found.quantize, found.dequantize, found.float_ops) == (1, 1, ()), (
        found.counts
    )
    assert found.requantize == 0
    int8, step = _tflite_outputs(tmp_path / "dense.tflite", x[:16])
    assert np.abs(int8 - qat.predict(x[:16], verbose=0)).max() <= 3 * step + 1e-6
    qat.save(tmp_path / "dense.keras")  # the range-less configs load
    again = tfopt.load_model(str(tmp_path / "dense.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), qat.predict(x, verbose=0))


@pytest.mark.slow
def test_prune_preserving_qat_shares_ranges_and_keeps_the_zeros(tmp_path):
    keras.utils.set_random_seed(0)
    model = _dense_block()
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 4)).astype(np.float32)
    pruned = tfopt.prune(model, 0.5, end=1.0)
    compiled(pruned).fit(
        x, np.zeros(64), epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    stripped = tfopt.strip(pruned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = tfopt.quantize(stripped, preserve_sparsity=True)
    found = _int8_ops(qat, x, tmp_path / "dense.tflite")
    assert (found.quantize, found.requantize, found.float_ops) == (1, 0, ()), (
        found.counts
    )
    # conv0-2 lost their output ranges and kept their zeros through fit.
    before = tfopt.sparsity_report(stripped).sparsity
    assert before > 0.4
    assert tfopt.sparsity_report(qat).sparsity == pytest.approx(before, abs=0.01)


def test_a_group_with_two_last_concatenations_keeps_its_ranges():

    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    pooled = layers.MaxPooling2D(2, name="pool")(layers.Conv2D(4, 1)(inputs))
    left = layers.Concatenate(name="left")([pooled, layers.Conv2D(4, 1)(pooled)])
    right = layers.Concatenate(name="right")([pooled, layers.Conv2D(2, 1)(pooled)])
    model = keras.Model(
        inputs, layers.Add()([layers.Conv2D(3, 1)(left), layers.Conv2D(3, 1)(right)])
    )
    # Which of the two ranges the pool should take is not clear: none changes.
    assert ranges.shared_ranges(model) == (set(), set())


@pytest.mark.slow
def test_inception_resnet_scaled_sums_are_integer_and_pqat_takes_them(tmp_path):
    from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    residual = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = CustomScaleLayer(0.17, name="block")([inputs, residual])
    x = layers.GlobalAveragePooling2D()(layers.Activation("relu")(x))
    model = keras.Model(inputs, layers.Dense(3)(x))
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 4)).astype(np.float32)
    copy = rewrite.quantizable_copy(model)
    assert type(copy.get_layer("block")).__name__ == "Add"
    assert copy.get_layer("block_scale").constant == pytest.approx(0.17)
    np.testing.assert_allclose(copy(x), model(x), rtol=1e-6)
    # TFMOT's prune-preserving registry once failed here: "get_quantize_config()
    # called on an unsupported layer" for the weightless layer before a Dense.
    for preserve_sparsity in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            qat = tfopt.quantize(model, preserve_sparsity=preserve_sparsity)
    found = _int8_ops(qat, x, tmp_path / "scaled.tflite")
    assert (found.quantize, found.dequantize, found.float_ops) == (1, 1, ()), (
        found.counts
    )


def test_layer_norm_stays_float_with_its_reason():
    inputs = keras.Input((6,))
    x = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.warns(UserWarning, match=r"norm: TFLite has no int8 layer-norm kernel"):
        qat = tfopt.quantize(model)
    assert qat.tfopt_float_reasons == {
        "norm": "TFLite has no int8 layer-norm kernel, and its MEAN/RSQRT "
        "decomposition has no ranges"
    }


def test_prune_preserving_qat_leaves_a_weightless_lambda_float():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, name="a")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(x))
    with pytest.warns(UserWarning, match=r"\['double \(Lambda\)'\]"):
        qat = tfopt.quantize(model, preserve_sparsity=True)
    assert qat.tfopt_skipped_layers == ("double (Lambda)",)


@pytest.mark.slow
def test_depthwise_kernels_get_one_range_per_channel_as_in_tflite(tmp_path):
    import tensorflow as tf

    from tfopt.keras2 import tfmot as _tfmot

    # Channel 1 is channel 0 times 0.01: with one range per channel it is
    # quantized to exactly 0.01 times channel 0's grid; with TFMOT's (one
    # range over the multiplier axis, i.e. all channels) it is mostly zero.
    rng = np.random.default_rng(0)
    first = rng.uniform(-1, 1, (3, 3, 1, 1)).astype(np.float32)
    kernel = tf.constant(np.concatenate([first, 0.01 * first], axis=2))
    holder = keras.layers.Layer()
    for quantizer, close in (
        (_tfmot.DepthwiseKernelQuantizer(), True),
        (
            _tfmot._quantizers.LastValueQuantizer(
                8, per_axis=True, symmetric=True, narrow_range=True
            ),
            False,
        ),
    ):
        weights = quantizer.build(kernel.shape, f"k{close}", holder)
        if not close:  # TFMOT's conv weight quantizer: one range per last axis
            weights = {
                key: holder.add_weight(f"{key}x", shape=(1,), trainable=False)
                for key in ("min_var", "max_var")
            }
        out = quantizer(kernel, True, weights).numpy()
        ratio = out[:, :, 1] / np.where(out[:, :, 0] == 0, 1, out[:, :, 0])
        assert np.allclose(ratio, 0.01, rtol=1e-4) == close
    # The QAT model uses it, and saves and loads with it.
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    qat = tfopt.quantize(model)
    wrapper = qat.get_layer("quant_dw")
    assert type(wrapper.quantize_config).__name__ == "DepthwiseQuantizeConfig"
    assert sorted(
        tuple(v.shape) for v in wrapper.weights if "depthwise_kernel_m" in v.name
    ) == [(4,), (4,)]
    x = rng.normal(size=(32, 8, 8, 4)).astype(np.float32)
    found = _int8_ops(qat, x, tmp_path / "dw.tflite")
    assert (found.quantize, found.dequantize, found.float_ops) == (1, 1, ())
    qat.save(tmp_path / "dw.keras")
    again = tfopt.load_model(str(tmp_path / "dw.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), qat.predict(x, verbose=0))


def test_rewrites_see_a_pruned_and_stripped_copy_as_its_own_graph():
    from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    # prune and strip share the layers they do not wrap (BN, CustomScale)
    # with the model they copy: each has a node in every copy. The BN after
    # a conv once looked sourceless, and became a depthwise conv, unfolded.
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = CustomScaleLayer(0.2, name="block")([inputs, x])
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    stripped = tfopt.strip(tfopt.prune(model, 0.5))
    assert len(stripped.get_layer("bn").inbound_nodes) > 1
    kinds = {
        layer.name: type(layer).__name__
        for layer in rewrite.quantizable_copy(stripped).layers
    }
    assert kinds["bn"] == "BatchNormalization"
    assert (kinds["block"], kinds["block_scale"]) == ("Add", "ScalarOp")


def test_a_layer_named_layer_scale_that_is_not_one_stays_as_it_is():

    @keras.utils.register_keras_serializable(package="tests")
    class OtherScale(LayerScale):
        def call(self, inputs):
            return inputs * self.gamma + 1.0

    OtherScale.__name__ = "LayerScale"
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, OtherScale(name="scale")(inputs))
    copy = rewrite.quantizable_copy(model)
    assert type(copy.get_layer("scale")).__name__ == "LayerScale"


def test_scalar_op_round_trips_and_checks_its_op():

    op = rewrite.ScalarOp("multiply", 0.5, name="half")
    again = rewrite.ScalarOp.from_config(op.get_config())
    assert (again.op, again.constant, again.name) == ("multiply", 0.5, "half")
    np.testing.assert_allclose(again(np.ones((2, 3), np.float32)), 0.5)
    with pytest.raises(
        ValueError,
        match=r"^`op` must be 'add' or 'multiply'. "
        r"Received: op='pow'$",
    ):
        rewrite.ScalarOp("pow", 2.0)


def test_a_diverged_range_is_refused_before_the_converter(tmp_path):
    # The converter handed NaN ranges can crash the process; the export
    # names the range and the layer instead.
    qat = tfopt.quantize(models.build("tfmot_mnist", (8, 8), 10, keras_version=2))
    layer, weight = next(
        (layer, w)
        for layer in qat.layers
        for w in layer.non_trainable_weights
        if w.name.split("/")[-1].split(":")[0].endswith("_max")
    )
    weight.assign(np.full(weight.shape, np.nan, np.float32))
    path = tmp_path / "nan.tflite"
    with pytest.raises(
        ValueError,
        match=rf"^The quantization range '\w+_max' of layer '{layer.name}' is .*"
        "training diverged",
    ):
        tfopt.export_tflite(qat, str(path), quantization="int8")
    assert not path.exists()
