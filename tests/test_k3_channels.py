"""Channel pruning and shrink of Keras 3 models (`tfopt.keras3.channel_pruning`,
`tfopt.keras3.shrink`), on the channel groups both Kerases share
(`tfopt.core.channel_groups`)."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import k3
from tests.support.k3 import LOSS
from tfopt.keras3 import channels, pruning, sparsity


def _data(shape=(8, 8, 1), n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def _pruned(model, target=0.5, **kwargs):
    kwargs = {"structure": "channels", "measure": "macs", "round_to": 2, **kwargs}
    pruned = tfopt.prune(model, target, end=1.0, **kwargs)
    pruned.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    return pruned


def _fit(model, x, y, epochs=2):
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=16,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )


def test_groups_follow_layers_and_functional_api_ops():
    groups, blocked = channels.analyse(k3.channel_cnn())
    by_producer = {g.producers: g for g in groups}
    assert set(by_producer) == {("project", "stem"), ("expand",), ("head",)}
    assert by_producer[("project", "stem")].size == 16  # tied by the Add
    # The hard-swish ops (x + 3, ReLU6, * 1/6, * x) are followed: a pruned
    # channel is 0 * relu6(0 + 3) / 6 = 0 where the depthwise reads it.
    expanded = by_producer[("expand",)]
    assert "dw" in expanded.channels and expanded.size == 24
    assert any(name.startswith("re_lu") for name in expanded.channels)
    assert blocked == {}


def test_an_offset_before_a_convolution_blocks_its_channels_and_is_named():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, name="b")(a + 3.0)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(b)))
    with pytest.warns(UserWarning) as caught:
        tfopt.prune(model, 0.5, structure="channels", round_to=1)
    messages = [str(w.message) for w in caught]
    assert any(
        re.fullmatch(
            r"prune: channels through these layers are not pruned: add\w* \(op:Add: "
            r"a pruned channel would not be zero where b reads it\)\.",
            message,
        )
        for message in messages
    ), messages


def test_prune_reaches_the_mac_target_and_shrink_computes_the_same():
    keras.utils.set_random_seed(0)
    model = k3.channel_cnn()
    x, y = _data()
    pruned = _pruned(model)
    history = _fit(pruned, x, y)
    assert 0.5 <= history.history["sparsity"][-1] < 0.6
    small = tfopt.shrink(pruned)
    assert not pruning.masked(small)  # a plain model
    cut = 1 - sparsity.macs(small) / sparsity.macs(model)
    assert cut == pytest.approx(history.history["sparsity"][-1], abs=1e-6)
    for name in ("stem", "expand", "head"):
        assert small.get_layer(name).filters % 2 == 0
        assert small.get_layer(name).filters < model.get_layer(name).filters
    np.testing.assert_allclose(small(x[:8]), pruned(x[:8]), rtol=1e-5, atol=1e-5)
    small.compile(optimizer="sgd", loss=LOSS)
    small.fit(x, y, epochs=1, verbose=0)  # it trains with no callback


def test_save_reload_and_resume_keeps_the_channels(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _data()
    pruned = _pruned(k3.channel_cnn())
    _fit(pruned, x, y, epochs=1)  # halfway along the schedule
    zeros = [w == 0 for w in pruned.get_weights()]
    pruned.save(tmp_path / "half.keras")
    for loaded in (
        tfopt.load_model(str(tmp_path / "half.keras")),
        keras.saving.load_model(tmp_path / "half.keras"),
    ):
        for before, after in zip(zeros, loaded.get_weights(), strict=True):
            assert np.all(after[before] == 0)
        history = loaded.fit(
            x,
            y,
            epochs=1,
            batch_size=16,
            verbose=0,
            callbacks=[tfopt.PruningCallback()],
        )
        # The schedule goes on from step 4 of 8 to its end.
        assert 0.5 <= history.history["sparsity"][-1] < 0.6
        for before, after in zip(zeros, loaded.get_weights(), strict=True):
            assert np.all(after[before] == 0)  # pruned channels stay pruned
        small = tfopt.shrink(loaded)
        np.testing.assert_allclose(small(x[:4]), loaded(x[:4]), rtol=1e-5, atol=1e-5)


def test_same_masks_and_weights_on_default_and_mirrored(mirrored):
    single = k3.train_channel_pruned(tfopt.get_strategy("default"))
    double = k3.train_channel_pruned(mirrored)
    for a, b in zip(single[0], double[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any((m == 0).any() for m in single[0])
    for part in (1, 2):
        for a, b in zip(single[part], double[part], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_model_with_nothing_to_prune_is_refused_naming_why():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="b")(x))
    with pytest.raises(ValueError) as caught:
        tfopt.prune(model, 0.5, structure="channels")
    assert str(caught.value) == (
        "`model` has no channel group that can be pruned (each group's channels "
        "must run from Conv/Dense producers to consumers, not to the model's "
        "outputs or through layers whose channels cannot be followed) among the "
        "chosen layers. Held back by: double (Lambda: its channels cannot be "
        "followed). Received: layers=None, exclude=None"
    )
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.channels.blocking("model.keras")


def test_max_cut_and_an_unreachable_target():
    model = k3.channel_cnn()
    most = tfopt.channels.max_cut(model, measure="macs", round_to=8)
    assert 0.5 < most < 0.9
    with pytest.raises(ValueError, match=r"^`target_sparsity` must be at most 0\."):
        tfopt.prune(model, 0.95, structure="channels", measure="macs", round_to=8)


def test_taylor_importance_chooses_the_same_channels_on_one_and_two_replicas(
    mirrored,
):
    single = k3.train_channel_pruned(tfopt.get_strategy("default"), importance="taylor")
    double = k3.train_channel_pruned(mirrored, importance="taylor")
    for a, b in zip(single[0], double[0], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(single[1], double[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The gradients matter: L2 norms alone choose other channels.
    by_norm = k3.train_channel_pruned(tfopt.get_strategy("default"))
    assert any(
        not np.array_equal(a, b) for a, b in zip(single[0], by_norm[0], strict=True)
    )


def test_taylor_importance_needs_data_and_scores_a_distillers_student():
    keras.utils.set_random_seed(0)
    x, y = _data()
    pruned = _pruned(k3.channel_cnn(), importance="taylor")
    with pytest.raises(ValueError) as caught:
        _fit(pruned, x, y)
    assert str(caught.value) == (
        "`data` must be batches of (x, y) for importance='taylor', which scores "
        "channels on training data: pass PruningCallback(data=...). "
        "Received: data=None"
    )
    teacher = k3.channel_cnn()
    distiller = tfopt.Distiller(student=pruned, teacher=teacher, temperature=2.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = distiller.fit(
        data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback(data=data)]
    )
    assert 0.5 <= history.history["sparsity"][-1] < 0.6
    small = tfopt.shrink(distiller.student)
    np.testing.assert_allclose(small(x[:4]), pruned(x[:4]), rtol=1e-5, atol=1e-5)


def test_bn_gamma_importance_ranks_by_the_batchnorm_scales():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    x = keras.layers.BatchNormalization(name="a_bn")(x)
    x = keras.layers.Conv2D(4, 3, name="b")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    gamma = np.array([0.1, 2.0, 0.2, 1.0], np.float32)
    model.get_layer("a_bn").set_weights([gamma, np.zeros(4), np.zeros(4), np.ones(4)])
    pruned = _pruned(model, 0.5, measure="channels", round_to=1, importance="bn_gamma")
    pruned.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, _ = _data(n=16)
    pruned.fit(
        x,
        np.zeros((16, 4)),
        epochs=1,
        batch_size=16,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    kept = np.flatnonzero(pruned.get_layer("a_bn").gamma.numpy())
    assert list(kept) == [1, 3]


@pytest.mark.models  # builds four keras.applications models: make test-models
@pytest.mark.parametrize(
    "name, shape",
    [
        ("MobileNetV3Small", (32, 32, 3)),
        ("EfficientNetB0", (32, 32, 3)),
        ("InceptionV3", (75, 75, 3)),
        ("ResNet50", (32, 32, 3)),
    ],
)
def test_applications_prune_and_shrink_exactly(name, shape):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=shape, classes=10
    )
    x, y = _data(shape, n=8)
    pruned = _pruned(model, 0.3, round_to=8)
    pruned.fit(
        x, y, epochs=1, batch_size=4, verbose=0, callbacks=[tfopt.PruningCallback()]
    )
    small = tfopt.shrink(pruned)
    assert 1 - sparsity.macs(small) / sparsity.macs(model) >= 0.3
    np.testing.assert_allclose(small(x[:2]), pruned(x[:2]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["tfmot_mnist", "teacher_cnn", "student_cnn", "resnet_tiny", "mobilenet_v2"]
)
def test_the_same_groups_as_the_tf_keras_build_of_each_reference_model(name):
    from tfopt.keras2 import channels as channels2
    from tfopt.keras2 import graph

    def shape(groups):
        return sorted(
            (g.size, len(g.producers), len(g.channels), sorted(g.channels)[0][:4])
            for g in groups
        )

    two = tfopt.models.build(name, (28, 28), 10, keras_version=2)
    three = tfopt.models.build(name, (28, 28), 10, keras_version=3)
    assert shape(channels.analyse(three)[0]) == shape(
        channels2.analyse(graph.flat(two))[0]
    )
    assert channels.analyse(three)[0]  # something to prune


def test_blocking_names_what_holds_channels_back_on_both_kerases():
    from tfopt import keras as tf_keras

    for api in (keras, tf_keras):
        inputs = api.Input((8, 8, 1))
        a = api.layers.Conv2D(4, 3, name="a")(inputs)
        x = api.layers.Lambda(lambda t: t * 2.0, name="double")(a)
        b = api.layers.Conv2D(4, 3, name="b")(x)
        model = api.Model(inputs, api.layers.Dense(2)(api.layers.Flatten()(b)))
        assert tfopt.channels.blocking(model) == {
            "double": "Lambda: its channels cannot be followed"
        }
        with pytest.raises(ValueError) as caught:
            tfopt.prune(model, 0.9, structure="channels", measure="macs", round_to=1)
        assert (
            "Held back by: double (Lambda: its channels cannot be followed). "
            "Received: target_sparsity=0.9" in str(caught.value)
        )


def test_the_fast_search_prices_a_cut_as_the_cost_does():
    # `final_counts` prices thousands of choices on DenseNet121 with
    # `_Cuts`; it must agree with `removed_share`, which counts the model.
    from tfopt.core import channel_cost

    model = k3.channel_cnn()
    terms = channels.Terms(model)
    groups, _ = channels.analyse(model)
    prunable = list(range(len(groups)))
    rng = np.random.default_rng(0)
    for measure in ("params", "macs"):
        cut = channel_cost._Cuts(terms.nodes, terms.terms, groups, prunable, measure)
        for _ in range(5):
            counts = {i: int(rng.integers(1, groups[i].size + 1)) for i in prunable}
            keep = {i: range(n) for i, n in counts.items()}
            assert cut(counts) == pytest.approx(
                channel_cost.removed_share(
                    terms.nodes, terms.terms, groups, prunable, measure, keep
                ),
                abs=1e-9,
            )
