"""Keras 3 models and training runs for the Keras 3 tests: the same runs on
one replica, two mirrored replicas and two worker processes (importable by
`tests.support.cluster`). Nothing here touches tf_keras."""

import keras
import numpy as np

import tfopt
from tests.support.helpers import _dataset, tiny_regression
from tfopt.core.tflite import from_output, open_interpreter, to_input
from tfopt.keras3 import fit, pruning

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run_tflite(path, x):
    """The outputs of the .tflite file at `path` on the batch `x` (any batch
    size; int8 inputs and outputs (de)quantized)."""
    interpreter = open_interpreter(str(path))
    (source,), (target, *_) = (
        interpreter.get_input_details(),
        interpreter.get_output_details(),
    )
    interpreter.resize_tensor_input(source["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], to_input(x, source))
    interpreter.invoke()
    return from_output(interpreter.get_tensor(target["index"]), target)


def cnn(input_shape, width=8, name="k3cnn", l2=None):
    """A small Keras 3 CNN without BatchNorm (its statistics are per replica),
    with an L2 penalty on the logits' kernel if `l2` is given."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    logits = keras.layers.Dense(
        10, name="logits", kernel_regularizer=keras.regularizers.L2(l2) if l2 else None
    )(x)
    return keras.Model(inputs, logits, name=name)


def mlp(width=32):
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def train_pruned(strategy, *, global_batch=16, epochs=2, seed=0, m_by_n=None):
    """A Keras 3 MLP pruned to 50% (or m:n) with SGD; returns the stripped
    weights, the masks and the History."""
    x, y = tiny_regression()
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = tfopt.prune(mlp(), 0.5, end=1.0, m_by_n=m_by_n)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(
        _dataset(x, y, global_batch),
        epochs=epochs,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    masks = [c.mask.numpy() for _, _, c in pruning.masked(model)]
    return tfopt.strip(model).get_weights(), masks, history.history


def pruned_multi_worker_job():
    return train_pruned(tfopt.get_strategy("multi_worker"))


def train_distilled(strategy, *, global_batch=32, steps=4, seed=0, pruned=False):
    """Distills an untrained Keras 3 CNN into a smaller one (with an L2
    penalty, and pruned when asked); returns the student's weights and the
    History."""
    rng = np.random.default_rng(seed)
    x = rng.random((global_batch * steps, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, global_batch * steps).astype(np.int32)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        teacher = cnn((8, 8, 1), 16, "teacher")
        student = cnn((8, 8, 1), 4, "student", l2=1e-3)
        if pruned:
            student = tfopt.prune(student, 0.5, end=1.0)
        distiller = tfopt.Distiller(
            student=student, teacher=teacher, temperature=3.0, alpha=0.3
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    history = distiller.fit(
        _dataset(x, y, global_batch),
        epochs=2,
        verbose=0,
        callbacks=[tfopt.PruningCallback()] if pruned else [],
    )
    return student.get_weights(), history.history


def distilled_multi_worker_job():
    return train_distilled(tfopt.get_strategy("multi_worker"), pruned=True)


def train_qat(strategy, *, global_batch=16, seed=0):
    """Two epochs of a Keras 3 CNN's QAT copy with SGD; returns its weights
    (kernels, biases and the learned ranges)."""
    rng = np.random.default_rng(seed)
    x = rng.random((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        qat = tfopt.quantize(cnn((8, 8, 1)))
        qat.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    qat.fit(_dataset(x, y, global_batch), epochs=2, verbose=0)
    return [w.numpy() for w in qat.weights]


def qat_multi_worker_job():
    return train_qat(tfopt.get_strategy("multi_worker"))


def plain_fit(strategy, *, fixed):
    """One epoch of a plain Keras 3 MLP; `fixed` applies tfopt's multi-worker
    fix. Returns the weights and History."""
    x, y = tiny_regression()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = mlp()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    if fixed:
        fit.enable_multi_worker(model)
    history = model.fit(_dataset(x, y, 16), epochs=2, verbose=0)
    return model.get_weights(), history.history


def plain_multi_worker_job(fixed):
    try:
        return plain_fit(tfopt.get_strategy("multi_worker"), fixed=fixed)
    except Exception as err:  # the upstream failure, reported as text
        return f"{type(err).__name__}: {err}"


def channel_cnn(input_shape=(8, 8, 1)):
    """A small Keras 3 CNN with a residual Add, a depthwise convolution and a
    hard-swish written as functional-API ops, no BatchNorm (its statistics
    are per replica)."""
    inputs = keras.Input(input_shape)
    stem = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(stem)
    wide = keras.layers.Conv2D(24, 1, name="expand")(x)
    wide = wide * keras.layers.ReLU(6.0)(wide + 3.0) * (1.0 / 6.0)  # hard-swish
    wide = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(wide)
    x = keras.layers.Add(name="residual")(
        [x, keras.layers.Conv2D(16, 1, name="project")(wide)]
    )
    x = keras.layers.Conv2D(12, 3, activation="relu", name="head")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def train_channel_pruned(strategy, *, global_batch=16, seed=0, importance="l2"):
    """Two epochs of channel pruning of `channel_cnn` to half its MACs with
    SGD, channels ranked by `importance` (Taylor on the first batches);
    returns the masks, the weights and the shrunk model's weights."""
    rng = np.random.default_rng(seed)
    x = rng.random((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = tfopt.prune(
            channel_cnn(),
            0.5,
            structure="channels",
            measure="macs",
            round_to=2,
            end=1.0,
            importance=importance,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    data = _dataset(x, y, global_batch)
    taylor = data if importance == "taylor" else None
    model.fit(data, epochs=2, verbose=0, callbacks=[tfopt.PruningCallback(data=taylor)])
    masks = [c.mask.numpy() for _, _, c in pruning.masked(model)]
    return masks, model.get_weights(), tfopt.shrink(model).get_weights()


def channel_pruned_multi_worker_job():
    return train_channel_pruned(tfopt.get_strategy("multi_worker"), importance="taylor")
