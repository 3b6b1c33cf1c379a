"""The main job on the user's model: saved files of either Keras (`.keras`,
`.h5`, SavedModel), `applications:NAME`, `module.path:function` builders,
and a saved teacher; each starts from what the user gave."""

import logging
import re

import keras
import numpy as np
import pytest
import tf_keras

from tests.support import userdata
from tfopt import data
from tfopt.job import pipeline
from tfopt.job.config import Config

QUICK = {
    "dataset": "digits",
    "batch_size": 32,
    "learning_rate": 5e-3,
    "deterministic": False,
    "export": ("tflite_int8",),
}
KERASES = {"2": tf_keras, "3": keras}


def _saved(tmp_path, version, form):
    model = userdata.trained(KERASES[version])
    path = str(tmp_path / f"user{version}{form}")
    if form == "_savedmodel":
        if version == "2":
            model.save(path, save_format="tf")
        else:
            model.export(path)
    else:
        model.save(path)
    return model, path


def _test_accuracy(model):
    _, _, test, _ = data.load("digits", batch_size=32)
    right = total = 0
    for x, y in test:
        right += int(np.sum(np.argmax(model.predict(x, verbose=0), -1) == y))
        total += len(y)
    return right / total


def _banners(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage()[:1] == "["]


@pytest.mark.parametrize("version", ["2", "3"])
def test_a_saved_model_starts_the_job_trained_with_its_own_keras(
    tmp_path, caplog, version
):
    model, path = _saved(tmp_path, version, ".keras")
    with caplog.at_level(logging.INFO, logger="tfopt"):
        report = pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                model=path,
                prune=True,
                recover=True,  # the saved model teaches its pruned copy
                **QUICK,
            )
        )
    # No baseline training: the first row is the given model, measured on
    # the test split as it was saved (its softmax removed: same argmax).
    assert _banners(caplog) == [
        # 6 epochs: a built model's baseline and pruning epochs together.
        f"[1/2] prune 80% of the weights of user{version}.keras, 6 epochs, "
        "distilled from the unpruned model",
        "[2/2] evaluate and export tflite_int8",
    ]
    assert "ends in a softmax: tfopt trains and exports its logits" in caplog.text
    rows = {row["artifact"]: row for row in report.rows}
    assert list(rows) == ["given", "pruned", "tflite_int8"]
    assert rows["given"]["accuracy"] == pytest.approx(_test_accuracy(model), abs=1e-6)
    assert rows["given"]["params"] == model.count_params()
    assert rows["pruned"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    settings = report.markdown and (tmp_path / "run" / "config.json").read_text()
    assert f'"keras": "{version}"' in settings


@pytest.mark.slow
@pytest.mark.parametrize(
    "version, form", [("2", ".h5"), ("3", ".h5"), ("2", "_savedmodel")]
)
def test_h5_and_savedmodel_files_start_the_job_too(tmp_path, version, form):
    model, path = _saved(tmp_path, version, form)
    report = pipeline.run(
        Config(model_dir=str(tmp_path / "run"), model=path, qat=True, **QUICK)
    )
    assert [row["artifact"] for row in report.rows] == ["given", "qat", "tflite_int8"]
    assert report.rows[0]["accuracy"] == pytest.approx(_test_accuracy(model), abs=1e-6)
    # QAT from the given weights keeps its accuracy (digits: a few points).
    assert report.rows[-1]["accuracy"] > report.rows[0]["accuracy"] - 0.05


def test_epochs_fine_tune_a_given_model_and_the_row_says_so(tmp_path, caplog):
    _, path = _saved(tmp_path, "3", ".keras")
    with caplog.at_level(logging.INFO, logger="tfopt"):
        report = pipeline.run(
            Config(model_dir=str(tmp_path / "run"), model=path, epochs=1, **QUICK)
        )
    assert _banners(caplog)[0] == "[1/2] fine-tune user3.keras, 1 epochs"
    assert [row["artifact"] for row in report.rows] == [
        "given",
        "finetuned",
        "tflite_int8",
    ]


def test_a_keras3_savedmodel_teaches_but_is_not_compressed(tmp_path):
    _, path = _saved(tmp_path, "3", "_savedmodel")
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            model="tests.support.user_code:build",
            teacher=path,
            epochs=2,
            **QUICK,
        )
    )
    assert [row["artifact"] for row in report.rows] == [
        "teacher",
        "distilled",
        "tflite_int8",
    ]
    assert report.rows[1]["accuracy"] > 0.5
    with pytest.raises(pipeline.ConfigError) as raised:
        pipeline.run(Config(model_dir=str(tmp_path / "run2"), model=path, **QUICK))
    assert str(raised.value) == (
        f"`model={path}` is a SavedModel without Keras layers (Keras 3's "
        "model.export() or tf.saved_model.save): it can only serve, so it can "
        "be `teacher` but not compressed; save the model with "
        "model.save('model.keras') instead."
    )
    assert not (tmp_path / "run2").exists()


def test_a_builder_of_the_user_is_called_with_shape_and_classes(tmp_path):
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            model="tests.support.user_code:build",
            input_shape="12,12,3",
            teacher="tests.support.user_code:build",
            teacher_epochs=1,
            epochs=1,
            **QUICK,
        )
    )
    assert [row["artifact"] for row in report.rows] == [
        "teacher",
        "distilled",
        "tflite_int8",
    ]
    # Built for 12x12x3: the digits were resized and made RGB for it.
    saved = keras.saving.load_model(
        tmp_path / "run" / "checkpoints" / "distilled.keras"
    )
    assert tuple(saved.input_shape) == (None, 12, 12, 3)
    assert saved.output_shape == (None, 10)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2", "3"])
