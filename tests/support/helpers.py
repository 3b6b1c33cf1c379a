"""Small training jobs shared by tests and by the processes they spawn."""

import numpy as np
import tensorflow as tf

import tfopt
from tfopt import keras

# What every classifier of the tests is trained with: integer labels, logits.
LOSS = tfopt.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled(model, learning_rate=1e-3):
    """`model` compiled with Adam(`learning_rate`), `LOSS` and accuracy."""
    model.compile(
        optimizer=tfopt.keras.optimizers.Adam(learning_rate),
        loss=LOSS,
        metrics=["accuracy"],
    )
    return model


def tiny_regression(seed=0, n=64):
    """Fixed inputs and targets for replica-parity checks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 1))).astype(np.float32)
    return x, y


def _dataset(x, y, global_batch):
    # Shard by element, as the in-memory data sets of tfopt.data do.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(global_batch)
        .with_options(options)
    )


def mlp(width, activation):
    """A one-hidden-layer regression MLP on `tiny_regression`'s 6 features."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(width, activation=activation),
            keras.layers.Dense(1),
        ]
    )


def train_tiny(strategy, *, global_batch=16, epochs=2, seed=0):
    """Trains a 2-layer MLP with SGD; returns its weights and final loss.

    Without BatchNorm or dropout, the result depends only on the global
    batch, not on how it is split across replicas.
    """
    x, y = tiny_regression()
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = mlp(4, "tanh")
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(_dataset(x, y, global_batch), epochs=epochs, verbose=0)
    return model.get_weights(), history.history["loss"][-1]


def multi_worker_job():
    """One worker's part of the 2-process test: auto must pick multi_worker."""
    strategy = tfopt.get_strategy("auto")
    weights, loss = train_tiny(strategy)
    return {
        "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
        "replicas": strategy.num_replicas_in_sync,
        "weights": weights,
        "loss": loss,
    }


def train_pruned(strategy, *, global_batch=16, epochs=2, seed=0):
    """Prunes and trains an MLP to 50% sparsity; returns weights and masks."""
    x, y = tiny_regression()
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        base = mlp(32, "tanh")
        model = tfopt.prune(base, 0.5, end=1.0)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(
        _dataset(x, y, global_batch),
        epochs=epochs,
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    masks = [
        m.numpy() for w in tfopt.pruning.wrappers(model) for _, m, _ in w.pruning_vars
    ]
    return tfopt.strip(model).get_weights(), masks


def pruned_multi_worker_job():
    return train_pruned(tfopt.get_strategy("multi_worker"))


def train_qat(strategy, *, global_batch=32, steps=8, seed=0):
    """QAT-trains an MLP with SGD; returns every weight (kernels, biases and
    quantizer ranges) as (name, value) pairs in model order."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(global_batch * steps, 6)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(6, 1))).astype(np.float32)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        base = mlp(16, "relu")
        model = tfopt.quantize(base)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(_dataset(x, y, global_batch), epochs=1, verbose=0)
    return [(w.name.split("/")[-1], w.numpy()) for w in model.weights]


def qat_multi_worker_job():
    return train_qat(tfopt.get_strategy("multi_worker"))


def train_distilled(strategy, *, global_batch=32, steps=4, seed=0):
    """Distills an untrained tfmot_mnist teacher into student_cnn on random
    8x8 images with SGD; returns the student's weights."""
    rng = np.random.default_rng(seed)
    x = rng.random((global_batch * steps, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, global_batch * steps).astype(np.int32)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        teacher = tfopt.models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2)
        student = tfopt.models.build("student_cnn", (8, 8, 1), 10, keras_version=2)
        student.add_loss(
            lambda: 1e-3 * tf.reduce_sum(tf.square(student.get_layer("logits").kernel))
        )
        distiller = tfopt.Distiller(
            student=student, teacher=teacher, temperature=3.0, alpha=0.3
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    distiller.fit(_dataset(x, y, global_batch), epochs=1, verbose=0)
    return student.get_weights()


def distilled_multi_worker_job():
    return train_distilled(tfopt.get_strategy("multi_worker"))


def summaries(directory):
    """(tags, steps) of the one TensorBoard event file in `directory`."""
    import glob

    [events] = glob.glob(str(directory / "events.out.tfevents.*"))
    tags, steps = set(), set()
    for record in tf.compat.v1.train.summary_iterator(events):
        for value in record.summary.value:
            tags.add(value.tag)
            steps.add(record.step)
    return tags, steps
