"""Channel pruning during fit (issue 14's first step): groups zeroed on the
schedule, the same on 1 and 2 replicas, then shrunk to a smaller model that
computes the same."""

import numpy as np
import pytest

import tfopt
from tests.conftest import compiled
from tfopt import _channel_pruning, keras


def _model():
    keras.utils.set_random_seed(0)
    return tfopt.models.build("resnet_tiny", (8, 8, 1), 10)


def _train(strategy, digits, target=0.5):
    with strategy.scope():
        model = compiled(_model())
        pruning = _channel_pruning.ChannelPruning(model, target, end=0.5,
                                                  round_to=4)
    model.fit(digits.train.take(20), epochs=2, verbose=0, callbacks=[pruning])
    return model, pruning


@pytest.mark.slow  # trains twice
def test_groups_reach_their_kept_counts_and_shrink_exactly(digits):
    model, pruning = _train(tfopt.get_strategy("default"), digits)
    assert pruning.groups
    for i, group in enumerate(pruning.groups):
        kept = _channel_pruning.kept_count(group.size, 0.5, 4)
        assert len(pruning.keep[i]) == kept
        assert kept % 4 == 0 or kept == group.size
        for name in group.producers:
            kernel = model.get_layer(name).kernel.numpy()
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
            removed = [group.channels[name][k] for k in range(group.size)
                       if k not in pruning.keep[i]]
            assert np.all(norms[removed] == 0)
    small = pruning.shrink()
    assert small.count_params() < 0.5 * model.count_params()
    x = next(iter(digits.test))[0]
    np.testing.assert_allclose(small(x, training=False), model(x, training=False),
                               rtol=1e-4, atol=1e-5)
    # tfopt.shrink finds the same channels from the zeros alone.
    assert tfopt.shrink(model).count_params() == small.count_params()


@pytest.mark.slow  # trains on both strategies
def test_the_same_channels_on_one_and_two_replicas(digits, mirrored):
    _, single = _train(tfopt.get_strategy("default"), digits)
    _, double = _train(mirrored, digits)
    assert single.keep == double.keep


@pytest.mark.parametrize("size, fraction, round_to, kept", [
    (64, 0.5, 8, 32), (64, 0.6, 8, 32), (12, 0.5, 8, 8), (6, 0.9, 8, 6),
    (10, 0.95, 1, 1)])
def test_kept_counts_round_up_and_never_reach_zero(size, fraction, round_to, kept):
    assert _channel_pruning.kept_count(size, fraction, round_to) == kept


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 1.0}, r"^`target` must be in \(0, 1\). Received: target=1.0$"),
    ({"target": 0.5, "importance": "taylor"}, r"^`importance` must be one of"),
    ({"target": 0.5, "round_to": 0}, r"^`round_to` must be an int >= 1"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _channel_pruning.ChannelPruning(_model(), **kwargs)


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


def test_shrink_refuses_a_copy_that_would_compute_something_else():
    keras.utils.set_random_seed(0)
    model = _conv_block("sigmoid")  # sigmoid(0) = 0.5 still reaches `b`
    _zeroed(model, ["a", "a_bn"], [0, 1])
    with pytest.raises(RuntimeError, match=(
            r"^the shrunk model's outputs differ from the model's by")):
        tfopt.shrink(model)


def test_shrink_refuses_what_is_not_a_graph_model(keras3):
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras object"):
        tfopt.shrink(keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)]))
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.shrink("model.keras")
