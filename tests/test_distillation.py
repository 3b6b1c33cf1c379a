import os

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import cluster, helpers
from tests.support.helpers import LOSS
from tfopt import keras, models


def _distiller(student, teacher, learning_rate=3e-3, **kwargs):
    distiller = tfopt.Distiller(student=student, teacher=teacher, **kwargs)
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss=LOSS, metrics=["accuracy"]
    )
    return distiller


@pytest.fixture(scope="module")
def digits_teacher(digits):
    keras.utils.set_random_seed(0)
    teacher = models.build("teacher_cnn", digits.info.input_shape, 10, keras_version=2)
    teacher.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    teacher.fit(digits.train, epochs=4, verbose=0)
    return teacher


def _student(info, seed=1):
    keras.utils.set_random_seed(seed)
    return models.build("student_cnn", info.input_shape, 10, keras_version=2)


@pytest.mark.slow
def test_distilled_student_beats_scratch_on_a_tenth_of_the_data(mnist5k):
    keras.utils.set_random_seed(0)
    teacher = models.build("teacher_cnn", mnist5k.info.input_shape, 10, keras_version=2)
    teacher.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    teacher.fit(mnist5k.train, epochs=2, verbose=0)
    few = mnist5k.train.unbatch().take(360).batch(32).cache()  # 10%
    scratch = _student(mnist5k.info)
    scratch.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=LOSS, metrics=["accuracy"]
    )
    scratch.fit(few, epochs=15, verbose=0)
    distiller = _distiller(_student(mnist5k.info), teacher)
    distiller.fit(few, epochs=15, verbose=0)
    _, scratch_accuracy = scratch.evaluate(mnist5k.test, verbose=0)
    result = distiller.evaluate(mnist5k.test, verbose=0, return_dict=True)
    # Measured here: 0.925 distilled vs 0.902 from scratch (teacher 0.953).
    assert result["accuracy"] > scratch_accuracy + 0.01
    assert set(result) == {"loss", "student_loss", "distillation_loss", "accuracy"}


def test_logs_teacher_frozen_and_student_alone_at_inference(digits, digits_teacher):
    before = [w.copy() for w in digits_teacher.get_weights()]
    student = _student(digits.info)
    distiller = _distiller(student, digits_teacher, temperature=2.0, alpha=0.5)
    history = distiller.fit(
        digits.train, epochs=2, verbose=0, validation_data=digits.validation
    )
    assert set(history.history) == {
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
        "val_loss",
        "val_student_loss",
        "val_distillation_loss",
        "val_accuracy",
    }
    logs = {k: v[-1] for k, v in history.history.items()}
    # loss = alpha * hard + (1 - alpha) * T^2 * soft, averaged over the epoch,
    # in training and in validation alike.
    for prefix in ("", "val_"):
        assert logs[f"{prefix}loss"] == pytest.approx(
            0.5 * logs[f"{prefix}student_loss"]
            + 0.5 * 4.0 * logs[f"{prefix}distillation_loss"],
            rel=1e-4,
        )
    assert (
        history.history["distillation_loss"][1]
        < history.history["distillation_loss"][0]
    )
    for a, b in zip(before, digits_teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Frozen inside the Distiller only: the user's model is left trainable.
    assert digits_teacher.trainable
    assert all(layer.trainable for layer in digits_teacher.layers)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    x = next(iter(digits.test))[0]
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), student.predict(x, verbose=0), atol=1e-6
    )


@pytest.mark.slow
def test_a_pruned_copy_distils_from_its_own_dense_model(digits):
    # Self-distillation, the usual way to recover a pruned model's accuracy.
    # tfopt once froze the teacher object itself, so a copy pruned from it
    # afterwards had nothing trainable (only its masks moved) and reached
    # 0.745 instead of 0.904 on mnist5k.
    keras.utils.set_random_seed(0)
    base = _compiled_dense(digits)
    _, dense_accuracy = base.evaluate(digits.test, verbose=0)
    distiller = _distiller(tfopt.prune(base, 0.7, end=0.3), base, learning_rate=1e-3)
    assert base.trainable
    again = tfopt.prune(base, 0.8)
    assert len(again.trainable_weights) == len(base.trainable_weights) > 0
    history = distiller.fit(
        digits.train, epochs=8, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.7, abs=0.01)
    # The kept weights trained (not only the masks moved).
    kept = tfopt.strip(distiller.student).get_layer("conv2").kernel.numpy()
    original = base.get_layer("conv2").kernel.numpy()
    assert np.abs(kept - original)[kept != 0].mean() > 1e-3
    result = distiller.evaluate(digits.test, verbose=0, return_dict=True)
    # Measured: dense 0.936-0.953, pruned to 70% and distilled 0.903-0.914
    # (with the frozen copy: 0.745 against 0.904 on mnist5k).
    assert result["accuracy"] > dense_accuracy - 0.08, (result, dense_accuracy)


