import os
import sys

import numpy as np
import pytest

import tfopt
from tests.support.helpers import compiled
from tfopt import keras, models
from tfopt.core import tflite


def _float_and_qat(name, data, epochs):
    keras.utils.set_random_seed(0)
    model = compiled(models.build(name, data.info.input_shape, 10, keras_version=2))
    model.fit(data.train, epochs=epochs, verbose=0)
    qat = compiled(tfopt.quantize(model), 1e-4)
    qat.fit(data.train, epochs=1, verbose=0)
    return model, qat


@pytest.fixture(scope="module")
def mnist_pair(mnist5k):
    return _float_and_qat("tfmot_mnist", mnist5k, epochs=2)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.mark.slow
def test_int8_file_matches_qat_accuracy_at_under_30_percent_size(
    mnist5k, mnist_pair, out
):
    model, qat = mnist_pair
    float_file = tfopt.export_tflite(model, out / "float.tflite")
    int8_file = tfopt.export_tflite(qat, out / "int8.tflite", quantization="int8")
    assert int8_file.size_bytes <= 0.30 * float_file.size_bytes
    assert os.path.getsize(int8_file.path) == int8_file.size_bytes
    _, keras_accuracy = qat.evaluate(mnist5k.test, verbose=0)
    result = tfopt.evaluate_tflite(int8_file.path, mnist5k.test)
    assert result.examples == 1000 and result.mean_batch_latency_ms > 0
    assert abs(result.accuracy - keras_accuracy) <= 0.01
    assert keras_accuracy > 0.8


@pytest.mark.slow  # trains and converts a residual model: 9 s
def test_resnet_tiny_int8_matches_its_qat_model(digits, out):
    _, qat = _float_and_qat("resnet_tiny", digits, epochs=2)
    path = tfopt.export_tflite(qat, out / "resnet.tflite", quantization="int8").path
    _, keras_accuracy = qat.evaluate(digits.test, verbose=0)
    assert (
        abs(tfopt.evaluate_tflite(path, digits.test).accuracy - keras_accuracy) <= 0.01
    )


def test_int8_io_gives_int8_tensors(mnist5k, mnist_pair, out):
    path = tfopt.export_tflite(
        mnist_pair[1], out / "io.tflite", quantization="int8", int8_io=True
    ).path
    interpreter = tflite.open_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    float_io = tfopt.export_tflite(
        mnist_pair[1], out / "float_io.tflite", quantization="int8"
    )
    float_io = tfopt.evaluate_tflite(float_io.path, mnist5k.test)
    assert tfopt.evaluate_tflite(path, mnist5k.test).accuracy == pytest.approx(
        float_io.accuracy, abs=0.01
    )


def test_float_model_int8_needs_representative_data(mnist5k, mnist_pair, out):
    with pytest.raises(
        ValueError,
        match=(
            r"^`representative_data` is needed for quantization='int8' of a float "
            r"model, to calibrate its activation ranges"
        ),
    ):
        tfopt.export_tflite(mnist_pair[0], out / "nope.tflite", quantization="int8")
    assert not (out / "nope.tflite").exists()
    calibrated = tfopt.export_tflite(
        mnist_pair[0],
        out / "calibrated.tflite",
        quantization="int8",
        representative_data=mnist5k.train,
    )
    _, accuracy = mnist_pair[0].evaluate(mnist5k.test, verbose=0)
    assert tfopt.evaluate_tflite(calibrated.path, mnist5k.test).accuracy == (
        pytest.approx(accuracy, abs=0.02)
    )


@pytest.mark.slow
def test_dynamic_and_float16_shrink_the_file(mnist_pair, out):
    model = mnist_pair[0]
    sizes = {
        q: tfopt.export_tflite(
            model, out / f"{q}.tflite", quantization=q, overwrite=True
        ).size_bytes
        for q in (None, "dynamic", "float16")
    }
    assert sizes["dynamic"] < 0.35 * sizes[None]
    assert sizes["float16"] < 0.6 * sizes[None]


@pytest.mark.parametrize("version", [2, 3])
def test_files_hold_no_conversion_metadata(version, out):
    # The converter's record of its options: no runtime reads it, and it
    # is 1% of a small int8 file gzipped (the recipe suite's size target).
    model = models.build("tfmot_mnist", (8, 8), 10, keras_version=version)
    path = out / f"no_metadata_{version}.tflite"
    tfopt.export_tflite(model, path, overwrite=True)
    data = path.read_bytes()
    assert b"CONVERSION_METADATA" not in data
    assert b"min_runtime_version" in data  # what the runtime does read


def test_pruned_models_export_stripped(digits, out):
    pruned = tfopt.prune(
        models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2), 0.5
    )
    path = tfopt.export_tflite(pruned, out / "pruned.tflite").path
    assert tfopt.evaluate_tflite(path, digits.test).examples == 359
    saved = tfopt.export_saved_model(pruned, out / "pruned_saved")
    assert not any(
        "Prune" in type(layer).__name__ for layer in tfopt.load_model(saved.path).layers
    )


