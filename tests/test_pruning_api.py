"""prune / PruningCallback / strip / sparsity_report / load_model: bad input,
reports and summaries."""

import re

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import helpers
from tfopt import keras, models
from tfopt.keras2 import pruning


@pytest.fixture(scope="module")
def base():
    keras.utils.set_random_seed(0)
    return models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"target_sparsity": 1.0},
            ValueError,
            r"^`target_sparsity` must be in \(0, 1\). Received: target_sparsity=1.0$",
        ),
        ({"target_sparsity": 0}, ValueError, r"Received: target_sparsity=0$"),
        (
            {"target_sparsity": "0.5"},
            TypeError,
            r"^`target_sparsity` must be a float. Received: target_sparsity='0.5'$",
        ),
        (
            {"schedule": "cubic"},
            ValueError,
            r"^`schedule` must be one of \['polynomial', 'constant'\]. "
            r"Received: schedule='cubic'$",
        ),
        (
            {"begin": 0.5, "end": 0.5},
            ValueError,
            r"^`begin` must be before `end`. Received: begin=0.5, end=0.5$",
        ),
        (
            {"begin": 0, "end": 0.75},
            ValueError,
            r"^`begin` and `end` must both be fractions \(floats\) or both steps "
            r"\(ints\); write 0.0, not 0, for a fraction. Received: begin=0, "
            r"end=0.75$",
        ),
        (
            {"begin": -5, "end": 10},
            ValueError,
            r"^`begin` must be >= 0 as a step. Received: begin=-5$",
        ),
        (
            {"end": 1.5},
            ValueError,
            r"^`end` must be in \[0, 1\] as a fraction of the run. Received: end=1.5$",
        ),
        (
            {"end": "100"},
            TypeError,
            r"^`end` must be a float \(fraction of the run\) or an int \(optimizer "
            r"step\). Received: end='100'$",
        ),
        (
            {"initial_sparsity": 0.6},
            ValueError,
            r"^`initial_sparsity` must be in \[0, target_sparsity\). "
            r"Received: initial_sparsity=0.6$",
        ),
        (
            {"schedule": "constant", "initial_sparsity": 0.1},
            ValueError,
            r"^`initial_sparsity` only applies to schedule='polynomial'",
        ),
        (
            {"frequency": 0},
            ValueError,
            r"^`frequency` must be an int >= 1 or None. Received: frequency=0$",
        ),
        ({"power": 0}, ValueError, r"^`power` must be > 0. Received: power=0$"),
        (
            {"layers": "dense"},
            TypeError,
            r"^`layers` must be a list of layer names, regular expressions or "
            r"tf_keras layer classes, or None. Received: layers='dense'$",
        ),
        (
            {"layers": ["dense2"]},
            ValueError,
            r"^`layers` names 'dense2', which matches no layer of the model. Its "
            r"layers: \['reshape', 'conv2d', 'max_pooling2d', 'flatten', 'dense'\]. "
            r"Received: layers=\['dense2'\]$",
        ),
        (
            {"exclude": [keras.layers.LSTM]},
            ValueError,
            r"^`exclude` names 'LSTM', which matches no layer",
        ),
        (
            {"layers": ["flatten"]},
            ValueError,
            r"^`layers` names 'flatten' \(Flatten\), which has no weights TFMOT "
            r"can prune",
        ),
        (
            {"layers": ["(unclosed"]},
            ValueError,
            r"^`layers` holds '\(unclosed', which is neither a layer name nor a "
            r"valid regular expression",
        ),
        (
            {"exclude": ["conv2d", "dense"]},
            ValueError,
            r"^`layers`/`exclude` leave no layer to prune. Prunable layers: "
            r"\['conv2d', 'dense'\]",
        ),
        (
            {"m_by_n": (4, 2)},
            ValueError,
            r"^`m_by_n` must be two ints \(m, n\) with 0 < m < n, such as \(2, 4\) "
            r"or None. Received: m_by_n=\(4, 2\)$",
        ),
        (
            {"block_size": (0, 2)},
            ValueError,
            r"^`block_size` must be two ints >= 1, such as \(1, 4\), or None. "
            r"Received: block_size=\(0, 2\)$",
        ),
        (
            {"m_by_n": (2, 4), "block_size": (1, 2)},
            ValueError,
            r"^`m_by_n` and `block_size` are exclusive",
        ),
    ],
)
def test_bad_arguments_name_the_value(base, kwargs, error, message):
    args = {"target_sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        tfopt.prune(base, args.pop("target_sparsity"), **args)


def test_ceiling_is_one_weight_per_tensor(base):
    # conv2d's kernel has 3*3*1*12 = 108 weights: at most 107/108 = 0.9907.
    tfopt.prune(base, 0.99)
    with pytest.raises(
        ValueError,
        match=(
            r"^`target_sparsity` must leave at least one weight in every pruned "
            r"tensor: conv2d/kernel:0 has 108 weights, so it can be at most 0.9907 "
            r"sparse. Exclude that layer or lower the target. "
            r"Received: target_sparsity=0.995$"
        ),
    ):
        tfopt.prune(base, 0.995)
    assert pruning.wrappers(tfopt.prune(base, 0.995, exclude=["conv2d"]))


def test_non_models_are_rejected():
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.prune("model.keras", 0.5)


def test_subclassed_model_gets_the_options():
    model = _Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(
        TypeError,
        match=(
            r"^`model` must be a Sequential or functional tf_keras model: a "
            r"subclassed model \(_Subclassed\) hides its layer graph. Either apply "
            r"pruning to its layers .* or build it with the functional API"
        ),
    ):
        tfopt.prune(model, 0.5)


def test_unbuilt_pruned_and_quantized_models_are_refused(base):
    with pytest.raises(ValueError, match=r"^`model` must be built"):
        tfopt.prune(keras.Sequential([keras.layers.Dense(2)]), 0.5)
    with pytest.raises(ValueError, match=r"^`model` is already pruned"):
        tfopt.prune(tfopt.prune(base, 0.5), 0.5)
    import tensorflow_model_optimization as tfmot

    with pytest.raises(ValueError, match=r"^`model` holds quantization wrappers"):
        tfopt.prune(tfmot.quantization.keras.quantize_model(base), 0.5)


def test_sequential_models_prune_to_a_functional_pruned_model():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(1)]
    )
    pruned = tfopt.prune(model, 0.5)
    assert isinstance(pruned, pruning.PrunedModel)
    assert len(pruning.wrappers(pruned)) == 2


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"update_freq": "step"},
            ValueError,
            r"^`update_freq` must be 'epoch', 'batch' or an int >= 1. "
            r"Received: update_freq='step'$",
        ),
        ({"update_freq": 0}, ValueError, r"Received: update_freq=0$"),
        (
            {"log_dir": 3},
            TypeError,
            r"^`log_dir` must be a path or None. "
            r"Received: log_dir=3$",
        ),
    ],
)
def test_callback_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.PruningCallback(**kwargs)


