"""What a user who gets something wrong is told: tfopt's own errors, naming
the argument and the file, never tf_keras or TFLite internals."""

import os

import numpy as np
import pytest

import tfopt
from tests.support.helpers import LOSS
from tfopt import keras, models


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.dense = keras.layers.Dense(10)

    def call(self, inputs):
        return self.dense(inputs)


def _subclassed():
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


def test_subclassed_models_get_tfopt_errors_in_strip_and_distiller():
    # Once: "clone_function ... only supported for Sequential or Functional"
    # and "The layer has never been called".
    with pytest.raises(
        TypeError,
        match=(
            r"^`model` must be a Sequential or functional tf_keras model: a "
            r"subclassed model \(_Subclassed\) hides its layer graph. tfopt.prune "
            r"makes only functional models"
        ),
    ):
        tfopt.strip(_subclassed())
    inputs = keras.Input((4,))
    teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    with pytest.raises(
        TypeError,
        match=(
            r"^`student` must be a Sequential or functional tf_keras model: a "
            r"subclassed model \(_Subclassed\) hides its layer graph. The Distiller "
            r"checks its output shape and taps its layers: wrap it, e.g. "
            r"keras.Model\(inputs, student\(inputs\)\)."
        ),
    ):
        tfopt.Distiller(student=_subclassed(), teacher=teacher)


def test_keras3_optimizers_losses_and_metrics_are_named_in_compile(keras3):
    model = models.build("tfmot_mnist", (8, 8), 10, keras_version=2)
    distiller = tfopt.Distiller(
        student=models.build("tfmot_mnist", (8, 8), 10, keras_version=2), teacher=model
    )
    pruned = tfopt.prune(models.build("tfmot_mnist", (8, 8), 10, keras_version=2), 0.5)
    for owner in (distiller, pruned):
        # Once: "Could not interpret optimizer identifier".
        with pytest.raises(
            TypeError,
            match=(r"^`optimizer` must be a tf_keras object, not a Keras 3 Adam"),
        ):
            owner.compile(optimizer=keras3.optimizers.Adam(), loss=LOSS)
        with pytest.raises(
            TypeError,
            match=(
                r"^`loss` must be a tf_keras object, not a Keras 3 "
                r"SparseCategoricalCrossentropy"
            ),
        ):
            owner.compile(
                optimizer="adam", loss=keras3.losses.SparseCategoricalCrossentropy()
            )
        with pytest.raises(TypeError, match=r"^`metrics` must be a tf_keras object"):
            owner.compile(
                optimizer="adam",
                loss=LOSS,
                metrics=[keras3.metrics.SparseCategoricalAccuracy()],
            )


def test_a_truncated_keras_file_is_named(tmp_path):
    path = str(tmp_path / "model.keras")
    models.build("tfmot_mnist", (8, 8), 10, keras_version=2).save(path)
    with open(path, "rb") as file:
        data = file.read()
    cut = str(tmp_path / "cut.keras")
    with open(cut, "wb") as file:
        file.write(data[: len(data) // 2])
    # Once: "Unable to synchronously open file (file signature not found)".
    with pytest.raises(
        OSError,
        match=(
            rf"^'{cut}' is truncated or not a Keras file \(neither a .keras archive "
            r"nor an HDF5 file\); an interrupted save or copy leaves such a file."
        ),
    ):
        tfopt.load_model(cut)


def test_safe_mode_passes_through_load_model(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="safe_mode=False"):
        tfopt.load_model(path)
    again = tfopt.load_model(path, safe_mode=False)
    np.testing.assert_allclose(again(np.ones((1, 4), "float32")), 2.0)
    with pytest.raises(TypeError, match=r"^`safe_mode` must be a bool"):
        tfopt.load_model(path, safe_mode="no")


def test_a_corrupt_tflite_file_is_named(tmp_path, digits):
    path = str(tmp_path / "bad.tflite")
    with open(path, "wb") as file:
        file.write(b"not a flatbuffer" * 64)
    message = (
        rf"^`model` is not a readable .tflite file \(.*\): '{path}' is "
        r"truncated or holds something else."
    )
    with pytest.raises(ValueError, match=message):
        tfopt.evaluate_tflite(path, digits.test)
    with pytest.raises(ValueError, match=message):
        tfopt.export.tflite_ops(path)


def test_exported_files_get_the_mode_the_umask_gives(tmp_path):
    model = models.build("tfmot_mnist", (8, 8), 10, keras_version=2)
    previous = os.umask(0o027)
    try:
        path = tfopt.export_tflite(model, str(tmp_path / "m.tflite")).path
    finally:
        os.umask(previous)
    # Once 0600, from the temporary file it is written through.
    assert os.stat(path).st_mode & 0o777 == 0o640
