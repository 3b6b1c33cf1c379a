"""Training under a strategy once `get_strategy` made it: where this process
stands in the cluster (`worker_info`), the global batch, the learning rate
scaled to the replicas, and a Keras 3 model's multi-worker `fit`. The names
are public in `tfopt.distribute`.
"""

from typing import NamedTuple

import tensorflow as tf

from tfopt.core import checks
from tfopt.core import cluster as _cluster


class WorkerInfo(NamedTuple):
    """Where this process stands in its strategy's cluster."""

    task_type: str | None
    task_id: int
    is_chief: bool
    num_workers: int
    cluster: dict  # job name -> "host:port" list; empty for one process


def worker_info(strategy):
    """Returns this process's task, whether it is the chief, the worker count
    and the cluster of `strategy`.

    The chief is the `chief` task, or worker 0 when the cluster has no
    `chief` job (tf.distribute's convention): it alone writes checkpoints,
    logs and exports where the user asked; the other workers write theirs to
    temporary directories. A single-process strategy is its own chief.

    Args:
        strategy: A `tf.distribute.Strategy`.

    Returns:
        A `WorkerInfo`.

    Raises:
        TypeError: If `strategy` is not a strategy.

    Example:

    >>> import tfopt
    >>> tfopt.distribute.worker_info(tfopt.get_strategy("default"))
    WorkerInfo(task_type=None, task_id=0, is_chief=True, num_workers=1, cluster={})
    """
    _check_strategy(strategy)
    # Only these two span processes; the resolver of any other strategy
    # (MirroredStrategy keeps one) would read a TF_CONFIG it does not use.
    if not isinstance(
        strategy,
        (
            tf.distribute.MultiWorkerMirroredStrategy,
            tf.distribute.experimental.ParameterServerStrategy,
        ),
    ):
        return WorkerInfo(None, 0, True, 1, {})
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    chief = task_type in (None, "chief") or (
        task_type == "worker" and task_id == 0 and "chief" not in spec
    )
    return WorkerInfo(
        task_type, int(task_id), chief, max(_cluster.count_workers(spec), 1), spec
    )


def _check_strategy(strategy):
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            "`strategy` must be a tf.distribute.Strategy. "
            f"Received: strategy={strategy!r}"
        )


def global_batch_size(per_replica, strategy):
    """Returns the global batch for `per_replica` examples on each replica.

    Args:
        per_replica: Examples each replica processes per step, an int >= 1.
        strategy: The `tf.distribute.Strategy` that will train.

    Returns:
        `per_replica * strategy.num_replicas_in_sync`.

    Raises:
        TypeError: If `per_replica` is not an int or `strategy` not a
            strategy.
        ValueError: If `per_replica` is below 1.
    """
    checks.check_int(per_replica, "per_replica", minimum=1)
    _check_strategy(strategy)
    return int(per_replica) * strategy.num_replicas_in_sync


def scale_learning_rate(learning_rate, strategy):
    """Scales a single-replica learning rate linearly with the replica count.

    The linear scaling rule (Goyal et al., 2017): with the per-replica batch
    fixed, the global batch grows with the replicas, and so should the rate.

    Args:
        learning_rate: The rate tuned for one replica, a float > 0.
        strategy: The `tf.distribute.Strategy` that will train.

    Returns:
        `learning_rate * strategy.num_replicas_in_sync`.

    Raises:
        TypeError: If `learning_rate` is not a number or `strategy` not a
            strategy.
        ValueError: If `learning_rate` is not positive.
    """
    checks.check_real(learning_rate, "learning_rate")
    if not learning_rate > 0:
        raise ValueError(
            f"`learning_rate` must be > 0. Received: learning_rate={learning_rate!r}"
        )
    _check_strategy(strategy)
    return float(learning_rate) * strategy.num_replicas_in_sync


def keras3_multi_worker(model):
    """Lets a Keras 3 model `fit` and `evaluate` under the multi-worker
    strategy it was built in; does nothing elsewhere. Returns `model`.

    Keras 3.15's TensorFlow trainer fails there before the first step (it
    reduces the first batch across workers to read its shapes, and reduces
    scalar logs along an axis they lack). tfopt's pruned Keras 3 models and
    Distillers carry this fix already; call it for a plain Keras 3 model
    built in `strategy.scope()`. It changes only `model` (see
    `tfopt/keras3/fit.py`), and stops being needed when Keras fixes its trainer.

    Args:
        model: A Keras 3 model.

    Returns:
        `model`.

    Raises:
        TypeError: If `model` is not a Keras 3 model.
    """
    from tfopt.core.kerases import Keras

    if Keras.of(model) is not Keras.KERAS3 or not hasattr(model, "fit"):
        raise TypeError(f"`model` must be a Keras 3 model. Received: model={model!r}")
    from tfopt.keras3 import fit

    return fit.enable_multi_worker(model)
