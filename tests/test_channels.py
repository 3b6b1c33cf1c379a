"""Channel dependency groups (channel pruning's groundwork): which channels of a
model must be removed together."""

import numpy as np
import pytest

from tfopt import keras
from tfopt.keras2 import channels, shrink

L = keras.layers


def _block():
    """A residual stream, a depthwise convolution, a squeeze-excite gate, a
    concatenation and a Flatten before a Dense head."""
    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(stem))
    wide = L.Conv2D(6, 1, name="expand")(x)
    wide = L.DepthwiseConv2D(3, padding="same", name="dw")(wide)
    gate = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(wide)
    gate = L.Conv2D(2, 1, activation="relu", name="se_reduce")(gate)
    gate = L.Conv2D(6, 1, activation="sigmoid", name="se_expand")(gate)
    wide = L.Multiply(name="excite")([wide, gate])
    x = L.Add(name="add")([x, L.Conv2D(4, 1, name="project")(wide)])
    side = L.Conv2D(3, 1, name="side")(x)
    x = L.Concatenate(name="concat")([x, side])
    x = L.Conv2D(5, 3, strides=2, name="head")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inputs, L.Dense(2, name="logits")(x))


def _by_producer(groups):
    return {group.producers: group for group in groups}


def test_groups_of_a_block_with_every_kind_of_tie():
    groups = _by_producer(channels.channel_groups(_block()))
    assert set(groups) == {
        ("project", "stem"),
        ("expand", "se_expand"),
        ("se_reduce",),
        ("side",),
        ("head",),
    }
    stream = groups[("project", "stem")]  # tied by the Add
    assert stream.size == 4
    assert stream.channels["concat"] == (0, 1, 2, 3)  # at offset 0
    assert stream.channels["stem_bn"] == stream.channels["add"] == (0, 1, 2, 3)
    gated = groups[("expand", "se_expand")]  # the gate multiplies its channels
    assert gated.size == 6 and {"dw", "excite", "squeeze"} <= set(gated.channels)
    side = groups[("side",)]
    assert side.channels["concat"] == (4, 5, 6)
    # The Flatten spreads each of head's 5 channels over 3x3 positions.
    head = groups[("head",)]
    assert head.size == 5
    assert head.channels["flat"][1] == (1, 6, 11, 16, 21, 26, 31, 36, 41)
    # The model's input and its logits are never pruned.
    assert all(
        "logits" not in g.channels and "input_1" not in g.channels
        for g in groups.values()
    )


def test_a_layer_that_cannot_be_followed_freezes_its_channels():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, name="a")(inputs)
    x = L.LayerNormalization(name="norm")(a)  # mixes channels
    b = L.Conv2D(4, 3, name="b")(x)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(b)))
    assert [g.producers for g in channels.channel_groups(model)] == [("b",)]


def _app(name, **kwargs):
    keras.backend.clear_session()
    return getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=10, **kwargs
    )


@pytest.mark.slow  # builds ResNet50
def test_resnet50_stages_are_one_group_each():
    groups = channels.channel_groups(_app("ResNet50"))
    # 4 residual streams, 2 groups inside each of 16 bottlenecks, the stem.
    assert len(groups) == 4 + 2 * 16 + 1
    streams = [g for g in groups if len(g.producers) > 1]
    assert [g.size for g in streams] == [2048, 1024, 512, 256]
    assert streams[0].producers == (
        "conv5_block1_0_conv",
        "conv5_block1_3_conv",
        "conv5_block2_3_conv",
        "conv5_block3_3_conv",
    )
    inner = {g.producers: g.size for g in groups if len(g.producers) == 1}
    assert inner[("conv2_block1_1_conv",)] == 64
    assert inner[("conv5_block3_2_conv",)] == 512


@pytest.mark.slow  # builds MobileNetV2 and EfficientNetB0
def test_mobilenet_v2_and_efficientnet_b0_groups():
    groups = channels.channel_groups(_app("MobileNetV2", alpha=0.35))
    expanded = _by_producer(groups)[("block_1_expand",)]
    assert {"block_1_depthwise", "block_1_depthwise_relu"} <= set(expanded.channels)
    assert all("predictions" not in g.channels for g in groups)
    groups = channels.channel_groups(_app("EfficientNetB0"))
    gated = _by_producer(groups)[("block2a_expand_conv", "block2a_se_expand")]
    assert gated.size == 96
    assert {"block2a_dwconv", "block2a_se_squeeze", "block2a_se_excite"} <= set(
        gated.channels
    )
    assert all(g.size > 0 for g in groups)


