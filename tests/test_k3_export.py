"""Exporting Keras 3 models to TFLite (`tfopt.keras3.export`): every quantization,
built-in ops only, checked with `evaluate_tflite`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support.k3 import LOSS, cnn, run_tflite
from tfopt import export
from tfopt.core import tflite
from tfopt.keras3 import pruning


def _accuracy(model, data):
    x = np.concatenate([b[0] for b in data])
    y = np.concatenate([b[1] for b in data])
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


@pytest.fixture(scope="module")
def pruned(digits):
    keras.utils.set_random_seed(0)
    model = tfopt.prune(cnn(digits.info.input_shape, 16), 0.5)
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(digits.train, epochs=3, verbose=0, callbacks=[tfopt.PruningCallback()])
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    "quantization, int8_io",
    [
        (None, False),
        ("dynamic", False),
        ("float16", False),
        ("int8", False),
        ("int8", True),
    ],
)
def test_every_quantization_is_builtin_and_keeps_the_accuracy(
    pruned, digits, tmp_path, quantization, int8_io
):
    exported = tfopt.export_tflite(
        pruned,
        tmp_path / "m.tflite",
        quantization=quantization,
        int8_io=int8_io,
        representative_data=digits.train if quantization == "int8" else None,
    )
    ops = export.tflite_ops(exported.path)
    assert not [op for op in ops.counts if op.startswith("Flex") or op == "CUSTOM"]
    float_accuracy = _accuracy(tfopt.strip(pruned), digits.test)
    accuracy = tfopt.evaluate_tflite(exported.path, digits.test).accuracy
    # float32 computes what Keras does; quantized weights move a few examples.
    assert accuracy == pytest.approx(
        float_accuracy, abs=1e-9 if quantization is None else 0.01
    )
    if quantization == "int8":
        # Integer end to end: one QUANTIZE in (none with int8 I/O), no float op.
        assert ops.quantize == (0 if int8_io else 1)
        assert ops.float_ops == ()
        assert (
            exported.size_bytes
            < 0.4 * tfopt.export_tflite(pruned, tmp_path / "f.tflite").size_bytes
        )


def test_a_model_that_needs_a_flex_op_fails_naming_it(tmp_path):
    inputs = keras.Input((3, 3))
    model = keras.Model(inputs, keras.layers.Lambda(tf.linalg.det)(inputs))
    with pytest.raises(
        ValueError,
        match=(
            r"^The model needs TensorFlow ops that TFLite has no built-in kernel "
            r"for: \['MatrixDeterminant'\]"
        ),
    ):
        tfopt.export_tflite(model, tmp_path / "det.tflite")
    assert not (tmp_path / "det.tflite").exists()


def _reshapes(kind):
    """Keras 3 models whose Flatten and Reshape layers have known shapes."""
    L = keras.layers
    inputs = keras.Input((6, 6, 2), name="image")
    if kind == "functional":
        x = L.Reshape((6, 6, 2))(inputs)  # the identity
        x = L.Flatten()(L.Conv2D(3, 3)(x))
        x = L.Flatten()(L.Reshape((4, -1))(L.Dense(8)(x)))
        return keras.Model(inputs, L.Dense(3)(x))
    if kind == "nested":
        base = keras.Model(inputs, L.Flatten()(L.Conv2D(3, 3)(inputs)), name="base")
        return keras.Sequential([keras.Input((6, 6, 2)), base, L.Dense(3)])
    first = keras.Input((2, 6, 6), name="image")
    return keras.Model(
        first, L.Dense(3)(L.Flatten(data_format="channels_first")(first))
    )


@pytest.mark.parametrize("kind", ["functional", "nested", "channels_first"])
def test_flatten_and_reshape_write_one_reshape_of_a_constant_shape(kind, tmp_path):
    # Keras 3's layers compute the batch size in the graph (SHAPE,
    # STRIDED_SLICE and PACK ops before each RESHAPE); the file reshapes
    # to -1 as tf_keras's does, and still runs at any batch size.
    keras.utils.set_random_seed(0)
    model = _reshapes(kind)
    config = model.get_config()
    path = tfopt.export_tflite(model, tmp_path / "m.tflite").path
    counts = export.tflite_ops(path).counts
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(counts)
    # The converter merges back-to-back reshapes: Reshape then Flatten is one.
    assert (
        counts["RESHAPE"] == {"functional": 2, "nested": 1, "channels_first": 1}[kind]
    )
    x = np.random.rand(3, *model.input_shape[1:]).astype(np.float32)
    (source,) = tflite.open_interpreter(path).get_input_details()
    assert source["name"] == "serving_default_image:0" or kind == "nested"
    np.testing.assert_allclose(run_tflite(path, x), model(x), rtol=1e-5, atol=1e-6)
    # The user's model keeps its layers and config (the export traced a copy).
    assert model.get_config() == config
    assert not {"_Flatten", "_Reshape"} & {
        type(layer).__name__ for layer in pruning.flat_layers(model)
    }


def test_the_copy_traced_keeps_what_the_user_built(tmp_path):
    L = keras.layers
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype(np.float32)

    class Doubled(keras.Sequential):  # its own call: never rebuilt
        def call(self, inputs, training=None):
            return super().call(2 * inputs, training=training)

    doubled = Doubled([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(2)])
    inputs = keras.Input((4, 4, 1))

    class Backbone(keras.Model):  # functional, as KerasHub builds models
        def __init__(self):
            super().__init__(inputs, L.Dense(2)(L.Flatten()(inputs)))

    plain = keras.Sequential([keras.Input((4, 4, 1)), L.Flatten(), L.Dense(2)])
    # A loss no deserializer can find: the export must not re-compile it.
    plain.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean(p))
    for name, model in (
        ("doubled", doubled),
        ("backbone", Backbone()),
        ("plain", plain),
    ):
        path = tfopt.export_tflite(model, tmp_path / f"{name}.tflite").path
        np.testing.assert_allclose(run_tflite(path, x), model(x), rtol=1e-5, atol=1e-6)


def test_never_overwrites_and_checks_its_arguments(pruned, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"^`path` already exists"):
        tfopt.export_tflite(pruned, path)
    assert path.read_bytes() == b"mine"
    with pytest.raises(
        ValueError,
        match=r"^`representative_data` is needed for "
        r"quantization='int8' of a float model",
    ):
        tfopt.export_tflite(pruned, tmp_path / "q.tflite", quantization="int8")
    with pytest.raises(ValueError, match=r"^`quantization` must be one of"):
        tfopt.export_tflite(pruned, tmp_path / "q.tflite", quantization="int4")
    with pytest.raises(TypeError, match=r"^`sparse` must be a bool"):
        tfopt.export_tflite(pruned, tmp_path / "q.tflite", sparse="yes")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    subclassed = Subclassed()
    subclassed(np.ones((1, 2), np.float32))
    for export_to in (tfopt.export_tflite, tfopt.export_saved_model):
        with pytest.raises(
            TypeError,
            match=(
                r"^`model` \(Subclassed\) has no inputs to trace: export takes "
                r"a Sequential or functional Keras 3 model built on an Input. "
                r"Wrap a subclassed one, e.g. keras.Model\(inputs, "
                r"model\(inputs\)\). Received: model=<Subclassed"
            ),
        ):
            export_to(subclassed, tmp_path / "sub.tflite")


def test_load_model_reads_keras3_files_and_refuses_broken_ones(pruned, tmp_path):
    path = tmp_path / "m.keras"
    pruned.save(path)
    assert isinstance(tfopt.load_model(path), keras.Model)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OSError, match="is truncated or not a Keras file"):
        tfopt.load_model(broken)


@pytest.mark.slow
def test_int8_within_half_a_point_of_float_on_mnist5k(mnist5k, tmp_path):
    keras.utils.set_random_seed(0)
    model = tfopt.prune(cnn(mnist5k.info.input_shape, 16), 0.5)
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(mnist5k.train, epochs=4, verbose=0, callbacks=[tfopt.PruningCallback()])
    stripped = tfopt.strip(model)
    exported = tfopt.export_tflite(
        stripped,
        tmp_path / "m.tflite",
        quantization="int8",
        representative_data=mnist5k.train,
    )
    float_accuracy = _accuracy(stripped, mnist5k.test)
    int8 = tfopt.evaluate_tflite(exported.path, mnist5k.test)
    assert float_accuracy > 0.9
    assert int8.examples == 1000
    assert abs(int8.accuracy - float_accuracy) <= 0.005
