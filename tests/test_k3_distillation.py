"""Distilling Keras 3 models (`k3_distillation`), and why not
`keras.distillation`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import k3
from tests.support.k3 import LOSS, cnn
from tfopt.core import distill
from tfopt.keras3 import distillation as k3_distillation

TEACHER = np.array([[2.0, 0.0, -1.0]], np.float32)
STUDENT = np.array([[0.5, 0.5, 0.0]], np.float32)


def _true_kl(t, s, temperature):
    p = tf.nn.softmax(t / temperature)
    log_s = tf.nn.log_softmax(s / temperature)
    return float(tf.reduce_sum(p * (tf.math.log(p) - log_s)))


def test_keras_distillation_default_is_kl_on_raw_logits_and_tfopts_is_not():
    # keras.distillation's LogitsDistillation() resolves "kl_divergence" to a
    # function and skips the softmax: it computes KL between logits.
    expected = _true_kl(TEACHER, STUDENT, 2.0)  # 0.151
    keras_default = float(
        keras.distillation.LogitsDistillation(temperature=2.0).compute_loss(
            TEACHER, STUDENT
        )
    )
    raw = float(keras.losses.kl_divergence(TEACHER / 2.0, STUDENT / 2.0)[0])
    assert keras_default == pytest.approx(raw)  # 1.386: logits taken as probabilities
    assert keras_default not in (
        pytest.approx(expected, rel=0.5),
        pytest.approx(4.0 * expected, rel=0.5),
    )
    ours = float(distill.SOFT_LOSSES["kl"](TEACHER, STUDENT, 2.0)[0])
    assert ours == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def digits():
    # Its own copy: each pass over a pipeline reshuffles it, so the session's
    # copy would give this module's runs orders that depend on earlier tests.
    return tfopt.data.load("digits", batch_size=32)


@pytest.fixture(scope="module")
def teacher(digits):
    keras.utils.set_random_seed(0)
    model = cnn(digits.info.input_shape, 32, "teacher")
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    model.fit(digits.train, epochs=3, verbose=0)
    return model


def test_distiller_trains_a_student_and_logs_its_parts(digits, teacher):
    keras.utils.set_random_seed(1)
    student = cnn(digits.info.input_shape, 4, "student")
    distiller = tfopt.Distiller(student=student, teacher=teacher, alpha=0.1)
    assert isinstance(distiller, tfopt.Distiller)
    assert isinstance(distiller, k3_distillation.Distiller)
    distiller.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    history = distiller.fit(
        digits.train,
        epochs=3,
        verbose=0,
        validation_data=digits.validation,
        callbacks=[tfopt.DistillationSchedule(temperature=[4.0, 2.0])],
    )
    assert sorted(history.history) == [
        "accuracy",
        "alpha",
        "distillation_loss",
        "loss",
        "student_loss",
        "temperature",
        "val_accuracy",
        "val_distillation_loss",
        "val_loss",
        "val_student_loss",
    ]
    assert history.history["temperature"] == [4.0, 2.0, 2.0]
    assert history.history["val_accuracy"][-1] > 0.8
    for a, b in zip(teacher_weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the teacher is never trained
    assert teacher.trainable  # and left as given
    # loss = alpha * hard + (1 - alpha) * T² * soft, per example
    h = history.history
    assert h["loss"][-1] == pytest.approx(
        0.1 * h["student_loss"][-1] + 0.9 * 4.0 * h["distillation_loss"][-1], rel=0.05
    )


@pytest.mark.slow
def test_student_alone_is_saved_and_exported(digits, teacher, tmp_path):
    student = cnn(digits.info.input_shape, 4, "student")
    distiller = tfopt.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", loss=LOSS)
    distiller.fit(digits.train, epochs=1, verbose=0)
    distiller.save(tmp_path / "s.keras")
    loaded = tfopt.load_model(tmp_path / "s.keras")
    assert loaded.name == "student"
    exported = tfopt.export_tflite(distiller, tmp_path / "s.tflite")
    x = next(iter(digits.test))[0]
    assert tfopt.evaluate_tflite(exported.path, digits.test).accuracy == pytest.approx(
        float(
            np.mean(
                np.argmax(
                    student.predict(
                        np.concatenate([b[0] for b in digits.test]), verbose=0
                    ),
                    -1,
                )
                == np.concatenate([b[1] for b in digits.test])
            )
        ),
        abs=0.01,
    )
    assert x.shape[1:] == digits.info.input_shape


def test_feature_distillation_learns_a_projection(digits, teacher):
    student = cnn(digits.info.input_shape, 4, "student")
    distiller = tfopt.Distiller(
        student=student, teacher=teacher, features=[("conv", "conv", 0.5)]
    )
    assert len(distiller.projections) == 1
    projection = distiller.projections[0]
    before = projection.kernel.numpy().copy()
    distiller.compile(optimizer="adam", loss=LOSS)
    distiller.fit(digits.train, epochs=1, verbose=0)
    assert not np.allclose(before, projection.kernel.numpy())
    assert projection not in student.layers


def test_cached_teacher_gives_the_same_student(digits, teacher):
    weights = []
    for cache in (False, True):
        keras.utils.set_random_seed(2)
        # A fresh pipeline each time: the same two shuffled epochs.
        train = tfopt.data.load("digits", batch_size=32).train
        student = cnn(digits.info.input_shape, 4, "student")
        distiller = tfopt.Distiller(
            student=student, teacher=teacher, cache_teacher=cache
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        distiller.fit(train, epochs=2, verbose=0)
        weights.append(student.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_same_student_and_logs_on_default_and_mirrored(mirrored):
    single, h1 = k3.train_distilled(tfopt.get_strategy("default"), pruned=True)
    double, h2 = k3.train_distilled(mirrored, pruned=True)
    for a, b in zip(single, double, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for name in ("loss", "student_loss", "distillation_loss"):
        assert h1[name] == pytest.approx(h2[name], rel=1e-4), name


def test_keras_distillation_metrics_read_one_nth_under_n_replicas(mirrored):
    # The same global batches on 1 and 2 replicas: keras.distillation's
    # student_loss halves; tfopt's (above) does not move.
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    logged = []
    for strategy in (tfopt.get_strategy("default"), mirrored):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            distiller = keras.distillation.Distiller(
                teacher=cnn((8, 8, 1), 8, "t"),
                student=cnn((8, 8, 1), 4, "s"),
                distillation_losses=keras.distillation.LogitsDistillation(
                    loss=keras.losses.KLDivergence()
                ),
            )
            distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)
        history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
        logged.append(history.history["student_loss"][0])
    assert logged[1] == pytest.approx(logged[0] / 2, rel=0.01)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"temperature": 0.0}, ValueError, r"^`temperature` must be > 0"),
        ({"alpha": 1.5}, ValueError, r"^`alpha` must be in \[0, 1\]"),
        (
            {"distillation_loss": "l1"},
            ValueError,
            r"^`distillation_loss` must be one of",
        ),
        (
            {"features": [("conv", "nope", 1.0)]},
            ValueError,
            r"^`features` names 'nope', which is not a layer of the student",
        ),
        ({"cache_teacher": 1}, TypeError, r"^`cache_teacher` must be"),
    ],
)
def test_bad_arguments_name_the_value(teacher, digits, kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.Distiller(
            student=cnn(digits.info.input_shape, 4), teacher=teacher, **kwargs
        )


def test_bad_models_are_refused(teacher, digits):
    with pytest.raises(TypeError, match=r"^`teacher` must be a Keras 3 Model"):
        tfopt.Distiller(
            student=cnn(digits.info.input_shape, 4),
            teacher=tfopt.models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2),
        )
    with pytest.raises(TypeError, match=r"^Distiller takes its models as keywords"):
        k3_distillation.Distiller(teacher, teacher)
    frozen = cnn(digits.info.input_shape, 4)
    frozen.trainable = False
    with pytest.raises(ValueError, match=r"^`student` has no trainable variables"):
        tfopt.Distiller(student=frozen, teacher=teacher)
    distiller = tfopt.Distiller(
        student=cnn(digits.info.input_shape, 4), teacher=teacher
    )
    with pytest.raises(ValueError, match=r"^`loss` must be the student's hard-label"):
        distiller.compile(optimizer="adam")


def test_config_round_trips_to_the_distiller_of_the_same_keras(teacher, digits):
    from tfopt import keras as tf_keras
    from tfopt.keras2 import distillation

    distiller = tfopt.Distiller(
        student=cnn(digits.info.input_shape, 4),
        teacher=teacher,
        temperature=3.0,
        alpha=0.4,
    )
    again = tfopt.Distiller.from_config(distiller.get_config())
    assert isinstance(again, k3_distillation.Distiller)
    assert (float(again.temperature.numpy()), again.alpha.numpy()) == (
        3.0,
        pytest.approx(0.4),
    )
    # tf_keras names a Sequential "keras" in its config: the Distiller says
    # which Keras it is.
    sequential = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    old = tfopt.Distiller(
        student=sequential, teacher=tf_keras.models.clone_model(sequential)
    )
    assert isinstance(
        tfopt.Distiller.from_config(old.get_config()), distillation.Distiller
    )


def test_the_optimizer_builds_no_slots_for_the_teacher(digits, teacher):
    student = cnn(digits.info.input_shape, 4, "student")
    distiller = tfopt.Distiller(student=student, teacher=teacher)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    distiller.compile(optimizer="adam", loss=LOSS)
    distiller.fit(digits.train, epochs=1, verbose=0, steps_per_epoch=2)
    slots = distiller.optimizer.variables
    assert len(slots) == 2 + 2 * len(student.trainable_variables)  # Adam's m, v


def test_a_subclassed_model_is_refused_with_the_wrap_to_use(teacher):
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(
        TypeError,
        match=r"^`student` must be a Sequential or "
        r"functional Keras 3 model: .* wrap a subclassed one, e.g. "
        r"keras.Model\(inputs, student\(inputs\)\)",
    ):
        tfopt.Distiller(student=Sub(), teacher=teacher)


def test_a_new_distiller_saves_its_weights_and_backs_up(digits, tmp_path):
    # Keras 3 refuses both for an unbuilt model; a Distiller of built models
    # is built from the start.
    shape = digits.info.input_shape
    keras.utils.set_random_seed(0)
    distiller = tfopt.Distiller(student=cnn(shape, 4, "s"), teacher=cnn(shape, 8, "t"))
    distiller.compile(optimizer="adam", loss=LOSS)
    path = str(tmp_path / "distiller.weights.h5")
    distiller.save_weights(path)
    other = tfopt.Distiller(student=cnn(shape, 4, "s2"), teacher=cnn(shape, 8, "t2"))
    other.load_weights(path)
    for a, b in zip(distiller.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    history = distiller.fit(
        digits.train.take(2),
        epochs=1,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))],
    )
    assert len(history.history["loss"]) == 1
