"""Pruning Keras 3 models: tfopt's own path (`tfopt.keras3.pruning`), through the
same public names as tf_keras models."""

import keras
import numpy as np
import pytest

import tfopt
from tests.support import helpers, k3
from tests.support.k3 import LOSS, cnn
from tfopt.keras3 import pruning


def _fit(model, data, epochs=1, callbacks=None, **kwargs):
    return model.fit(
        data.train,
        epochs=epochs,
        verbose=0,
        callbacks=[tfopt.PruningCallback()] if callbacks is None else callbacks,
        **kwargs,
    )


def _pruned(digits, target=0.8, **kwargs):
    keras.utils.set_random_seed(0)
    model = tfopt.prune(cnn(digits.info.input_shape), target, **kwargs)
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    base = cnn(digits.info.input_shape)
    before = [w.copy() for w in base.get_weights()]
    pruned = tfopt.prune(base, 0.8, end=0.75)
    pruned.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    history = _fit(pruned, digits, epochs=2)
    return base, before, pruned, history


def test_target_reached_per_layer_and_input_untouched(trained):
    base, before, pruned, history = trained
    report = tfopt.sparsity_report(pruned)
    assert {r.layer for r in report.rows} == {"conv", "hidden", "logits"}
    for row in report.rows:
        assert row.pruned
        assert row.sparsity == pytest.approx(0.8, abs=0.01), row
    for a, b in zip(before, base.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not pruning.masked(base)
    assert history.history["accuracy"][-1] > 0.3  # learning, while pruned


def test_sparsity_is_in_history_and_rises_with_the_schedule(trained):
    sparsity = trained[3].history["sparsity"]
    assert len(sparsity) == 2
    assert 0.3 < sparsity[0] < 0.8
    assert sparsity[1] == pytest.approx(0.8, abs=0.01)


def test_strip_gives_a_plain_model_with_the_zeros(trained, digits):
    pruned = trained[2]
    stripped = tfopt.strip(pruned)
    assert not pruning.masked(stripped)
    assert all(v.constraint is None for v in stripped.trainable_variables)
    kernel = stripped.get_layer("hidden").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.8, abs=0.01)
    x = next(iter(digits.test))[0]
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )


def test_training_without_the_callback_fails_before_the_first_step(digits):
    model = _pruned(digits)
    before = [w.copy() for w in model.get_weights()]
    for _ in range(2):  # the second fit must not reuse a half-traced step
        with pytest.raises(
            RuntimeError,
            match=(
                r"^This Keras 3 model was pruned with tfopt.prune and is training "
                r"without tfopt.PruningCallback\(\)"
            ),
        ):
            _fit(model, digits, callbacks=[])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # With the callback it trains, and after that fit a bare one fails again.
    assert _fit(model, digits).history["sparsity"][-1] > 0.5
    with pytest.raises(RuntimeError, match="without tfopt.PruningCallback"):
        _fit(model, digits, callbacks=[])


def test_a_ten_step_run_with_fractions_reaches_the_target(digits):
    model = _pruned(digits, end=0.5)
    history = _fit(model, digits, steps_per_epoch=10)
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)


def test_steps_per_execution_past_the_end_still_reaches_the_target(digits):
    model = _pruned(digits, end=7, begin=0)
    model.compile(optimizer="adam", loss=LOSS, steps_per_execution=3)
    history = _fit(model, digits, steps_per_epoch=9)
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)


def test_unreachable_absolute_schedule_warns_with_the_numbers(digits):
    model = _pruned(digits, begin=0, end=1000)
    with pytest.warns(
        UserWarning,
        match=(
            r"^pruning reaches 80% at step 1000 but this fit runs 41 steps; "
            r"final sparsity would be \d+%"
        ),
    ):
        _fit(model, digits)


