"""Logged-metric parity jobs: the same global batch and seed on one process,
on 2 mirrored replicas and on 2 workers must log the same History."""

import numpy as np
import tensorflow as tf

import tfopt
from tfopt import keras

GLOBAL_BATCH = 32
EPOCHS = 2


def _data(seed=0, n=128):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    return ds.with_options(options)


def _mlp():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(10),
        ]
    )


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def histories(strategy):
    """Trains and evaluates a plain model, a pruned model, a channel-pruned
    one (Taylor scores: gradients reduced over replicas and workers) and a
    Distiller under `strategy`; returns {name: History.history + evaluate's
    dict}."""
    out = {}
    ds = _data()
    for name in ("plain", "pruned", "channels", "distiller"):
        keras.utils.set_random_seed(0)
        callbacks = []
        with strategy.scope():
            base = _mlp()
            if name == "pruned":
                model = tfopt.prune(base, 0.5, end=1.0)
                callbacks = [tfopt.PruningCallback()]
            elif name == "channels":
                model = tfopt.prune(
                    base,
                    0.5,
                    end=1.0,
                    structure="channels",
                    importance="taylor",
                    round_to=4,
                )
                callbacks = [tfopt.PruningCallback(data=ds)]
            elif name == "distiller":
                teacher = _mlp()
                model = tfopt.Distiller(
                    student=base, teacher=teacher, temperature=3.0, alpha=0.3
                )
            else:
                model = base
            _compile(model)
        history = model.fit(
            ds, epochs=EPOCHS, verbose=0, validation_data=ds, callbacks=callbacks
        )
        result = dict(history.history)
        result["evaluate"] = model.evaluate(ds, verbose=0, return_dict=True)
        out[name] = result
    return out


def multi_worker_job():
    return histories(tfopt.get_strategy("multi_worker"))