def _compiled_dense(digits):
    model = models.build("student_cnn", digits.info.input_shape, 10, keras_version=2)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=LOSS, metrics=["accuracy"]
    )
    model.fit(digits.train, epochs=4, verbose=0)
    return model


def test_frozen_students_are_refused_and_positional_models_too(digits, digits_teacher):
    frozen = _student(digits.info)
    frozen.trainable = False
    with pytest.raises(
        ValueError,
        match=(
            r"^`student` has no trainable variables \(its layers \['conv1', .*\] "
            r"are frozen: trainable=False\): distilling into it would train nothing. "
            r"Set `student.trainable = True` first. Received: student=Functional "
        ),
    ):
        tfopt.Distiller(student=frozen, teacher=digits_teacher)
    with pytest.raises(
        TypeError,
        match=(
            r"^Distiller takes its models as keywords: Distiller\(student=..., "
            r"teacher=...\). Received: 2 positional argument\(s\)$"
        ),
    ):
        tfopt.Distiller(_student(digits.info), digits_teacher)


def test_prune_quantize_and_fit_name_the_frozen_layers(digits):
    frozen = _student(digits.info)
    frozen.trainable = False
    named = r"`model` has no trainable variables \(its layers \['conv1', 'conv2', "
    with pytest.warns(
        UserWarning,
        match=(
            r"^prune: " + named + r"'logits'\] are frozen: trainable=False\): the "
            r"pruned copy would only move its masks when trained. Set "
            r"`model.trainable = True` first. Received: model=Functional "
            r"'student_cnn'$"
        ),
    ):
        pruned = tfopt.prune(frozen, 0.5)
    with pytest.warns(
        UserWarning,
        match=(
            r"^PruningCallback: `model` has no trainable variables \(its layers "
            r"\['prune_low_magnitude_conv1', .*\): this fit only moves the pruning "
            r"masks"
        ),
    ):
        pruned.compile(optimizer="adam", loss=LOSS)
        pruned.fit(digits.train.take(1), verbose=0, callbacks=[tfopt.PruningCallback()])
    with pytest.warns(
        UserWarning,
        match=(
            r"^quantize: " + named + r".*QAT fine-tuning would learn only the ranges"
        ),
    ):
        tfopt.quantize(frozen)


def test_mse_loss_and_the_loss_formula(digits, digits_teacher):
    distiller = _distiller(
        _student(digits.info), digits_teacher, distillation_loss="mse", alpha=1.0
    )
    history = distiller.fit(digits.train.take(3), epochs=1, verbose=0)
    # alpha=1: the hard-label loss alone.
    assert history.history["loss"][0] == pytest.approx(
        history.history["student_loss"][0], rel=1e-5
    )


