import json
import re
import warnings

import numpy as np
import pytest

import tfopt
from tests.support import cluster, helpers
from tests.support.helpers import compiled
from tfopt import keras, models
from tfopt.keras2 import pruning


def _fit(model, data, epochs=1, **kwargs):
    return model.fit(
        data.train,
        epochs=epochs,
        verbose=0,
        callbacks=[tfopt.PruningCallback(), *kwargs.pop("callbacks", [])],
        **kwargs,
    )


def _base(info, name="tfmot_mnist"):
    keras.utils.set_random_seed(0)
    return models.build(name, info.input_shape, info.num_classes, keras_version=2)


@pytest.fixture(scope="module")
def trained(digits):
    """tfmot_mnist pruned to 80% over two epochs of digits."""
    base = _base(digits.info)
    before = [w.copy() for w in base.get_weights()]
    pruned = compiled(tfopt.prune(base, 0.8, end=0.75))
    history = _fit(pruned, digits, epochs=2)
    return base, before, pruned, history


def test_target_reached_per_layer_and_input_untouched(trained):
    base, before, pruned, history = trained
    stripped = tfopt.strip(pruned)
    report = tfopt.sparsity_report(stripped)
    assert {r.layer for r in report.rows} == {"conv2d", "dense"}
    for row in report.rows:
        assert row.sparsity == pytest.approx(0.8, abs=0.01), row
    for a, b in zip(before, base.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not tfopt.pruning.wrappers(base)


def test_sparsity_is_in_history_and_rises_with_the_schedule(trained):
    sparsity = trained[3].history["sparsity"]
    assert len(sparsity) == 2
    assert 0.3 < sparsity[0] < 0.8  # mid-schedule after one epoch of two
    assert sparsity[1] == pytest.approx(0.8, abs=0.01)


def test_strip_gives_a_plain_model_with_the_zeros(trained):
    pruned = trained[2]
    stripped = tfopt.strip(pruned)
    assert type(stripped) is keras.Model or type(stripped).__name__ == "Functional"
    assert not any("Prune" in type(layer).__name__ for layer in stripped.layers)
    kernel = stripped.get_layer("dense").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.8, abs=0.01)