def test_layer_selection_by_name_regex_and_class(digits):
    shape = digits.info.input_shape
    for kwargs, expected in (
        ({"layers": ["hidden"]}, {"hidden"}),
        ({"layers": ["h.*", keras.layers.Conv2D]}, {"hidden", "conv"}),
        ({"exclude": ["logits"]}, {"hidden", "conv"}),
    ):
        model = tfopt.prune(cnn(shape), 0.5, **kwargs)
        assert {layer.name for layer, _, _ in pruning.masked(model)} == expected
    with pytest.raises(
        ValueError,
        match=r"^`layers` names 'nope', which matches "
        r"no layer of the model",
    ):
        tfopt.prune(cnn(shape), 0.5, layers=["nope"])
    with pytest.raises(TypeError, match=r"Keras 3 layer classes"):
        tfopt.prune(cnn(shape), 0.5, layers=[int])


def test_two_by_four_is_exact_where_it_fits_and_named_where_not(digits):
    keras.utils.set_random_seed(0)
    with pytest.warns(
        UserWarning,
        match=r"m_by_n=\(2, 4\) does not fit layers "
        r"\['conv'\]",
    ):
        model = tfopt.prune(cnn(digits.info.input_shape), 0.5, m_by_n=(2, 4))
    model.compile(optimizer="adam", loss=LOSS)
    _fit(model, digits)
    rows = {r.layer: r for r in tfopt.sparsity_report(model).rows}
    assert rows["hidden"].m_by_n and rows["logits"].m_by_n
    assert rows["hidden"].sparsity == pytest.approx(0.5)
    assert rows["conv"].sparsity == pytest.approx(0.5, abs=0.01)


def _mlp(k, seed=0):
    k.utils.set_random_seed(seed)
    inputs = k.Input((12,))
    x = k.layers.Dense(8, name="hidden")(inputs)
    return k.Model(inputs, k.layers.Dense(3, name="logits")(x))


def test_block_pruning_zeroes_the_blocks_tfmot_zeroes():
    # The same kernels pruned by TFMOT (tf_keras) and by tfopt's Keras 3
    # path, at a learning rate of 0: the same whole blocks go. (TFMOT fails
    # on a kernel one block wide; both Kerases prune such a kernel weight by
    # weight. Where blocks do not divide a kernel, TFMOT scores windows
    # shifted by its SAME padding; tfopt scores the blocks it zeroes.)
    from tfopt.keras2.binding import keras as tf_keras

    x = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    y = np.zeros((16, 3), np.float32)
    zeros = []
    for k in (tf_keras, keras):
        model = _mlp(k)
        model.set_weights(_mlp(keras).get_weights())
        # One block wide (3 columns): pruned weight by weight, on both.
        with pytest.warns(UserWarning, match=r"does not fit layers \['logits'\]"):
            pruned = tfopt.prune(model, 0.5, end=1.0, block_size=(2, 4))
        pruned.compile(optimizer=k.optimizers.SGD(0.0), loss="mse")
        pruned.fit(
            x, y, epochs=2, batch_size=8, verbose=0, callbacks=[tfopt.PruningCallback()]
        )
        stripped = tfopt.strip(pruned)
        zeros.append(
            [stripped.get_layer(n).get_weights()[0] == 0 for n in ("hidden", "logits")]
        )
    for tfmot_zeros, own in zip(*zeros, strict=True):
        np.testing.assert_array_equal(own, tfmot_zeros)
    hidden = zeros[1][0]
    assert hidden.mean() == pytest.approx(0.5, abs=0.1)
    blocks = hidden.reshape(6, 2, 2, 4)
    assert np.all(blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3)))