@pytest.mark.slow
def test_existing_files_are_never_overwritten(mnist_pair, out):
    target = out / "kept.tflite"
    target.write_bytes(b"user data")
    with pytest.raises(
        FileExistsError,
        match=(
            r"^`path` already exists and tfopt never replaces a file unless "
            r"overwrite=True. Received: path='.*kept.tflite'$"
        ),
    ):
        tfopt.export_tflite(mnist_pair[0], target)
    assert target.read_bytes() == b"user data"
    tfopt.export_tflite(mnist_pair[0], target, overwrite=True)
    assert target.read_bytes()[4:8] == b"TFL3"
    directory = out / "kept_saved"
    directory.mkdir()
    (directory / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        tfopt.export_saved_model(mnist_pair[0], directory)
    assert (directory / "mine.txt").read_text() == "keep"
    tfopt.export_saved_model(mnist_pair[0], directory, overwrite=True)
    assert (directory / "saved_model.pb").exists()
    assert not (directory / "mine.txt").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".tfopt-")]


@pytest.mark.parametrize("kind", ["plain", "qat"])
@pytest.mark.parametrize("suffix", [".keras", ".h5", "_savedmodel"])
def test_load_model_round_trips(mnist5k, mnist_pair, out, kind, suffix):
    model = mnist_pair[0] if kind == "plain" else mnist_pair[1]
    path = out / f"{kind}{suffix}"
    model.save(path)
    loaded = tfopt.load_model(path)
    x = next(iter(mnist5k.test))[0]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )
    assert [type(layer).__name__ for layer in loaded.layers] == [
        type(layer).__name__ for layer in model.layers
    ]


def test_evaluate_accepts_bytes_and_falls_back_to_tf_lite(
    mnist5k, mnist_pair, out, monkeypatch
):
    path = out / "int8.tflite"
    if not path.exists():
        tfopt.export_tflite(mnist_pair[1], path, quantization="int8")
    litert = tfopt.evaluate_tflite(path.read_bytes(), mnist5k.test)
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "tensorflow" in type(tflite.open_interpreter(str(path))).__module__
    assert tfopt.evaluate_tflite(path, mnist5k.test).accuracy == litert.accuracy


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"quantization": "int4"},
            ValueError,
            r"^`quantization` must be one of \[None, 'dynamic', 'float16', "
            r"'int8'\]. Received: quantization='int4'$",
        ),
        (
            {"int8_io": True},
            ValueError,
            r"^`int8_io` needs quantization='int8'. Received: int8_io=True, "
            r"quantization=None$",
        ),
        ({"int8_io": 1}, TypeError, r"^`int8_io` must be a bool. Received: int8_io=1$"),
        (
            {"quantization": "int8", "representative_data": [1, 2]},
            TypeError,
            r"^`representative_data` must be a tf.data.Dataset or a callable "
            r"returning batches, or None. Received: representative_data=\[1, 2\]$",
        ),
        ({"path": 5}, TypeError, r"^`path` must be a path. Received: path=5$"),
        (
            {"overwrite": "no"},
            TypeError,
            r"^`overwrite` must be a bool. Received: overwrite='no'$",
        ),
    ],
)
def test_export_bad_arguments(out, kwargs, error, message):
    args = {"path": out / "bad.tflite", **kwargs}
    with pytest.raises(error, match=message):
        tfopt.export_tflite(
            models.build("tfmot_mnist", (8, 8), 10, keras_version=2),
            args.pop("path"),
            **args,
        )


def test_export_and_evaluate_bad_models(keras3, out, digits):
    # A Keras 3 model exports its `serve` signature (no refusal any more),
    # and never over what is there.
    sequential = keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)])
    made = tfopt.export_saved_model(sequential, out / "k3")
    with pytest.raises(FileExistsError, match=r"^`path` already exists"):
        tfopt.export_saved_model(sequential, made.path)
    x = np.ones((3, 2), np.float32)
    np.testing.assert_allclose(tfopt.load_model(made.path)(x), sequential(x), rtol=1e-6)
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.export_saved_model("model", out / "x")
    with pytest.raises(
        FileNotFoundError,
        match=(
            r"^`model` must be a .tflite file or its bytes; no file there. "
            r"Received: model='.*missing.tflite'$"
        ),
    ):
        tfopt.evaluate_tflite(out / "missing.tflite", digits.test)
    with pytest.raises(TypeError, match=r"^`path` must be a path. Received: path=3$"):
        tfopt.evaluate_tflite(3, digits.test)
    with pytest.raises(
        TypeError,
        match=(
            r"^`dataset` must be an iterable of \(x, label\) batches. "
            r"Received: dataset=7$"
        ),
    ):
        tfopt.evaluate_tflite(b"bytes", 7)


def test_tflite_ops_refuses_what_is_not_a_tflite_file(tmp_path):
    with pytest.raises(TypeError, match=r"Received: path=3$"):
        tfopt.export.tflite_ops(3)
    missing = tmp_path / "none.tflite"
    with pytest.raises(
        FileNotFoundError,
        match=(
            r"^`model` must be a .tflite file or its bytes; no file there. "
            rf"Received: model='{missing}'$"
        ),
    ):
        tfopt.export.tflite_ops(missing)