@pytest.mark.slow
def test_same_student_on_default_and_mirrored(mirrored):
    single = helpers.train_distilled(tfopt.get_strategy("default"))
    double = helpers.train_distilled(mirrored)
    for a, b in zip(single, double, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_same_student_on_two_worker_processes():
    first, second = cluster.run_workers(helpers.distilled_multi_worker_job)
    single = helpers.train_distilled(tfopt.get_strategy("default"))
    for a, b, c in zip(single, first, second, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(b, c)


@pytest.mark.slow
def test_pruned_student_reaches_its_target_with_one_callback(digits, digits_teacher):
    pruned = tfopt.prune(_student(digits.info), 0.7, end=0.8)
    distiller = _distiller(pruned, digits_teacher)
    history = distiller.fit(
        digits.train, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.7, abs=0.01)
    steps = 2 * (digits.info.train_size // 32 + 1)
    # One step per batch: the student runs once per training step.
    assert {int(w.pruning_step.numpy()) for w in tfopt.pruning.wrappers(pruned)} == {
        steps
    }
    report = tfopt.sparsity_report(tfopt.strip(distiller.student))
    assert report.sparsity == pytest.approx(0.7, abs=0.01)


def test_pruned_student_without_the_callback_fails_first(digits, digits_teacher):
    distiller = _distiller(tfopt.prune(_student(digits.info), 0.5), digits_teacher)
    with pytest.raises(RuntimeError, match="tfopt.PruningCallback()"):
        distiller.fit(digits.train, epochs=1, verbose=0)


@pytest.mark.slow
def test_qat_student_trains(digits, digits_teacher):
    qat = tfopt.quantize(_student(digits.info))
    distiller = _distiller(qat, digits_teacher)
    history = distiller.fit(digits.train, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.slow
def test_feature_distillation_with_a_projection(digits, digits_teacher):
    student = _student(digits.info)
    distiller = _distiller(
        student, digits_teacher, features=[("block2b_relu", "conv2", 2.0)]
    )
    [projection] = distiller.projections
    assert projection.kernel.shape == (1, 1, 32, 64)  # 32 student -> 64 teacher
    before = projection.kernel.numpy().copy()
    history = distiller.fit(digits.train, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, projection.kernel.numpy())
    assert len(distiller.trainable_variables) == len(student.trainable_variables) + 1
    plain = _distiller(_student(digits.info), digits_teacher)
    plain_loss = plain.fit(digits.train, epochs=1, verbose=0).history["loss"][0]
    assert history.history["loss"][0] > plain_loss  # the feature term adds on


def test_unknown_feature_layers_list_the_available_ones(digits, digits_teacher):
    with pytest.raises(
        ValueError,
        match=(
            r"^`features` names 'conv9', which is not a layer of the student. Its "
            r"layers: \['image', 'reshape', 'conv1', 'pool1', 'conv2', 'pool2', "
            r"'flatten', 'logits'\]. Received: student layer='conv9'$"
        ),
    ):
        tfopt.Distiller(
            student=_student(digits.info),
            teacher=digits_teacher,
            features=[("fc", "conv9", 1.0)],
        )
    with pytest.raises(
        ValueError,
        match=(
            r"^`features` pairs teacher layer 'fc' \(64,\) with student layer "
            r"'conv2' \(4, 4, 32\): only the channel count may differ"
        ),
    ):
        tfopt.Distiller(
            student=_student(digits.info),
            teacher=digits_teacher,
            features=[("fc", "conv2", 1.0)],
        )


@pytest.mark.slow
def test_saving_and_exporting_give_the_student_alone(digits, digits_teacher, tmp_path):
    student = _student(digits.info)
    distiller = _distiller(
        student, digits_teacher, features=[("block2b_relu", "conv2", 1.0)]
    )
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras"))
    distiller.fit(digits.train.take(2), epochs=1, verbose=0, callbacks=[checkpoint])
    distiller.save(tmp_path / "distiller.keras")
    student.save(tmp_path / "student.keras")
    for name in ("ckpt.keras", "distiller.keras"):
        loaded = tfopt.load_model(tmp_path / name)
        assert loaded.count_params() == student.count_params()
        names = {v.name for v in loaded.weights}
        assert not any(n.startswith(("block", "fc")) for n in names), names
        assert (
            abs(
                os.path.getsize(tmp_path / name)
                - os.path.getsize(tmp_path / "student.keras")
            )
            < 2048
        )
    exported = tfopt.export_tflite(distiller, tmp_path / "d.tflite")
    alone = tfopt.export_tflite(student, tmp_path / "s.tflite")
    assert exported.size_bytes == alone.size_bytes


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("preempted")


def _resumable(digits, teacher, backup, interrupt):
    distiller = _distiller(_student(digits.info), teacher)
    callbacks = [
        tfopt.DistillationSchedule(temperature=[6.0, 4.0, 2.0]),
        keras.callbacks.BackupAndRestore(str(backup)),
    ]
    # An unshuffled split: resuming replays the same batches.
    distiller.fit(
        digits.validation,
        epochs=3,
        verbose=0,
        callbacks=callbacks + ([_Interrupt()] if interrupt else []),
    )
    return distiller


@pytest.mark.slow
def test_backup_and_restore_continues_exactly(digits, digits_teacher, tmp_path):
    whole = _resumable(digits, digits_teacher, tmp_path / "a", False)
    with pytest.raises(KeyboardInterrupt):
        _resumable(digits, digits_teacher, tmp_path / "b", True)
    resumed = _resumable(digits, digits_teacher, tmp_path / "b", False)
    assert float(resumed.temperature.numpy()) == 2.0
    for a, b in zip(
        whole.student.get_weights(), resumed.student.get_weights(), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_schedule_changes_temperature_and_alpha(digits, digits_teacher):
    distiller = _distiller(_student(digits.info), digits_teacher)
    schedule = tfopt.DistillationSchedule(
        temperature=[8.0, 2.0], alpha=lambda epoch: 0.2 + 0.3 * epoch
    )
    history = distiller.fit(
        digits.train.take(3), epochs=3, verbose=0, callbacks=[schedule]
    )
    assert history.history["temperature"] == [8.0, 2.0, 2.0]
    assert history.history["alpha"] == pytest.approx([0.2, 0.5, 0.8])
    logs = {k: v[1] for k, v in history.history.items()}
    assert logs["loss"] == pytest.approx(
        0.5 * logs["student_loss"] + 0.5 * 4.0 * logs["distillation_loss"], rel=1e-4
    )


@pytest.mark.slow
def test_cached_teacher_gives_the_same_student(digits, digits_teacher):
    results = []
    for cache in (False, True):
        # A fresh pipeline each time: the same two shuffled epochs.
        train = tfopt.data.load("digits", batch_size=32).train
        distiller = _distiller(
            _student(digits.info), digits_teacher, cache_teacher=cache
        )
        distiller.fit(train, epochs=2, verbose=0)
        results.append(distiller.student.get_weights())
        if cache:
            assert int(distiller._cache.size()) == digits.info.train_size
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_config_round_trips(digits, digits_teacher):
    distiller = tfopt.Distiller(
        student=_student(digits.info),
        teacher=digits_teacher,
        temperature=3.0,
        alpha=0.4,
        distillation_loss="mse",
    )
    again = tfopt.Distiller.from_config(distiller.get_config())
    config = again.get_config()
    assert {k: config[k] for k in ("temperature", "alpha", "distillation_loss")} == {
        "temperature": 3.0,
        "alpha": pytest.approx(0.4),
        "distillation_loss": "mse",
    }
    assert again.student.count_params() == distiller.student.count_params()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"temperature": 0},
            ValueError,
            r"^`temperature` must be > 0. Received: temperature=0$",
        ),
        (
            {"temperature": "4"},
            TypeError,
            r"^`temperature` must be a float. Received: temperature='4'$",
        ),
        (
            {"alpha": 1.5},
            ValueError,
            r"^`alpha` must be in \[0, 1\]. Received: alpha=1.5$",
        ),
        (
            {"distillation_loss": "js"},
            ValueError,
            r"^`distillation_loss` must be one of \['kl', 'mse'\]. "
            r"Received: distillation_loss='js'$",
        ),
        (
            {"features": [("fc", "conv2")]},
            TypeError,
            r"^`features` must be a list of \(teacher_layer, student_layer, weight\)",
        ),
        (
            {"cache_teacher": 1},
            TypeError,
            r"^`cache_teacher` must be a bool. Received: cache_teacher=1$",
        ),
        (
            {"cache_teacher": True, "features": [("block2b_relu", "conv2", 1.0)]},
            ValueError,
            r"^`cache_teacher` caches logits only",
        ),
    ],
)
def test_bad_arguments_name_the_value(digits, digits_teacher, kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.Distiller(student=_student(digits.info), teacher=digits_teacher, **kwargs)


def test_bad_models_are_refused(digits, digits_teacher, keras3):
    with pytest.raises(
        ValueError,
        match=(
            r"^`student` and `teacher` must produce the same output shape. "
            r"Received: student output \(None, 3\), teacher output \(None, 10\)$"
        ),
    ):
        tfopt.Distiller(
            student=models.build("student_cnn", (8, 8, 1), 3, keras_version=2),
            teacher=digits_teacher,
        )
    unbuilt = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(ValueError, match=r"^`teacher` must be built \(give its first "):
        tfopt.Distiller(student=_student(digits.info), teacher=unbuilt)
    with pytest.raises(
        TypeError,
        match=r"^`teacher` must be a tf_keras object, not "
        r"a Keras 3 Sequential",
    ):
        tfopt.Distiller(
            student=_student(digits.info),
            teacher=keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)]),
        )
    with pytest.raises(TypeError, match=r"^`student` must be a tf_keras Model"):
        tfopt.Distiller(student=None, teacher=digits_teacher)
    distiller = tfopt.Distiller(student=_student(digits.info), teacher=digits_teacher)
    with pytest.raises(ValueError, match=r"^`loss` must be the student's hard-label"):
        distiller.compile(optimizer="adam")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"temperature": 4.0},
            TypeError,
            r"^`temperature` must be a callable epoch -> value, a non-empty list, "
            r"or None. Received: temperature=4.0$",
        ),
        (
            {"alpha": [0.5, 2.0]},
            ValueError,
            r"^`alpha` must be in \[0, 1\]. Received: alpha=2.0$",
        ),
        ({"temperature": []}, TypeError, r"Received: temperature=\[\]$"),
    ],
)
def test_schedule_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.DistillationSchedule(**kwargs)


def test_schedule_checks_values_and_model_at_run_time(digits, digits_teacher):
    distiller = _distiller(_student(digits.info), digits_teacher)
    with pytest.raises(
        ValueError,
        match=(
            r"^`temperature at epoch 0` must be > 0. "
            r"Received: temperature at epoch 0=-1$"
        ),
    ):
        distiller.fit(
            digits.train.take(1),
            verbose=0,
            callbacks=[tfopt.DistillationSchedule(temperature=lambda e: -1)],
        )
    plain = _student(digits.info)
    plain.compile(optimizer="adam", loss=LOSS)
    with pytest.raises(
        TypeError,
        match=r"^DistillationSchedule must be used in "
        r"Distiller.fit. Received: model=Functional$",
    ):
        plain.fit(
            digits.train.take(1),
            verbose=0,
            callbacks=[tfopt.DistillationSchedule(alpha=[0.5])],
        )
    assert tf.is_tensor(distiller.temperature)