def test_block_size_prunes_2d_kernels_in_blocks_and_names_the_others(digits):
    keras.utils.set_random_seed(0)
    with pytest.warns(
        UserWarning, match=r"^block_size=\(1, 4\) does not fit layers \['conv'\]"
    ):
        model = tfopt.prune(cnn(digits.info.input_shape), 0.5, block_size=(1, 4))
    model.compile(optimizer="adam", loss=LOSS)
    _fit(model, digits)
    stripped = tfopt.strip(model)
    rows = {r.layer: r for r in tfopt.sparsity_report(model).rows if r.pruned}
    for name in ("hidden", "logits", "conv"):
        assert rows[name].sparsity == pytest.approx(0.5, abs=0.02), name
    kernel = stripped.get_layer("hidden").get_weights()[0]
    rows_of_four = kernel[:, : kernel.shape[1] // 4 * 4].reshape(kernel.shape[0], -1, 4)
    assert np.all((rows_of_four == 0).all(-1) | (rows_of_four != 0).all(-1))
    again = pruning.PruningMask(**pruning.masked(model)[1][2].get_config())
    assert again.block_size == (1, 4)


def test_save_reload_and_resume(trained, digits, tmp_path):
    pruned = trained[2]
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = tfopt.load_model(path)
    assert [type(c).__name__ for _, _, c in pruning.masked(loaded)] == [
        "PruningMask"
    ] * 3
    assert int(loaded.optimizer.iterations.numpy()) == 2 * 41
    assert tfopt.sparsity_report(loaded).sparsity == pytest.approx(0.8, abs=0.01)
    # Resuming: the masks are the zeros, the schedule goes on from step 82.
    history = loaded.fit(
        digits.train,
        epochs=3,
        initial_epoch=2,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    zeros = [(v.numpy() == 0) for _, v, _ in pruning.masked(pruned)]
    after = [(v.numpy() == 0) for _, v, _ in pruning.masked(loaded)]
    for a, b in zip(zeros, after, strict=True):
        np.testing.assert_array_equal(a, b)  # past `end`, the masks hold


def test_nested_functional_models_are_pruned_through(digits):
    inner = cnn(digits.info.input_shape, name="inner")
    inputs = keras.Input(digits.info.input_shape)
    outer = keras.Model(inputs, keras.layers.Activation("linear")(inner(inputs)))
    pruned = tfopt.prune(outer, 0.5)
    assert {layer.name for layer, _, _ in pruning.masked(pruned)} == {
        "conv",
        "hidden",
        "logits",
    }
    assert not pruning.masked(tfopt.strip(pruned))


def test_same_masks_and_weights_on_default_and_mirrored(mirrored):
    single = k3.train_pruned(tfopt.get_strategy("default"))
    double = k3.train_pruned(mirrored)
    for a, b in zip(single[1], double[1], strict=True):
        np.testing.assert_array_equal(a, b)
        assert (a == 0).mean() == pytest.approx(0.5, abs=0.01)
    for a, b in zip(single[0], double[0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert single[2]["loss"] == pytest.approx(double[2]["loss"], rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"target_sparsity": 1.0},
            ValueError,
            r"^`target_sparsity` must be in \(0, 1\)",
        ),
        ({"target_sparsity": "x"}, TypeError, r"^`target_sparsity` must be"),
        ({"begin": 0, "end": 0.5}, ValueError, r"^`begin` and `end` must both be"),
        (
            {"block_size": (2, 1), "target_sparsity": 0.8},
            ValueError,
            r"must leave at least one weight in every pruned tensor: logits/kernel "
            r"has 4 blocks, so it can be at most 0\.7500 sparse",
        ),
        ({"m_by_n": (4, 2)}, ValueError, r"^`m_by_n` must be two ints"),
        (
            {"target_sparsity": 0.999},
            ValueError,
            r"must leave at least one weight in every pruned tensor: logits/kernel",
        ),
    ],
)
def test_bad_arguments_name_the_value(digits, kwargs, error, message):
    kwargs = {"target_sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        tfopt.prune(
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="logits")]),
            kwargs.pop("target_sparsity"),
            **kwargs,
        )


def test_bad_models_are_refused():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(
        TypeError,
        match=r"^`model` must be a Sequential or "
        r"functional Keras 3 model for pruning: a subclassed model",
    ):
        tfopt.prune(Sub(), 0.5)
    pruned = tfopt.prune(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), 0.5
    )
    with pytest.raises(ValueError, match=r"^`model` is already pruned"):
        tfopt.prune(pruned, 0.5)


