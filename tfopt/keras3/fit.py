"""Keras 3 `fit` under `MultiWorkerMirroredStrategy`: tfopt's fix for the two
failures of Keras 3.15's TensorFlow trainer, applied per model.

Both are in `keras/src/backend/tensorflow/trainer.py` (an upstream
reproduction is in BUILD_NOTES.md, "Keras 3 and MultiWorkerMirroredStrategy"):

1. `_maybe_symbolic_build` calls `strategy.reduce("MEAN", batch, axis=None)`
   on the first distributed batch, only to read its shapes; in multi-worker
   mode that is a collective over the integer labels too, and `fit` dies
   before the first step.
2. `reduce_per_replica(logs, strategy, "auto")` means `reduce("MEAN", v,
   axis=0)` in multi-worker mode, which fails on scalar logs ("Invalid
   reduction dimension 0").

The fix, on one model and nothing process-wide: a symbolic build from the
first replica's batch (the one private name tfopt overrides, on the instance),
and `train_step`/`test_step` (Keras's documented override points) wrapped to
return their scalar logs as shape [1], which `reduce("MEAN", v, axis=0)`
averages to the same scalar. The logs are Keras metric results, already the
same global value on every replica and worker, so their mean is that value.
(`distribute_reduction_method` would be the public switch, but Keras 3.15's
trainer passes `reduction="auto"` regardless.) Remove this module when Keras
fixes the trainer: `tests/test_k3_distribute.py` reproduces both failures
without it and will start failing then.
"""

import tensorflow as tf

from tfopt.core import cluster


def _multi_worker(strategy):
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return cluster.count_workers(spec) > 1


def _first_replica(strategy, batch):
    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)


def _rank1_logs(step):
    def wrapped(data):
        return tf.nest.map_structure(
            lambda v: (
                tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v
            ),
            step(data),
        )

    return wrapped


def enable_multi_worker(model):
    """Makes Keras 3 `model` train and evaluate under the multi-worker
    strategy it was built in; does nothing under any other strategy, or if
    already done. Returns `model`."""
    strategy = model.distribute_strategy
    if not _multi_worker(strategy) or getattr(model, "_tfopt_multi_worker", False):
        return model
    build = type(model)._maybe_symbolic_build

    def symbolic_build(iterator=None, data_batch=None):
        # Keras 3.15 reduces the batch across workers only to read its shapes.
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = _first_replica(strategy, next(batches))
                break
        return build(model, data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
    model.train_step = _rank1_logs(model.train_step)
    model.test_step = _rank1_logs(model.test_step)
    model._tfopt_multi_worker = True
    return model