def test_applications_models_are_built_for_the_data_and_train(
    tmp_path, caplog, version
):
    with caplog.at_level(logging.INFO, logger="tfopt"):
        report = pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                model="applications:MobileNetV2",
                keras=version,
                input_shape="32,32,3",
                preprocess="applications",
                epochs=1,
                **QUICK,
            )
        )
    assert [row["artifact"] for row in report.rows] == ["baseline", "tflite_int8"]
    # keras.applications.MobileNetV2 (alpha 1) for 10 classes.
    assert report.rows[0]["params"] == 2_236_682
    # It learns: the epoch's training accuracy. (Its test accuracy after one
    # epoch, about 40 steps, is chance either side of 0.1: BatchNorm's
    # moving statistics have not caught up with the weights yet.)
    epoch = next(
        r.getMessage() for r in caplog.records if "epoch 1/1" in r.getMessage()
    )
    assert float(re.search(r"(?<!val_)accuracy ([0-9.]+)", epoch).group(1)) > 0.25
    assert 0.0 <= report.rows[1]["accuracy"] <= 1.0


def test_custom_layers_load_once_their_module_is_named(tmp_path):
    from tests.support import user_code

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(
        keras.layers.Flatten()(user_code.Scale(0.5)(inputs))
    )
    path = str(tmp_path / "custom.keras")
    keras.Model(inputs, outputs).save(path)
    name = "user_code>Scale"
    registered = keras.saving.get_custom_objects().pop(name)
    try:
        with pytest.raises(pipeline.ConfigError) as raised:
            pipeline.run(Config(model_dir=str(tmp_path / "a"), model=path, **QUICK))
        assert str(raised.value) == (
            f"`model={path}` uses the custom class 'Scale', which is not "
            "registered: decorate it with "
            "@keras.saving.register_keras_serializable() in a module and pass "
            "that module as `custom_objects` (e.g. --custom_objects=my_layers)."
        )
        assert not (tmp_path / "a").exists()
    finally:
        keras.saving.get_custom_objects()[name] = registered
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "b"),
            model=path,
            custom_objects="tests.support.user_code",
            **QUICK,
        )
    )
    assert [row["artifact"] for row in report.rows] == ["given", "tflite_int8"]


def test_weights_load_into_a_built_model(tmp_path):
    from tests.support import user_code
    from tfopt.job import sources

    keras.utils.set_random_seed(7)
    trained = user_code.build((8, 8, 1), 10)
    trained.save_weights(tmp_path / "w.weights.h5")
    config = Config(
        model_dir="run",
        model="tests.support.user_code:build",
        weights=str(tmp_path / "w.weights.h5"),
    ).check()
    info = data.DatasetInfo("digits", (8, 8, 1), 10, 1, 1, 1)
    built = sources.build(config, config.model, "model", info, 0, str(tmp_path))
    for mine, theirs in zip(built.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # The teacher is built fresh: --weights is the model's.
    fresh = sources.build(config, config.model, "teacher", info, 0, str(tmp_path))
    assert not np.array_equal(fresh.get_weights()[0], trained.get_weights()[0])


def test_a_trailing_softmax_layer_and_open_image_sizes(tmp_path):
    # Sequential, Activation("softmax") last (the mixed-precision guide's
    # form), input of any height and width: logits, at the data's size.
    model = keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
            keras.layers.Activation("softmax", dtype="float32"),
        ]
    )
    model.save(tmp_path / "open.keras")
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            model=str(tmp_path / "open.keras"),
            epochs=1,
            **QUICK,
        )
    )
    assert [row["artifact"] for row in report.rows] == [
        "given",
        "finetuned",
        "tflite_int8",
    ]
    tuned = keras.saving.load_model(
        tmp_path / "run" / "checkpoints" / "finetuned.keras"
    )
    assert tuned.layers[-1].__class__.__name__ == "Dense"


def test_a_teacher_is_built_for_the_given_models_input(tmp_path):
    # The saved student takes 12x12 RGB; the teacher trained here must too.
    student = keras.Sequential(
        [keras.Input((12, 12, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    student.save(tmp_path / "student.keras")
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            model=str(tmp_path / "student.keras"),
            teacher="train",
            teacher_model="tests.support.user_code:build",
            teacher_epochs=1,
            epochs=1,
            **QUICK,
        )
    )
    assert [row["artifact"] for row in report.rows] == [
        "teacher",
        "given",
        "distilled",
        "tflite_int8",
    ]


def test_a_teacher_of_the_other_keras_is_refused_before_training(tmp_path):
    _, student = _saved(tmp_path, "3", ".keras")
    _, teacher = _saved(tmp_path, "2", ".keras")
    with pytest.raises(pipeline.ConfigError) as raised:
        pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                model=student,
                teacher=teacher,
                **QUICK,
            )
        )
    assert str(raised.value) == (
        f"`teacher={teacher}` is a tf_keras model and `model={student}` a "
        "Keras 3 one: distillation needs both in one Keras."
    )
    assert not (tmp_path / "run").exists()