def _xy(n=32):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), np.float32), rng.integers(0, 10, n)


def _compiled(base, **kwargs):
    model = tfopt.prune(base, 0.5, **kwargs)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_callback_writes_tensorboard_summaries(base, tmp_path):
    x, y = _xy()
    model = _compiled(base, end=1.0)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[tfopt.PruningCallback(log_dir=tmp_path, update_freq=2)],
    )
    tags, steps = helpers.summaries(tmp_path)
    assert {"pruning/sparsity", "pruning/target_sparsity"} <= tags
    assert {"pruning/conv2d/kernel", "pruning/dense/kernel"} <= tags
    assert steps == {2, 4, 6, 8}


def test_fractions_need_a_known_run_length(base):
    model = _compiled(base)
    x, y = _xy()
    endless = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .repeat()
        .batch(8)
        .filter(lambda a, b: True)
    )
    with pytest.raises(
        ValueError,
        match=(
            r"^Pruning `begin`/`end` are fractions of the run, but this fit does not "
            r"know its length"
        ),
    ):
        model.fit(
            endless,
            epochs=1,
            steps_per_epoch=None,
            verbose=0,
            callbacks=[tfopt.PruningCallback()],
        )


def test_callback_without_wrappers_warns(base):
    model = keras.models.clone_model(base)
    model.compile("sgd", "mse")
    x, _ = _xy(8)
    with pytest.warns(
        UserWarning,
        match=re.escape(
            "PruningCallback found no pruned model to drive (no pruning "
            "wrappers, no channel-pruned model); it does nothing."
        ),
    ):
        model.fit(x, np.zeros((8, 10)), verbose=0, callbacks=[tfopt.PruningCallback()])