def test_pruning_mask_round_trips_its_config():
    mask = pruning.PruningMask(
        0.7, "constant", 3, 9, m_by_n=(2, 4), inner=keras.constraints.MaxNorm(2.0)
    )
    again = pruning.PruningMask(**mask.get_config())
    assert again.get_config() == mask.get_config()
    assert isinstance(again.inner, keras.constraints.MaxNorm)


def test_a_new_optimizer_does_not_send_the_schedule_back(trained, digits):
    # compile() makes a new optimizer whose step count starts at 0; the
    # schedule goes on from the steps the masks have seen (82 here).
    pruned = trained[2]
    steps = {c.get_config()["step"] for _, _, c in pruning.masked(pruned)}
    assert steps == {2 * 41}
    copy = tfopt.load_model(_saved(pruned, digits))
    copy.compile(optimizer=keras.optimizers.Adam(1e-4), loss=LOSS)
    history = _fit(copy, digits)
    assert history.history["sparsity"] == [pytest.approx(0.8, abs=0.01)]


def _saved(model, digits, name="m.keras"):
    import tempfile

    path = f"{tempfile.mkdtemp()}/{name}"
    model.save(path)
    return path


class _SparsityAtBatchEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(pruning.mask_sparsity(pruning.masked(self.model)))


def test_the_mask_of_step_s_is_in_place_before_step_s_runs(digits):
    # As TFMOT counts: begin=3 prunes before the third step's forward pass.
    model = _pruned(digits, schedule="constant", begin=3, end=6, frequency=1)
    record = _SparsityAtBatchEnd()
    _fit(model, digits, steps_per_epoch=4, callbacks=[tfopt.PruningCallback(), record])
    assert record.seen[:2] == [0.0, 0.0]
    assert record.seen[2] == pytest.approx(0.8, abs=0.01)


def test_an_ema_optimizer_ends_with_the_pruned_weights_at_zero(digits):
    keras.utils.set_random_seed(0)
    model = tfopt.prune(cnn(digits.info.input_shape), 0.8, end=0.5)
    model.compile(optimizer=keras.optimizers.Adam(use_ema=True), loss=LOSS)
    _fit(model, digits)
    # fit wrote the moving averages into the weights after the last step.
    kernel = model.get_layer("hidden").kernel.numpy()
    assert (kernel == 0).mean() == pytest.approx(0.8, abs=0.01)