def _rewrite_keras_config(path, edit):
    import zipfile

    with zipfile.ZipFile(path) as source:
        files = {name: source.read(name) for name in source.namelist()}
    files["config.json"] = edit(files["config.json"].decode()).encode()
    with zipfile.ZipFile(path, "w") as target:
        for name, content in files.items():
            target.writestr(name, content)


def test_load_model_reads_tfmot_class_names_as_tfopt_subclasses(tmp_path):
    import warnings

    import tensorflow_model_optimization as tfmot

    from tfopt.keras2 import tfmot as _tfmot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = tfopt.quantize(
            models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2)
        )
    qat(np.ones((2, 8, 8, 1), np.float32), training=True)  # moves the ranges
    path = tmp_path / "earlier.keras"
    qat.save(path)
    # As earlier tfopt versions wrote it: TFMOT's class names, tfopt's
    # variable layout.
    _rewrite_keras_config(
        path, lambda text: text.replace("tfopt>", "").replace("GlobalRange", "")
    )
    loaded = tfopt.load_model(path)
    assert {type(layer) for layer in loaded.layers if "quant" in layer.name} == {
        _tfmot.QuantizeLayer,
        _tfmot.QuantizeWrapperV2,
    }
    for a, b in zip(qat.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # A raw TFMOT .keras file (which TFMOT cannot load either) is refused
    # with the reason.
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    raw = tfmot.quantization.keras.quantize_model(base)
    raw.save(tmp_path / "raw.keras")
    with pytest.raises(
        ValueError,
        match=(
            r"Layer 'quant_d' expected 6 variables, but the file holds 8: it was "
            r"not saved from a model of tfopt.quantize."
        ),
    ):
        tfopt.load_model(tmp_path / "raw.keras")


def _sparse_block(stem="explicit", zeros=0.8):
    """A MobileNet-like block; its 1x1 kernels get `zeros` of zeros."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    if stem == "explicit":  # what XNNPACK's sparse path needs
        x = keras.layers.ZeroPadding2D(1)(inputs)
        x = keras.layers.Conv2D(16, 3, strides=2, name="stem")(x)
    else:  # TensorFlow's SAME at stride 2: padded on one side only
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(64, 1, name="expand")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(16, 1, name="project")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    rng = np.random.default_rng(0)
    for name in ("expand", "project"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[rng.uniform(size=kernel.shape) < zeros] = 0.0
        model.get_layer(name).set_weights([kernel, bias])
    return model


@pytest.mark.slow
def test_a_sparse_file_reports_that_xnnpack_can_run_it_sparse(out):
    model = _sparse_block()
    sparse = tfopt.export_tflite(model, out / "xnn_sparse.tflite", sparse=True)
    dense = tfopt.export_tflite(model, out / "xnn_dense.tflite")
    assert dense.sparse is None
    report = sparse.sparse
    assert report.eligible, report.reasons
    assert report.reasons == ()
    assert report.densify_ops >= 2
    assert report.sparse_1x1_fraction == pytest.approx(0.8, abs=0.03)
    assert "x86 CPUs with AVX" in report.note
    # The sparse encoding is lossless: the same outputs.
    x = np.random.default_rng(1).uniform(0, 1, (1, 16, 16, 3)).astype("float32")
    outputs = []
    for path in (sparse.path, dense.path):
        interpreter = tflite.open_interpreter(path)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(
            interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        )
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_sparse_file_names_what_keeps_it_off_the_sparse_path(out):
    same = tfopt.export_tflite(
        _sparse_block(stem="same"), out / "xnn_same.tflite", sparse=True
    ).sparse
    assert not same.eligible
    assert same.reasons == (
        "the first convolution (stem) must be 3x3, stride 2, on 3 input channels, "
        "with one pixel of padding on every side (ZeroPadding2D(1) then "
        "padding='valid'); TensorFlow's SAME padding at stride 2 is not "
        "symmetric.",
    )
    few = tfopt.export_tflite(
        _sparse_block(zeros=0.5), out / "xnn_few.tflite", sparse=True
    ).sparse
    assert few.reasons == (
        "the 1x1 convolutions are 51% zeros; XNNPACK needs more than 2/3.",
    )
    model = _sparse_block()
    dynamic = tfopt.export_tflite(
        model, out / "xnn_dynamic.tflite", sparse=True, quantization="dynamic"
    ).sparse
    assert dynamic.reasons[0] == (
        "quantization='dynamic': XNNPACK's sparse path is for float models only."
    )


def test_sparse_must_be_a_bool(out):
    with pytest.raises(TypeError, match=r"^`sparse` must be a bool"):
        tfopt.export_tflite(_sparse_block(), out / "xnn_x.tflite", sparse="yes")


def test_a_sparse_file_without_convolutions_says_so(out):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    report = tfopt.export_tflite(
        model, out / "xnn_dense_only.tflite", sparse=True
    ).sparse
    assert not report.eligible
    assert "the model has no convolution." in report.reasons