@pytest.mark.parametrize("kind", [L.Lambda(lambda t: t * 2.0), L.Softmax()])
def test_unknown_or_mixing_layers_before_the_head_stop_nothing_else(kind):
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, name="a")(inputs)
    b = L.Conv2D(4, 3, name="b")(kind(a))
    model = keras.Model(inputs, L.GlobalAveragePooling2D()(b))
    # `a` feeds a layer it cannot see through; `b` feeds the output.
    assert channels.channel_groups(model) == []


def _masked(model, kept):
    """A copy of `model` whose layers ignore the removed input channels:
    their input slices of the kernels are zero."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    sources = {
        e["config"]["name"]: [r[0] for r in e["inbound_nodes"][0]]
        for e in model.get_config()["layers"]
        if e["inbound_nodes"]
    }
    for layer in copy.layers:
        if not isinstance(layer, (L.Conv2D, L.Dense)) or isinstance(
            layer, L.DepthwiseConv2D
        ):
            continue
        source = sources[layer.name][0]
        kernel, *rest = layer.get_weights()
        drop = [c for c in range(kernel.shape[-2]) if c not in set(kept[source])]
        kernel[..., drop, :] = 0
        layer.set_weights([kernel, *rest])
    return copy


def _half(groups, seed=0):
    rng = np.random.default_rng(seed)
    return {
        i: sorted(rng.choice(g.size, max(1, g.size // 2), replace=False))
        for i, g in enumerate(groups)
    }


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(_block, id="block"),
        pytest.param(
            lambda: _app("MobileNetV2", alpha=0.35),
            id="MobileNetV2",
            marks=pytest.mark.slow,
        ),
        pytest.param(lambda: _app("ResNet50"), id="ResNet50", marks=pytest.mark.slow),
        pytest.param(
            lambda: _app("EfficientNetB0"), id="EfficientNetB0", marks=pytest.mark.slow
        ),
    ],
)
def test_shrunk_model_computes_what_the_masked_one_does(build):
    keras.utils.set_random_seed(0)
    model = build()
    # BatchNorm statistics away from 0/1, so slicing them is checked too.
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights(
                [
                    np.random.default_rng(1)
                    .uniform(0.5, 1.5, w.shape)
                    .astype("float32")
                    for w in layer.get_weights()
                ]
            )
    groups = channels.channel_groups(model)
    keep = _half(groups)
    small = shrink.remove_channels(model, groups, keep)
    assert small.count_params() < 0.6 * model.count_params()
    kept = channels.kept_channels(model, groups, keep)
    shape = model.input_shape[1:]
    x = np.random.default_rng(2).uniform(0, 1, (4, *shape)).astype("float32")
    expected = _masked(model, kept)(x, training=False).numpy()
    np.testing.assert_allclose(
        small(x, training=False).numpy(), expected, rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_a_shrunk_model_saves_quantizes_and_exports(tmp_path):
    import warnings

    import tfopt

    model = _block()
    groups = channels.channel_groups(model)
    small = shrink.remove_channels(model, groups, _half(groups))
    small.save(tmp_path / "small.keras")
    again = tfopt.load_model(str(tmp_path / "small.keras"))
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), small(x).numpy(), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = tfopt.quantize(small)
    qat.compile(optimizer="adam", loss="mse")
    qat.fit(x, np.zeros((8, 2)), verbose=0)
    path = tfopt.export_tflite(
        qat, str(tmp_path / "small.tflite"), quantization="int8"
    ).path
    ops = tfopt.export.tflite_ops(path)
    assert ops.float_ops == () and ops.quantize == 1, ops.counts


def test_max_cut_is_the_cut_of_every_group_at_its_minimum():
    import tfopt

    model = tfopt.models.build("student_cnn", (8, 8), 10, keras_version=2)
    # conv1 (16) and conv2 (32) keep 8 each: a third of the channels.
    assert tfopt.channels.max_cut(model, measure="channels") == pytest.approx(2 / 3)
    most = tfopt.channels.max_cut(model, measure="macs")
    assert 0.8 < most < 0.85
    # prune reaches it, and refuses just past it with the same figure.
    tfopt.prune(model, most - 0.01, structure=tfopt.pruning.Channels(measure="macs"))
    with pytest.raises(ValueError, match=rf"must be at most {int(most * 1000) / 1000}"):
        tfopt.prune(
            model, most + 0.01, structure=tfopt.pruning.Channels(measure="macs")
        )
    with pytest.raises(ValueError, match=r"^`measure` must be one of"):
        tfopt.channels.max_cut(model, measure="flops")