def test_an_eager_fit_without_the_callback_fails_before_any_update(digits):
    model = _pruned(digits)
    model.compile(optimizer="adam", loss=LOSS, run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(RuntimeError, match="without tfopt.PruningCallback"):
        _fit(model, digits, callbacks=[])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_callback_leaves_keras3_batch_ends_alone(digits):
    # On a backend with threads (not TensorFlow's), Keras 3 runs batch-end
    # hooks off the training loop only when no callback acts there.
    callback = tfopt.PruningCallback()
    callback.set_model(_pruned(digits))
    assert callback.async_safe
    assert getattr(type(callback._impl).on_train_batch_end, "_is_default", False)


def test_callback_writes_tensorboard_summaries(digits, tmp_path):
    model = _pruned(digits, end=1.0)
    _fit(
        model,
        digits,
        steps_per_epoch=4,
        epochs=2,
        callbacks=[tfopt.PruningCallback(log_dir=tmp_path, update_freq=2)],
    )
    tags, steps = helpers.summaries(tmp_path)
    assert {
        "pruning/sparsity",
        "pruning/target_sparsity",
        "pruning/hidden/kernel",
        "pruning/conv/kernel",
        "pruning/logits/kernel",
    } <= tags
    assert steps == {2, 6}  # after the second batch of each epoch


def test_more_misuse_is_refused_with_its_reason(digits):
    with pytest.raises(
        ValueError,
        match=r"^`model` must be built \(give it an "
        r"`Input`\) before pruning",
    ):
        tfopt.prune(keras.Sequential([keras.layers.Dense(2)]), 0.5)
    for call in (tfopt.sparsity_report, tfopt.strip):
        with pytest.raises(TypeError, match=r"^`model` must be a "):
            call(keras.layers.Dense(2))
    # A fraction of a run whose length fit cannot know.
    model = _pruned(digits)
    endless = digits.train.repeat()
    with pytest.raises(
        ValueError,
        match=r"^Pruning `begin`/`end` are fractions "
        r"of the run, but this fit does not know its length",
    ):
        model.fit(
            endless,
            epochs=1,
            steps_per_epoch=None,
            verbose=0,
            callbacks=[tfopt.PruningCallback()],
        )


def test_the_callback_says_when_it_has_nothing_to_drive(digits):
    model = cnn(digits.info.input_shape)
    model.compile(optimizer="adam", loss=LOSS)
    with pytest.warns(
        UserWarning,
        match=r"^PruningCallback found no pruned model "
        r"to drive \(no PruningMask constraints\); it does nothing",
    ):
        _fit(model, digits, steps_per_epoch=1)


@pytest.mark.slow
def test_depthwise_convolutions_are_pruned_strip_and_report(digits):
    # Keras 3 names a depthwise convolution's kernel `kernel` (tf_keras:
    # `depthwise_kernel`); MobileNetV2's once crashed prune with it.
    keras.utils.set_random_seed(0)
    model = tfopt.models.build(
        "mobilenet_v2", digits.info.input_shape, 10, keras_version=3
    )
    pruned = tfopt.prune(model, 0.5, end=1.0)
    depthwise = [
        layer.name
        for layer in pruning.flat_layers(pruned)
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    assert depthwise
    pruned.compile(optimizer="sgd", loss=LOSS)
    pruned.fit(
        digits.train.take(2),
        epochs=1,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    rows = {row.layer: row for row in tfopt.sparsity_report(tfopt.strip(pruned)).rows}
    for name in depthwise:
        assert rows[name].sparsity == pytest.approx(0.5, abs=0.06), name


def test_attention_and_recurrent_layers_are_named_and_counted():
    # A transformer student once reported "50%" while a quarter of its
    # weights were zeros: the attention's stayed dense, unnamed and uncounted.
    inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    x = keras.layers.LSTM(8, name="lstm")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    with pytest.warns(UserWarning) as caught:
        pruned = tfopt.prune(model, 0.5, end=1.0)
    message = str(caught[0].message)
    assert message.startswith(
        "prune: these layers' weights stay dense: "
        "['attention (MultiHeadAttention)', 'lstm (LSTM)']"
    )
    pruned.compile(optimizer="sgd", loss="mse")
    pruned.fit(
        np.ones((8, 6, 8)),
        np.ones((8, 4)),
        epochs=2,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    report = tfopt.sparsity_report(tfopt.strip(pruned))
    assert {r.layer for r in report.rows} == {"attention", "lstm", "logits"}
    assert report.layer("logits")[0].sparsity == pytest.approx(0.5)
    dense = sum(r.params for r in report.rows if r.layer != "logits")
    assert report.sparsity == pytest.approx(16 / (dense + 32), abs=0.01)


def test_a_keras_loaded_adam_model_trains_after_the_missing_callback_error(
    digits, tmp_path
):
    # keras.saving.load_model (not tfopt.load_model) leaves the model
    # unguarded: the error comes while the step is traced, after Keras began
    # building Adam's slots inside that trace. Every later fit with the
    # callback once failed ("OptionalFromValue ... length 0") until the
    # model was recompiled.
    model = _pruned(digits, end=1.0)
    model.fit(digits.train.take(2), verbose=0, callbacks=[tfopt.PruningCallback()])
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    with pytest.raises(RuntimeError, match="PruningCallback"):
        loaded.fit(digits.train.take(2), verbose=0)
    history = loaded.fit(
        digits.train.take(4), epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["sparsity"][-1] > 0