def test_sparsity_report_table_and_dict(base):
    model = keras.models.clone_model(base)
    kernel = np.ones((108, 10), np.float32)
    kernel[:, ::2] = 0  # not 2:4 along the input channels
    model.get_layer("dense").kernel.assign(kernel)
    report = tfopt.sparsity_report(model)
    as_dict = report.to_dict()
    assert as_dict["overall"] == {
        "params": 1188,
        "zeros": 540,
        "sparsity": pytest.approx(540 / 1188),
    }
    dense = next(w for w in as_dict["weights"] if w["layer"] == "dense")
    assert dense == {
        "layer": "dense",
        "weight": "kernel",
        "shape": [108, 10],
        "params": 1080,
        "zeros": 540,
        "sparsity": 0.5,
        "pruned": False,
        "m_by_n": False,
    }
    lines = str(report).splitlines()
    assert lines[0].split() == [
        "layer",
        "weight",
        "shape",
        "params",
        "zeros",
        "sparsity",
        "2:4",
    ]
    assert lines[3].split() == [
        "dense",
        "kernel",
        "108x10",
        "1,080",
        "540",
        "50.00%",
        "no",
    ]
    assert lines[-1].split() == ["overall", "1,188", "540", "45.45%"]
    assert len({len(line) for line in lines[:2]}) == 1  # aligned under the rule
    kernel = np.zeros((108, 10), np.float32)
    kernel[::4], kernel[1::4] = 1, 1
    model.get_layer("dense").kernel.assign(kernel)
    assert tfopt.sparsity_report(model).layer("dense")[0].m_by_n is True


def test_sparsity_report_bad_input(base):
    with pytest.raises(TypeError, match=r"^`model` must be a tf_keras Model"):
        tfopt.sparsity_report([1, 2])
    with pytest.raises(ValueError, match=r"Received: m_by_n=\(2, 2\)$"):
        tfopt.sparsity_report(base, m_by_n=(2, 2))


def test_strip_bad_input():
    with pytest.raises(TypeError, match=r"Received: model=None"):
        tfopt.strip(None)


def test_load_model_bad_input(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=(
            r"^`path` must name a .keras/.h5 file or a SavedModel directory; "
            r"nothing exists there. Received: path='.*missing.keras'$"
        ),
    ):
        tfopt.load_model(tmp_path / "missing.keras")
    with pytest.raises(TypeError, match=r"^`path` must be a path. Received: path=3$"):
        tfopt.load_model(3)
    with pytest.raises(TypeError, match=r"Received: compile='yes'$"):
        tfopt.load_model(tmp_path, compile="yes")


def test_pruned_model_and_wrapper_round_trip_their_config(base):
    pruned = tfopt.prune(base, 0.5, m_by_n=(2, 4), layers=["dense"])
    again = pruning.PrunedModel.from_config(pruned.get_config())
    assert isinstance(again, pruning.PrunedModel)
    assert [type(layer).__name__ for layer in again.layers] == [
        type(layer).__name__ for layer in pruned.layers
    ]
    [wrapper] = pruning.wrappers(pruned)
    copy = pruning.PruneLowMagnitude.from_config(wrapper.get_config())
    assert copy.sparsity_m_by_n == (2, 4)
    assert (
        copy.get_config()["pruning_schedule"]
        == wrapper.get_config()["pruning_schedule"]
    )
