"""One contract, both Kerases: every check here runs on a tf_keras model and
on a Keras 3 model through the same public names. What a Keras lacks (the
capability table of `tfopt.core.kerases`) is an expected failure with
tfopt's refusal, strictly: a capability that lands makes its test pass and
the table must change with it."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support.kerases import api, build, compiled, each_keras
from tfopt.core import kerases
from tfopt.core.kerases import CAPABILITIES, Keras

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Each capability and the test of this module that holds it to its word
# (multi-worker runs are processes, in the slow lane: tests/test_scale_out.py
# and tests/test_k3_distribute.py).
COVERED = {
    "prune": "test_prune_fit_strip_reaches_the_target",
    "m_by_n": "test_m_by_n_is_exact_where_it_fits",
    "block_pruning": "test_block_pruning",
    "channel_pruning": "test_channel_pruning_then_shrink",
    "shrink": "test_channel_pruning_then_shrink",
    "taylor": "test_taylor_channel_importance",
    "distill": "test_distiller_trains_the_student_and_logs_the_same_keys",
    "quantize": "test_quantize_then_int8_is_integer_end_to_end",
    "export_tflite": "test_int8_export_by_calibration_is_integer_end_to_end",
    "sparse_export": "test_sparse_tflite_export",
    "export_saved_model": "test_saved_model_export",
    "load_model": "test_a_pruned_model_saves_and_loads_with_the_same_outputs",
    "multi_worker": "tests/test_scale_out.py, tests/test_k3_distribute.py",
}


@pytest.fixture(scope="module")
def digits():
    # Its own copy, so that these runs leave the session's pipeline (each pass
    # reshuffles it) as the other tests expect it.
    return tfopt.data.load("digits", batch_size=32)


def _fit(model, digits, steps=4, callbacks=()):
    return model.fit(
        digits.train.take(steps),
        epochs=2,
        verbose=0,
        callbacks=list(callbacks),
    )


def _pruned(keras, digits, target=0.5, **kwargs):
    model = tfopt.prune(build(keras, digits.info), target, end=1.0, **kwargs)
    compiled(model, keras)
    _fit(model, digits, callbacks=[tfopt.PruningCallback()])
    return model


def _float_ops(path):
    """The ops of the TFLite file at `path` with a float output."""
    return tuple(tfopt.export.tflite_ops(path).float_ops)


def _x(digits):
    return next(iter(digits.test))[0][:4].numpy()


def test_every_capability_has_a_contract():
    assert set(COVERED) == set(CAPABILITIES)
    here = [name for name in COVERED.values() if name.startswith("test_")]
    assert [name for name in here if name not in globals()] == []


@pytest.mark.parametrize("keras", each_keras("prune"))
def test_prune_fit_strip_reaches_the_target(keras, digits):
    model = _pruned(keras, digits, 0.6)
    stripped = tfopt.strip(model)
    assert Keras.of(stripped) is keras
    report = tfopt.sparsity_report(stripped)
    pruned = [row for row in report.rows if row.pruned] or report.rows
    assert report.sparsity == pytest.approx(0.6, abs=0.02)
    assert all(r.sparsity >= 0.59 for r in pruned if r.params >= 64)


@pytest.mark.parametrize("keras", each_keras("m_by_n"))
def test_m_by_n_is_exact_where_it_fits(keras, digits):
    with pytest.warns(UserWarning):  # the layers n does not divide are named
        model = _pruned(keras, digits, 0.5, m_by_n=(2, 4))
    report = tfopt.sparsity_report(tfopt.strip(model), m_by_n=(2, 4))
    assert any(row.m_by_n for row in report.rows)


@pytest.mark.parametrize("keras", each_keras("block_pruning"))
def test_block_pruning(keras, digits):
    model = _pruned(keras, digits, 0.5, block_size=(1, 4))
    assert tfopt.sparsity_report(tfopt.strip(model)).sparsity > 0.3


@pytest.mark.parametrize("keras", each_keras("channel_pruning"))
def test_channel_pruning_then_shrink(keras, digits):
    model = _pruned(keras, digits, 0.5, structure=tfopt.pruning.Channels(round_to=1))
    small = tfopt.shrink(tfopt.strip(model))
    assert small.count_params() < model.count_params()
    x = _x(digits)
    np.testing.assert_allclose(
        small(x, training=False), model(x, training=False), atol=1e-4
    )


@pytest.mark.parametrize("keras", each_keras("taylor"))
def test_taylor_channel_importance(keras, digits):
    structure = tfopt.pruning.Channels(importance="taylor", round_to=1)
    model = tfopt.prune(build(keras, digits.info), 0.5, end=1.0, structure=structure)
    compiled(model, keras)
    callback = tfopt.PruningCallback(data=digits.train.take(2))
    _fit(model, digits, callbacks=[callback])
    small = tfopt.shrink(tfopt.strip(model))
    assert small.count_params() < model.count_params()


@pytest.mark.parametrize("keras", each_keras("distill"))
def test_distiller_trains_the_student_and_logs_the_same_keys(keras, digits):
    teacher = build(keras, digits.info, "teacher_cnn", seed=1)
    student = build(keras, digits.info)
    before = [w.copy() for w in student.get_weights()]
    distiller = compiled(
        tfopt.Distiller(student=student, teacher=teacher, temperature=2.0),
        keras,
    )
    history = _fit(distiller, digits)
    assert {"loss", "distillation_loss", "student_loss"} <= set(history.history)
    assert not all(
        np.array_equal(a, b) for a, b in zip(before, student.get_weights(), strict=True)
    )


@pytest.mark.parametrize("keras", each_keras("distill"))
def test_a_teacher_ending_in_softmax_teaches_as_its_logits_would(keras, digits):
    # keras.applications classifiers end in softmax by default: read as
    # logits, their probabilities would teach a different distribution.
    k = api(keras)
    teacher = build(keras, digits.info, "teacher_cnn", seed=1)
    probabilities = k.Model(teacher.inputs, k.layers.Softmax()(teacher.output))
    student = build(keras, digits.info)
    x, y = next(iter(digits.test))
    losses = [
        compiled(
            tfopt.Distiller(student=student, teacher=model, temperature=2.0), keras
        ).evaluate(x, y, verbose=0, return_dict=True)["distillation_loss"]
        for model in (teacher, probabilities)
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("keras", each_keras("quantize"))
def test_quantize_then_int8_is_integer_end_to_end(keras, digits, tmp_path):
    model = compiled(tfopt.quantize(build(keras, digits.info)), keras, 1e-4)
    _fit(model, digits)
    path = str(tmp_path / "q.tflite")
    tfopt.export_tflite(model, path, quantization="int8")
    assert _float_ops(path) == ()


@pytest.mark.parametrize("keras", each_keras("export_tflite"))
def test_int8_export_by_calibration_is_integer_end_to_end(keras, digits, tmp_path):
    model = compiled(build(keras, digits.info), keras)
    _fit(model, digits)
    path = str(tmp_path / "c.tflite")
    exported = tfopt.export_tflite(
        model, path, quantization="int8", representative_data=digits.train.take(4)
    )
    assert exported.size_bytes > 0
    assert _float_ops(path) == ()
    accuracy = tfopt.evaluate_tflite(path, digits.test).accuracy
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize("keras", each_keras("export_tflite"))
def test_int8_export_calibrates_a_model_with_integer_inputs(keras, tmp_path):
    # Token ids for an Embedding: calibration must not cast them to floats.
    k = api(keras)
    inputs = k.Input((6,), dtype="int32")
    x = k.layers.GlobalAveragePooling1D()(k.layers.Embedding(20, 8)(inputs))
    model = k.Model(inputs, k.layers.Dense(3)(x))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, (64, 6)).astype("int32")
    labels = rng.integers(0, 3, 64)
    data = tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(16)
    path = str(tmp_path / "tokens.tflite")
    tfopt.export_tflite(model, path, quantization="int8", representative_data=data)
    expected = float(np.mean(model.predict(tokens, verbose=0).argmax(-1) == labels))
    result = tfopt.evaluate_tflite(path, data)
    assert result.examples == 64
    assert result.accuracy == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("keras", each_keras("sparse_export"))
def test_sparse_tflite_export(keras, digits, tmp_path):
    model = tfopt.strip(_pruned(keras, digits, 0.8))
    exported = tfopt.export_tflite(model, str(tmp_path / "s.tflite"), sparse=True)
    assert exported.sparse


@pytest.mark.parametrize("keras", each_keras("export_saved_model"))
def test_saved_model_export(keras, digits, tmp_path):
    model = compiled(build(keras, digits.info), keras)
    made = tfopt.export_saved_model(model, str(tmp_path / "saved"))
    loaded = tfopt.load_model(made.path, compile=False)
    x = _x(digits)
    np.testing.assert_allclose(loaded(x), model(x, training=False), atol=1e-5)


@pytest.mark.parametrize("keras", each_keras("load_model"))
def test_a_pruned_model_saves_and_loads_with_the_same_outputs(keras, digits, tmp_path):
    model = _pruned(keras, digits)
    path = str(tmp_path / "pruned.keras")
    model.save(path)
    loaded = tfopt.load_model(path)
    assert Keras.of(loaded) is keras
    x = _x(digits)
    np.testing.assert_allclose(
        loaded(x, training=False), model(x, training=False), atol=1e-6
    )


# Bad input gets the same answer, word for word, whichever Keras the model is.
BAD_CALLS = {
    "target out of range": (
        lambda m: tfopt.prune(m, 1.5),
        ValueError,
        "`target_sparsity` must be in (0, 1). Received: target_sparsity=1.5",
    ),
    "target of a wrong type": (
        lambda m: tfopt.prune(m, "half"),
        TypeError,
        "`target_sparsity` must be a float. Received: target_sparsity='half'",
    ),
    "unknown schedule": (
        lambda m: tfopt.prune(m, 0.5, schedule="cubic"),
        ValueError,
        "`schedule` must be one of ['polynomial', 'constant']. "
        "Received: schedule='cubic'",
    ),
    "unknown layer": (
        lambda m: tfopt.prune(m, 0.5, layers=["nope"]),
        ValueError,
        "`layers` names 'nope', which matches no layer of the model. Its layers: "
        "['reshape', 'conv1', 'pool1', 'conv2', 'pool2', 'flatten', 'logits']. "
        "Received: layers=['nope']",
    ),
    "temperature": (
        lambda m: tfopt.Distiller(student=m, teacher=m, temperature=0),
        ValueError,
        "`temperature` must be > 0. Received: temperature=0",
    ),
    "unknown distillation loss": (
        lambda m: tfopt.Distiller(student=m, teacher=m, distillation_loss="l1"),
        ValueError,
        "`distillation_loss` must be one of ['kl', 'mse']. "
        "Received: distillation_loss='l1'",
    ),
    "unknown quantization": (
        lambda m: tfopt.export_tflite(m, "/tmp/never.tflite", quantization="int4"),
        ValueError,
        "`quantization` must be one of [None, 'dynamic', 'float16', 'int8']. "
        "Received: quantization='int4'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_is_refused_alike_by_both_kerases(case, digits):
    call, error, expected = BAD_CALLS[case]
    messages = []
    for keras in Keras:
        with pytest.raises(error) as caught:
            call(build(keras, digits.info))
        messages.append(str(caught.value))
    assert messages == [expected, expected]


def test_the_readme_says_what_keras3_lacks_as_the_table_does():
    lacking = "; ".join(c.what for c in kerases.missing(Keras.KERAS3))
    readme = (ROOT / "README.md").read_text()
    if lacking:
        assert f"| Keras 3: not yet | {lacking} | next phase |" in readme
    else:
        assert "Keras 3: not yet" not in readme