@pytest.mark.slow
def test_a_ten_step_run_with_fractions_reaches_the_target(digits):
    model = compiled(tfopt.prune(_base(digits.info), 0.6, begin=0.1, end=0.5))
    model.fit(
        digits.train.take(10), epochs=1, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    [schedule] = {
        id(w.pruning_schedule): w.pruning_schedule for w in pruning.wrappers(model)
    }.values()
    assert schedule.steps == (1, 5, 1)
    assert tfopt.sparsity_report(model).sparsity == pytest.approx(0.6, abs=0.01)


def test_training_without_the_callback_fails_before_the_first_step(digits):
    model = compiled(tfopt.prune(_base(digits.info), 0.5))
    before = model.get_weights()
    with pytest.raises(RuntimeError, match=re.escape(pruning.MISSING_CALLBACK)):
        model.fit(digits.train, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unreachable_absolute_schedule_warns_with_the_numbers(digits):
    model = compiled(tfopt.prune(_base(digits.info), 0.8, begin=0, end=1000))
    steps = digits.info.train_size // 32 + 1  # 41 batches of 32
    with pytest.warns(
        UserWarning,
        match=(
            rf"^pruning reaches 80% at step 1000 but this fit runs {steps} steps; "
            r"final sparsity would be \d+%\."
        ),
    ) as record:
        _fit(model, digits)
    final = int(re.search(r"would be (\d+)%", str(record[0].message)).group(1))
    assert final == round(100 * tfopt.sparsity_report(model).sparsity)


def test_reachable_absolute_schedule_is_silent(digits):
    model = compiled(tfopt.prune(_base(digits.info), 0.5, begin=0, end=20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, digits)
    assert tfopt.sparsity_report(model).sparsity == pytest.approx(0.5, abs=0.01)


def test_constant_schedule_prunes_fully_at_begin(digits):
    model = compiled(
        tfopt.prune(
            _base(digits.info), 0.7, schedule="constant", begin=2, end=30, frequency=5
        )
    )
    model.fit(digits.train.take(2), verbose=0, callbacks=[tfopt.PruningCallback()])
    assert tfopt.sparsity_report(model).sparsity == pytest.approx(0.7, abs=0.01)


def test_initial_sparsity_power_and_frequency_shape_the_schedule():
    schedule = pruning.PruningSchedule(
        0.8, "polynomial", 10, 110, initial_sparsity=0.2, frequency=None, power=1
    )
    assert schedule.steps == (10, 110, 5)  # about 20 updates
    assert schedule.sparsity_at(10) == pytest.approx(0.2)
    assert schedule.sparsity_at(60) == pytest.approx(0.5)  # linear with power=1
    cubic = pruning.PruningSchedule(0.8, "polynomial", 10, 110, 0.2, 7, 3)
    assert cubic.steps == (10, 110, 7)
    assert cubic.sparsity_at(60) == pytest.approx(0.8 - 0.6 * 0.5**3)
    # The last update lands on `end` even off the frequency grid.
    assert cubic.last_update_at_or_before(109) == 108
    assert cubic.last_update_at_or_before(200) == 110


def test_schedule_round_trips_its_config():
    schedule = pruning.PruningSchedule(0.7, "constant", 0.1, 0.9, 0.0, 4, 3)
    again = pruning.PruningSchedule.from_config(schedule.get_config())
    assert again.get_config() == schedule.get_config()
    assert json.loads(json.dumps(schedule.get_config()))["config"]["begin"] == 0.1


@pytest.mark.parametrize(
    "kwargs, wrapped",
    [
        ({"layers": ["dense"]}, ["dense"]),
        ({"layers": ["conv.*"]}, ["conv2d"]),
        ({"layers": [keras.layers.Dense]}, ["dense"]),
        ({"exclude": ["dense"]}, ["conv2d"]),
        ({"exclude": [keras.layers.Conv2D]}, ["dense"]),
    ],
)
def test_layer_selection(digits, kwargs, wrapped):
    model = tfopt.prune(_base(digits.info), 0.5, **kwargs)
    assert [w.layer.name for w in pruning.wrappers(model)] == wrapped


def test_excluded_layers_stay_dense_after_training(digits):
    model = compiled(tfopt.prune(_base(digits.info), 0.8, end=1.0, exclude=["conv2d"]))
    _fit(model, digits)
    report = tfopt.sparsity_report(tfopt.strip(model))
    assert report.layer("conv2d")[0].zeros == 0
    assert report.layer("dense")[0].sparsity == pytest.approx(0.8, abs=0.01)


def test_two_by_four_is_exact_where_it_fits_and_named_where_not(digits):
    keras.utils.set_random_seed(0)
    base = models.build("student_cnn", digits.info.input_shape, 10, keras_version=2)
    with pytest.warns(
        UserWarning,
        match=(
            r"m_by_n=\(2, 4\) does not fit layers \['conv1'\] \(input channels must "
            r"be a multiple of n"
        ),
    ):
        model = compiled(tfopt.prune(base, 0.5, m_by_n=(2, 4), end=1.0))
    _fit(model, digits)
    report = tfopt.sparsity_report(tfopt.strip(model))
    for name in ("conv2", "logits"):
        [row] = report.layer(name)
        assert row.m_by_n is True and row.sparsity == pytest.approx(0.5, abs=0.01)
    [conv1] = report.layer("conv1")
    assert conv1.m_by_n is None and conv1.sparsity == pytest.approx(0.5, abs=0.02)


def test_block_sparsity_zeros_whole_blocks(digits):
    model = compiled(
        tfopt.prune(
            _base(digits.info), 0.5, end=1.0, block_size=(1, 2), layers=["dense"]
        )
    )
    _fit(model, digits)
    kernel = tfopt.strip(model).get_layer("dense").kernel.numpy()  # 108 x 10
    pairs = (kernel.reshape(108, 5, 2) == 0).sum(axis=2)
    assert set(np.unique(pairs)) <= {0, 2}
    assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.02)


def test_nested_functional_models_are_pruned_through(digits):
    inner = _base(digits.info)
    inputs = keras.Input(digits.info.input_shape)
    outer = keras.Model(inputs, keras.layers.Activation("linear")(inner(inputs)))
    model = compiled(tfopt.prune(outer, 0.6, end=1.0))
    assert [w.layer.name for w in pruning.wrappers(model)] == ["conv2d", "dense"]
    _fit(model, digits)
    assert tfopt.sparsity_report(tfopt.strip(model)).sparsity == pytest.approx(
        0.6, abs=0.01
    )


@pytest.mark.slow
def test_resnet_tiny_prunes_its_convolutions(digits):
    model = compiled(tfopt.prune(_base(digits.info, "resnet_tiny"), 0.5, end=1.0))
    names = {w.layer.name for w in pruning.wrappers(model)}
    assert names == {
        "stem_conv",
        "res1_pw",
        "res2_pw",
        "res2_proj",
        "res3_pw",
        "logits",
    }
    _fit(model, digits)
    report = tfopt.sparsity_report(tfopt.strip(model))
    assert all(r.sparsity == pytest.approx(0.5, abs=0.02) for r in report.rows)


def test_strip_keeps_quantization_wrappers(digits):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(_base(digits.info))
    stripped = tfopt.strip(qat)
    kinds = [type(layer).__name__ for layer in stripped.layers]
    assert kinds == [type(layer).__name__ for layer in qat.layers]
    assert kinds.count("QuantizeWrapperV2") == 5 and "QuantizeLayer" in kinds
    for a, b in zip(qat.get_weights(), stripped.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("suffix", [".keras", ".h5", "_savedmodel"])
def test_save_load_and_continue_training(trained, digits, tmp_path, suffix):
    pruned = trained[2]
    path = tmp_path / f"pruned{suffix}"
    pruned.save(path)
    loaded = tfopt.load_model(path)
    assert [w.layer.name for w in pruning.wrappers(loaded)] == ["conv2d", "dense"]
    step = int(pruning.wrappers(loaded)[0].pruning_step.numpy())
    assert step == int(pruning.wrappers(pruned)[0].pruning_step.numpy())
    _fit(loaded, digits)
    assert int(pruning.wrappers(loaded)[0].pruning_step.numpy()) > step
    assert tfopt.sparsity_report(loaded).sparsity == pytest.approx(0.8, abs=0.01)


def test_m_by_n_survives_save_and_load(digits, tmp_path):
    keras.utils.set_random_seed(0)
    base = models.build("student_cnn", digits.info.input_shape, 10, keras_version=2)
    model = tfopt.prune(base, 0.5, m_by_n=(2, 4), layers=["logits"])
    model.save(tmp_path / "m.keras")
    [wrapper] = pruning.wrappers(tfopt.load_model(tmp_path / "m.keras"))
    assert wrapper.sparsity_m_by_n == (2, 4)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("preempted")


def _resumable_run(digits, backup, interrupt):
    model = compiled(tfopt.prune(_base(digits.info), 0.7, end=0.8))
    callbacks = [tfopt.PruningCallback(), keras.callbacks.BackupAndRestore(str(backup))]
    model.fit(
        digits.train,
        epochs=4,
        verbose=0,
        callbacks=callbacks + ([_Interrupt()] if interrupt else []),
    )
    return model


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(digits, tmp_path):
    whole = _resumable_run(digits, tmp_path / "a", interrupt=False)
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(digits, tmp_path / "b", interrupt=True)
    resumed = _resumable_run(digits, tmp_path / "b", interrupt=False)
    steps = [int(pruning.wrappers(m)[0].pruning_step.numpy()) for m in (whole, resumed)]
    assert steps[0] == steps[1] == 4 * 41
    sparsities = [tfopt.sparsity_report(m).sparsity for m in (whole, resumed)]
    assert sparsities[0] == pytest.approx(sparsities[1], abs=1e-6)
    assert sparsities[0] == pytest.approx(0.7, abs=0.01)


@pytest.mark.slow
def test_same_result_on_default_and_mirrored(mirrored):
    single_weights, single_masks = helpers.train_pruned(tfopt.get_strategy("default"))
    double_weights, double_masks = helpers.train_pruned(mirrored)
    for a, b in zip(single_masks, double_masks, strict=True):
        np.testing.assert_array_equal(a, b)
        assert (a == 0).mean() == pytest.approx(0.5, abs=0.01)
    for a, b in zip(single_weights, double_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_same_result_on_two_worker_processes():
    (w0, m0), (w1, m1) = cluster.run_workers(helpers.pruned_multi_worker_job)
    single_weights, single_masks = helpers.train_pruned(tfopt.get_strategy("default"))
    for a, b, c in zip(single_masks, m0, m1, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
    for a, b, c in zip(single_weights, w0, w1, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(b, c)
