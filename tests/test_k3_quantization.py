"""Quantization-aware training of Keras 3 models (`tfopt.keras3.quantization`):
the QAT model computes what the int8 file computes, layer by layer; the file
is integer end to end on DenseNet- and MobileNetV3-like blocks; pruned
zeros survive; the model saves, reloads and resumes; ranges are the same on
1 and 2 replicas."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tfopt
from tests.support.k3 import LOSS, cnn, run_tflite
from tfopt.core.tflite import open_interpreter
from tfopt.keras3.quantizers import QuantizedLayer, QuantizeRange


def _data(shape, count=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((count, *shape), dtype=np.float32), rng.integers(0, 10, count)


def _fine_tuned(qat, x, y, epochs=1, batch_size=16):
    qat.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    qat.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return qat


def _conv_net(input_shape=(8, 8, 3)):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.Conv2D(6, 1, name="pointwise")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def _trained(model, x, y, epochs=2):
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def test_folded_per_channel_fake_quant_matches_the_file_layer_by_layer(tmp_path):
    x, y = _data((8, 8, 3))
    qat = _fine_tuned(tfopt.quantize(_trained(_conv_net(), x, y)), x, y)
    # The batch norms and ReLUs are folded away, as the converter folds them.
    assert {type(qat.get_layer(n)).__name__ for n in ("bn", "relu6", "relu")} == {
        "Identity"
    }
    for name in ("conv", "depthwise", "pointwise", "logits"):
        layer = qat.get_layer(name)
        assert isinstance(layer, QuantizedLayer)
        path = str(tmp_path / f"{name}.tflite")
        upto = keras.Model(qat.inputs, qat.get_layer(f"{name}_range").output)
        tfopt.export_tflite(upto, path, quantization="int8")
        ops = tfopt.export.tflite_ops(path)
        assert (ops.quantize, ops.dequantize, ops.float_ops) == (1, 1, ())
        assert "MUL" not in ops.counts and "ADD" not in ops.counts
        limits = qat.get_layer(f"{name}_range")
        step = float(limits.range_max - limits.range_min) / 255
        difference = np.abs(run_tflite(path, x) - upto.predict(x, verbose=0))
        # int8 kernels round their accumulators where the float graph does
        # not: within two steps of the output's scale, nearly all exactly.
        assert difference.max() <= 2 * step + 1e-6, (name, difference.max(), step)
        assert np.mean(difference <= 0.5 * step + 1e-6) > 0.9, name
    interpreter = open_interpreter(path)
    scales = [
        len(t["quantization_parameters"]["scales"])
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and len(t["shape"]) == 4
    ]
    # One scale per output channel: the convolution's 8 and 6, the depthwise's 8.
    assert sorted(s for s in scales if s > 1) == [6, 8, 8]


def _dense_block():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    for _ in range(2):
        y = keras.layers.BatchNormalization()(x)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(y)
        x = keras.layers.Concatenate()([x, y])
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False)(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.ZeroPadding2D()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="dense_block")


def _mobilenet_v3_block():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("hard_swish")(x)
    shortcut = x
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(4, 1, activation="relu")(gate)
    gate = keras.layers.Conv2D(8, 1)(gate)
    gate = keras.layers.Activation("hard_sigmoid")(gate)
    x = keras.layers.Multiply()([x, gate])
    # Keras 3's MobileNetV3 writes its squeeze-excite gate with the
    # functional API's ops.
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(8, 1)(gate)
    x = x * (keras.layers.ReLU(6.0)(gate + 3.0) * (1.0 / 6.0))
    x = keras.layers.Conv2D(8, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Add()([shortcut, x])
    x = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Activation("swish")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="mobilenet_v3_block")


def _separable_block():
    # Xception's and NASNet's separable convolutions: TFLite runs a
    # depthwise and a pointwise convolution, with a range between them.
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.SeparableConv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.SeparableConv2D(8, 3, strides=2, activation="relu")(x)
    # ConvNeXt's depthwise convolution: a Conv2D with a group per channel.
    x = keras.layers.Conv2D(8, 3, padding="same", groups=8)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="separable_block")


@pytest.mark.parametrize("build", [_dense_block, _mobilenet_v3_block, _separable_block])
def test_blocks_are_integer_end_to_end_and_agree_with_the_file(build, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _data((16, 16, 3), 96)
    if build is _mobilenet_v3_block:
        x = x * 255
    qat = _fine_tuned(tfopt.quantize(_trained(build(), x, y)), x, y)
    assert qat.tfopt_float_reasons == {}
    path = str(tmp_path / "block.tflite")
    tfopt.export_tflite(qat, path, quantization="int8")
    ops = tfopt.export.tflite_ops(path)
    assert (ops.quantize, ops.dequantize, ops.requantize, ops.float_ops) == (
        1,
        1,
        0,
        (),
    ), ops.counts
    expected = qat.predict(x, verbose=0)
    assert np.mean(run_tflite(path, x).argmax(-1) == expected.argmax(-1)) >= 0.95


def test_int8_io_has_no_quantize_ops(tmp_path):
    x, y = _data((8, 8, 3))
    qat = _fine_tuned(tfopt.quantize(_conv_net()), x, y)
    path = str(tmp_path / "io.tflite")
    tfopt.export_tflite(qat, path, quantization="int8", int8_io=True)
    ops = tfopt.export.tflite_ops(path)
    assert (ops.quantize, ops.dequantize, ops.float_ops) == (0, 0, ())


def test_layers_without_an_int8_kernel_stay_float_and_are_named(tmp_path):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="hidden")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    with pytest.warns(UserWarning, match=r"cannot quantize \['norm \(LayerNormaliz"):
        qat = tfopt.quantize(model)
    assert qat.tfopt_skipped_layers == ("norm (LayerNormalization)",)
    assert qat.tfopt_float_reasons == {"norm": "TFLite has no int8 layer-norm kernel"}
    assert isinstance(qat.get_layer("hidden"), QuantizedLayer)
    with pytest.raises(ValueError) as error:
        tfopt.quantize(model, skip_unsupported=False)
    assert str(error.value) == (
        "tfopt cannot quantize these layers: ['norm (LayerNormalization)']. "
        "Exclude them, or pass skip_unsupported=True to leave them in float. "
        "Received: skip_unsupported=False"
    )
    # Excluded, it is simply left alone.
    assert tfopt.quantize(model, exclude=["norm"]).tfopt_skipped_layers == ()


def test_preserve_sparsity_keeps_the_pruned_zeros(digits):
    keras.utils.set_random_seed(0)
    pruned = tfopt.prune(cnn(digits.info.input_shape), 0.5, end=0.5)
    pruned.compile(optimizer="adam", loss=LOSS)
    pruned.fit(
        digits.train.take(8), epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    model = tfopt.strip(pruned)

    def zeros(qat):
        qat.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
        qat.fit(digits.train.take(8), epochs=1, verbose=0)
        layer = qat.get_layer("hidden")
        return float(np.mean(layer.folded()[0].numpy() == 0))

    assert zeros(tfopt.quantize(model, preserve_sparsity=True)) >= 0.5 - 0.01
    # Without it, fine-tuning fills them in (so the check above can fail).
    assert zeros(tfopt.quantize(model)) < 0.1
    with pytest.warns(UserWarning, match="preserve_sparsity=True"):
        tfopt.quantize(pruned)


def test_saves_reloads_with_plain_keras_and_resumes(tmp_path):
    x, y = _data((8, 8, 3))
    qat = _fine_tuned(tfopt.quantize(_conv_net()), x, y)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", qat.predict(x, verbose=0))
    # A fresh process that imports Keras and then tfopt, and calls no tfopt
    # function: plain Keras loads the file, predicts the same and trains on.
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        import tfopt
        model = keras.saving.load_model({path!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "expected.npy")!r})
        print("diff", float(np.abs(model.predict(x, verbose=0) - expected).max()))
        before = model.optimizer.iterations.numpy()
        model.fit(x, np.zeros(len(x), "int32"), epochs=1, batch_size=16, verbose=0)
        print("steps", before, model.optimizer.iterations.numpy())
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert float(lines["diff"]) < 1e-6
    assert lines["steps"] == "4 8"
    assert type(tfopt.load_model(path).get_layer("conv")).__name__ == "QuantizedLayer"


def test_ranges_and_weights_are_the_same_on_one_and_two_replicas(mirrored):
    x, y = _data((8, 8, 3), 32)

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((8, 8, 3))
            h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
            h = keras.layers.Flatten()(h)
            model = keras.Model(inputs, keras.layers.Dense(10)(h))
            qat = tfopt.quantize(model)
            qat.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
        qat.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return [w.numpy() for w in qat.weights]

    single, double = train(tfopt.get_strategy("default")), train(mirrored)
    for a, b in zip(single, double, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused(tmp_path):
    x, y = _data((8, 8, 3))
    qat = tfopt.quantize(_conv_net())
    with pytest.raises(ValueError, match="already quantization-aware"):
        tfopt.quantize(qat)
    with pytest.raises(ValueError, match="was never learned"):
        tfopt.export_tflite(qat, str(tmp_path / "a.tflite"), quantization="int8")
    _fine_tuned(qat, x, y)
    qat.get_layer("conv_range").range_max.assign(np.nan)
    diverged = (
        r"The quantization range of 'conv_range' is \[-?[0-9.]+, nan\]: "
        "training diverged"
    )
    with pytest.raises(ValueError, match=diverged):
        tfopt.export_tflite(qat, str(tmp_path / "b.tflite"), quantization="int8")
    assert not (tmp_path / "b.tflite").exists()
    with pytest.raises(ValueError, match="'nope'"):
        tfopt.quantize(_conv_net(), layers=["nope"])
    with pytest.raises(TypeError, match="preserve_sparsity"):
        tfopt.quantize(_conv_net(), preserve_sparsity="yes")

    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="Sequential or functional"):
        tfopt.quantize(Subclassed())


def test_range_layers_round_trip_their_config():
    for layer in (QuantizeRange(), QuantizeRange(fixed=(0.0, 255 / 256))):
        again = QuantizeRange.from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


def test_a_nested_sequential_is_quantized_inside(tmp_path):
    # ConvNeXt's stem is a Sequential inside the functional model.
    stem = keras.Sequential(
        [keras.layers.Conv2D(4, 2, strides=2), keras.layers.BatchNormalization()],
        name="stem",
    )
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(stem(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    x, y = _data((8, 8, 3))
    qat = _fine_tuned(tfopt.quantize(model), x, y)
    inner = sorted(type(layer).__name__ for layer in qat.get_layer("stem").layers)
    assert inner == ["Identity", "InputLayer", "QuantizeRange", "QuantizedLayer"]
    path = str(tmp_path / "nested.tflite")
    tfopt.export_tflite(qat, path, quantization="int8")
    ops = tfopt.export.tflite_ops(path)
    assert (ops.quantize, ops.dequantize, ops.float_ops) == (1, 1, ())
