"""Channel pruning during fit (`tfopt.prune(..., structure="channels")`):
groups zeroed on the schedule to a share of channels, parameters or MACs,
the same on 1 and 2 replicas, resumed where a run stopped, then shrunk to a
smaller model that computes the same."""

import re

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support.helpers import LOSS, compiled
from tests.support.kerases import api
from tfopt import keras
from tfopt.core.kerases import Keras
from tfopt.keras2 import channel_pruning, cost, pruning


def _model(name="resnet_tiny"):
    keras.utils.set_random_seed(0)
    return tfopt.models.build(name, (8, 8, 1), 10, keras_version=2)


def _pruned(target=0.5, name="resnet_tiny", **kwargs):
    return tfopt.prune(
        _model(name), target, structure="channels", end=0.5, round_to=4, **kwargs
    )


def _batches(digits, count):
    """The same `count` batches every time it is iterated: the cache is
    complete only once an iterator reaches its end, which `fit` (stopping
    at the known step count) never does."""
    data = digits.train.take(count).cache()
    for _ in data:
        pass
    return data


class _Interrupted(keras.callbacks.Callback):
    """Stops a 2-epoch fit after its first epoch, as a preemption would."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _train(strategy, data, target=0.5, name="resnet_tiny"):
    with strategy.scope():
        model = compiled(_pruned(target, name))
    model.fit(data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()])
    return model, channel_pruning.controller(model)


@pytest.mark.slow  # trains twice
def test_groups_reach_their_kept_counts_and_shrink_exactly(digits):
    model, pruning_ = _train(tfopt.get_strategy("default"), _batches(digits, 20))
    assert pruning_.prunable
    for i in pruning_.prunable:
        group = pruning_.groups[i]
        kept = cost.kept_count(group.size, 0.5, 4)
        assert len(pruning_.keep[i]) == kept
        assert kept % 4 == 0 or kept == group.size
        for name in group.producers:
            kernel = model.get_layer(name).kernel.numpy()
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
            removed = [
                group.channels[name][k]
                for k in range(group.size)
                if k not in pruning_.keep[i]
            ]
            assert np.all(norms[removed] == 0)
    small = pruning_.shrink()
    assert small.count_params() < 0.5 * model.count_params()
    x = next(iter(digits.test))[0]
    np.testing.assert_allclose(
        small(x, training=False), model(x, training=False), rtol=1e-4, atol=1e-5
    )
    # tfopt.shrink finds the same channels from the zeros alone.
    assert tfopt.shrink(model).count_params() == small.count_params()


@pytest.mark.slow  # trains on both strategies
def test_the_same_channels_on_one_and_two_replicas(digits, mirrored):
    # Without BatchNorm, whose batch statistics are per replica, the weights
    # agree to float rounding: so must the channels chosen from them.
    data = _batches(digits, 20)
    _, single = _train(tfopt.get_strategy("default"), data, name="student_cnn")
    _, double = _train(mirrored, data, name="student_cnn")
    assert single.keep == double.keep


@pytest.mark.slow
def test_taylor_scores_choose_the_same_channels_on_one_and_two_replicas(
    digits, mirrored
):
    data = _batches(digits, 4)  # the same batches on both
    runs = []
    for strategy in (tfopt.get_strategy("default"), mirrored):
        with strategy.scope():
            model = compiled(_pruned(importance="taylor"))
        pruning_ = channel_pruning.controller(model)
        pruning_.update(1.0, model, data)
        runs.append(pruning_.keep)
        replicas = strategy.experimental_local_results(
            model.get_layer("stem_conv").kernel
        )
        for replica in replicas[1:]:
            np.testing.assert_array_equal(replica.numpy(), replicas[0].numpy())
    assert runs[0] == runs[1]
    # The gradients matter: L2 norms alone choose other channels.
    by_norm = channel_pruning.controller(compiled(_pruned(importance="l2")))
    by_norm.update(1.0)
    assert by_norm.keep != runs[0]


@pytest.mark.parametrize("measure", ["params", "macs"])
def test_a_target_share_of_params_or_macs_is_met_by_the_shrunk_model(measure):
    model = _model()
    pruned = tfopt.prune(model, 0.4, structure="channels", measure=measure, round_to=1)
    pruning_ = channel_pruning.controller(pruned)
    pruning_.update(1.0)  # its last update
    index = channel_pruning.MEASURES.index(measure) - 1
    flat = cost.cost(model)[index]
    small = cost.cost(pruning_.shrink())[index]
    assert small <= 0.6 * flat
    assert small >= 0.5 * flat  # the smallest fraction that meets it
    assert pruning_.sparsity() == pytest.approx(1 - small / flat)


def test_an_unreachable_mac_target_names_the_most_it_can_cut():
    with pytest.raises(
        ValueError,
        match=(
            r"^`target_sparsity` must be at most 0\.\d+ with measure='macs': "
            r"removing every prunable channel \(down to round_to=8 per group\)"
        ),
    ):
        tfopt.prune(_model(), 0.99, structure="channels", measure="macs")


@pytest.mark.slow  # trains three times
def test_a_resumed_fit_ends_with_the_channels_of_an_uninterrupted_one(digits, tmp_path):
    data = _batches(digits, 20)
    whole = compiled(_pruned())
    whole.fit(data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()])
    half = compiled(_pruned())
    half.fit(
        data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback(), _Interrupted()]
    )
    half.save(tmp_path / "half.keras")
    resumed = tfopt.load_model(str(tmp_path / "half.keras"))
    assert isinstance(resumed, channel_pruning.ChannelPrunedModel)
    # A reloaded model refuses to train without the callback, like a new one.
    with pytest.raises(RuntimeError, match=re.escape(pruning.MISSING_CALLBACK)):
        resumed.fit(data.take(1), verbose=0)
    resumed = tfopt.load_model(str(tmp_path / "half.keras"))
    resumed.fit(
        data, epochs=2, initial_epoch=1, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert (
        channel_pruning.controller(resumed).keep
        == channel_pruning.controller(whole).keep
    )
    assert tfopt.shrink(resumed).count_params() == tfopt.shrink(whole).count_params()


@pytest.mark.slow  # trains three times on two replicas
def test_a_distributed_checkpoint_resumes_to_the_same_channels(
    digits, mirrored, tmp_path
):
    data = _batches(digits, 20)

    def fresh():
        with mirrored.scope():
            model = compiled(_pruned())
            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        return model, checkpoint

    whole, _ = fresh()
    whole.fit(data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()])
    half, checkpoint = fresh()
    half.fit(
        data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback(), _Interrupted()]
    )
    saved = checkpoint.save(str(tmp_path / "ckpt"))
    resumed, checkpoint = fresh()
    checkpoint.restore(saved)
    resumed.fit(
        data, epochs=2, initial_epoch=1, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert (
        channel_pruning.controller(resumed).keep
        == channel_pruning.controller(whole).keep
    )
    for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # distils
def test_a_channel_pruned_student_distils_against_its_unpruned_self(digits):
    teacher = compiled(_model())
    teacher.fit(digits.train.take(10), verbose=0)
    student = tfopt.prune(teacher, 0.5, structure="channels", round_to=4, end=0.5)
    distiller = tfopt.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    with pytest.raises(RuntimeError, match=re.escape(pruning.MISSING_CALLBACK)):
        distiller.fit(digits.train.take(1), verbose=0)
    before = [w.copy() for w in teacher.get_weights()]
    history = distiller.fit(
        digits.train.take(20), epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.5)
    for old, new in zip(before, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # the teacher is a copy's source
    small = tfopt.shrink(distiller.student)
    assert small.count_params() < 0.6 * teacher.count_params()


def test_taylor_importance_needs_data():
    pruned = compiled(_pruned(importance="taylor"))
    x = np.zeros((8, 8, 8, 1), "float32")
    with pytest.raises(
        ValueError,
        match=(
            r"^`data` must be batches of \(x, y\) for importance='taylor', which "
            r"scores channels on training data: pass PruningCallback\(data=...\)\. "
            r"Received: data=None$"
        ),
    ):
        pruned.fit(
            x, np.zeros(8), epochs=2, verbose=0, callbacks=[tfopt.PruningCallback()]
        )
    with pytest.raises(TypeError, match=r"^`data` must be a tf.data.Dataset"):
        tfopt.PruningCallback(data=x)


def test_channels_go_one_at_a_time_and_end_on_a_multiple_of_round_to():
    pruning_ = channel_pruning.controller(_pruned(0.75))
    for progress in (0.0, 0.3, 0.5, 1.0):
        pruning_.update(progress)
        for i in pruning_.prunable:
            size, final = pruning_.groups[i].size, pruning_.final[i]
            assert final % 4 == 0 and final >= 4
            assert len(pruning_.keep[i]) == size - int(progress * (size - final))


@pytest.mark.slow
def test_the_final_counts_apply_when_steps_per_execution_skips_the_end():
    pruned = _pruned()
    pruned.compile(optimizer="sgd", loss=LOSS, steps_per_execution=3)
    x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 1)).astype("float32")
    pruned.fit(
        x,
        np.zeros(64),
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )  # end: step 8, never seen
    pruning_ = channel_pruning.controller(pruned)
    assert {i: len(pruning_.keep[i]) for i in pruning_.prunable} == pruning_.final
    # A later fit without the callback is refused like a first one.
    with pytest.raises(RuntimeError, match=re.escape(pruning.MISSING_CALLBACK)):
        pruned.fit(x, np.zeros(64), verbose=0)


def test_a_target_that_rounding_cannot_come_near_is_named():
    with pytest.warns(
        UserWarning,
        match=(
            r"^prune: with round_to=8, the nearest cut these channel groups "
            r"allow removes 17% of the channels \(target 30%\): groups of "
            r"\[16, 32\] channels keep multiples of 8"
        ),
    ):
        tfopt.prune(_model(), 0.3, structure="channels")


@pytest.mark.slow  # a second Python process
def test_a_saved_channel_pruned_model_loads_in_a_new_process(tmp_path):
    import subprocess
    import sys

    _pruned().save(tmp_path / "pruned.keras")
    path = str(tmp_path / "pruned.keras")
    code = (
        f"import tfopt; m = tfopt.load_model({path!r}); "
        "print(type(m).__name__, m.tfopt_channel_pruning['round_to'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.stdout.split()[-2:] == ["ChannelPrunedModel", "4"], result.stderr


@pytest.mark.parametrize(
    "size, fraction, round_to, kept",
    [
        (64, 0.5, 8, 32),
        (64, 0.6, 8, 32),
        (12, 0.5, 8, 8),
        (6, 0.9, 8, 6),
        (10, 0.95, 1, 1),
    ],
)
def test_kept_counts_round_up_and_never_reach_zero(size, fraction, round_to, kept):
    assert cost.kept_count(size, fraction, round_to) == kept


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"structure": "filters"}, ValueError, r"^`structure` must be one of"),
        (
            {"structure": "channels", "importance": "random"},
            ValueError,
            r"^`importance` must be one of",
        ),
        (
            {"structure": "channels", "measure": "flops"},
            ValueError,
            r"^`measure` must be one of",
        ),
        ({"structure": "channels", "round_to": 0}, ValueError, r"^`round_to` must be"),
        (
            {"structure": "channels", "m_by_n": (2, 4)},
            ValueError,
            r"^`m_by_n` and `block_size` apply to structure='weights'",
        ),
        (
            {"measure": "macs"},
            ValueError,
            r"^`measure` applies to structure='channels'. Received: measure='macs'$",
        ),
        ({"importance": "taylor"}, ValueError, r"^`importance` applies to"),
        (
            {"importance": "l2"},
            ValueError,
            r"^`importance` applies to structure='channels'. Received: "
            r"importance='l2'$",
        ),
        (
            {"structure": tfopt.pruning.Channels(), "importance": "l2"},
            ValueError,
            r"^`measure`, `importance` and `round_to` are set in "
            r"`structure=Channels\(...\)`, not beside it",
        ),
        (
            {"structure": "channels", "exclude": [".*"]},
            ValueError,
            r"^`model` has no channel group that can be pruned",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.prune(_model(), 0.5, **kwargs)


def test_the_pruned_model_is_a_flat_copy_and_the_source_is_untouched():
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    pruned = _pruned()
    pruning_ = channel_pruning.controller(pruned)
    pruning_.update(1.0)
    assert pruned.tfopt_channel_pruning["measure"] == "channels"
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert (
        tf.reduce_sum(tf.cast(pruned.get_layer("stem_conv").kernel == 0, tf.int32)) > 0
    )


def _zeroed(model, layer_names, channels):
    """Zeroes `channels` of each named Conv (kernel out-slice and bias) and
    of the BatchNormalization after it, as channel pruning leaves them."""
    for name in layer_names:
        layer = model.get_layer(name)
        weights = layer.get_weights()
        for w in weights:
            w[..., channels] = 0
        layer.set_weights(weights)


def _conv_block(activation="relu"):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    x = keras.layers.BatchNormalization(name="a_bn")(x)
    x = keras.layers.Activation(activation)(x)
    x = keras.layers.Conv2D(4, 3, name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_shrink_removes_zeroed_channels_and_checks_the_result(tmp_path):
    keras.utils.set_random_seed(0)
    model = _conv_block()
    _zeroed(model, ["a", "a_bn"], [1, 4, 6])
    model.save(tmp_path / "masked.keras")  # it works from a reloaded file too
    small = tfopt.shrink(tfopt.load_model(str(tmp_path / "masked.keras")))
    assert small.get_layer("a").filters == 5
    assert small.get_layer("b").kernel.shape == (3, 3, 5, 4)
    x = np.random.default_rng(1).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)
    # Nothing zeroed: a same-size copy.
    assert tfopt.shrink(_conv_block()).count_params() == model.count_params()


def test_shrink_keeps_channels_a_sigmoid_makes_non_zero_and_names_why():
    keras.utils.set_random_seed(0)
    model = _conv_block("sigmoid")  # sigmoid(0) = 0.5 still reaches `b`
    _zeroed(model, ["a", "a_bn"], [0, 1])
    with pytest.warns(UserWarning) as caught:
        small = tfopt.shrink(model)
    assert re.fullmatch(
        r"shrink: zeroed channels of \['a'\] stay: their channels reach a model "
        r"input or output or pass through layers that keep them, so removing them "
        r"would change what the model computes: activation\w* \(Activation"
        r"\('sigmoid'\): a pruned channel would not be zero where b reads it\)",
        str(caught[0].message),
    )
    assert small.get_layer("a").filters == 8
    x = np.random.default_rng(1).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)


def _fit_pruned(model, optimizer, data, outputs, **schedule):
    """`model` with half its channels pruned (one at a time) over one epoch
    of `data` in batches of 8, to zero targets of width `outputs`."""
    pruned = tfopt.prune(model, 0.5, structure="channels", round_to=1, **schedule)
    pruned.compile(optimizer=optimizer, loss="mse")
    pruned.fit(
        data,
        np.zeros((len(data), outputs)),
        epochs=1,
        batch_size=8,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    return pruned


@pytest.mark.parametrize(
    "which", [Keras.TF_KERAS, Keras.KERAS3], ids=["tf_keras", "keras3"]
)
def test_shrink_removes_channels_of_a_batchnorm_without_scale(which):
    # InceptionV3's BatchNormalization(scale=False): a pruned channel is
    # -mean/std unless its mean is zeroed with its offset.
    k = api(which)
    k.utils.set_random_seed(0)
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="a")(inputs)
    x = k.layers.BatchNormalization(scale=False, name="a_bn")(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(4, 3, name="b")(x)
    model = k.Model(inputs, k.layers.GlobalAveragePooling2D()(x))
    model.get_layer("a_bn").set_weights(
        [np.full(8, 0.3), np.full(8, 0.5), np.full(8, 2.0)]
    )
    data = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)).astype("float32")
    pruned = _fit_pruned(model, "sgd", data, 4)
    small = tfopt.shrink(pruned)
    assert small.get_layer("a").filters == 4
    np.testing.assert_allclose(small(data), pruned(data), rtol=1e-5, atol=1e-5)


def test_shrink_refuses_what_is_not_a_graph_model(keras3):
    class Subclassed(keras3.Model):
        def call(self, x):
            return x

    with pytest.raises(
        TypeError,
        match=(
            r"^`model` must be a Sequential or functional Keras 3 model for "
            r"shrinking: a subclassed model \(Subclassed\) hides its layer graph"
        ),
    ):
        tfopt.shrink(Subclassed())
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.shrink("model.keras")


@pytest.mark.parametrize(
    "which", [Keras.TF_KERAS, Keras.KERAS3], ids=["tf_keras", "keras3"]
)
def test_channels_are_ranked_by_batchnorm_scales_by_default(which):
    # A BatchNorm after the Flatten has one scale per pixel of each channel:
    # its channels are scored by their pixels' mean scale (equal here), so
    # the convolution's BatchNorm decides.
    k = api(which)
    k.utils.set_random_seed(0)
    inputs = k.Input((4, 4, 1))
    x = k.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    x = k.layers.BatchNormalization(name="a_bn")(x)
    x = k.layers.Flatten()(x)
    x = k.layers.BatchNormalization(name="flat_bn")(x)
    model = k.Model(inputs, k.layers.Dense(3, name="logits")(x))
    model.get_layer("a_bn").set_weights(
        [np.array([0.1, 2.0, 0.2, 1.0]), np.zeros(4), np.zeros(4), np.ones(4)]
    )
    data = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 1)).astype("float32")
    pruned = _fit_pruned(model, k.optimizers.SGD(0.0), data, 3, end=1.0)
    assert list(np.flatnonzero(pruned.get_layer("a_bn").get_weights()[0])) == [1, 3]
    small = tfopt.shrink(pruned)
    np.testing.assert_allclose(small(data), pruned(data), rtol=1e-5, atol=1e-5)
