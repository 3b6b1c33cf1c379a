"""`get_strategy`: one call for every `tf.distribute` strategy tfopt supports.

Arguments and the cluster description (TF_CONFIG, SLURM, the TPU address) are
checked in Python before TensorFlow's runtime is touched, so a typo fails in
milliseconds with the bad value quoted rather than as a gRPC hang.

Strategies are cached: one per configuration per process. A second
`MirroredStrategy` in a process breaks TFMOT pruning ("Collective ops is
aborted by: Shape mismatch in the collective instance"), and TensorFlow
allows one MultiWorkerMirroredStrategy and one TPU initialization per process
anyway, so `get_strategy` hands back the same object for the same arguments.
"""

import os

import tensorflow as tf
from absl import logging

from tfopt.core import checks, vocab
from tfopt.core import cluster as _cluster
from tfopt.core.cluster import run_server, tf_config
from tfopt.replicas import (
    WorkerInfo,
    global_batch_size,
    keras3_multi_worker,
    scale_learning_rate,
    worker_info,
)

__all__ = [
    "ALL_REDUCE",
    "COMMUNICATION",
    "NAMES",
    "WorkerInfo",
    "get_strategy",
    "keras3_multi_worker",
    "global_batch_size",
    "resolve_name",
    "run_server",
    "scale_learning_rate",
    "tf_config",
    "worker_info",
]

ALL_REDUCE = {
    "nccl": tf.distribute.NcclAllReduce,
    "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce,
    "reduction_to_one": tf.distribute.ReductionToOneDevice,
}
COMMUNICATION = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}
_STRATEGIES = {}


def _num_gpus():
    return len(tf.config.list_physical_devices("GPU"))


def resolve_name(name="auto", *, tpu=None):
    """Returns the strategy name `name="auto"` stands for here, and why.

    Order: `tpu` given → `tpu`; TF_CONFIG with a `ps` job →
    `parameter_server`; TF_CONFIG or a SLURM step with more than one worker →
    `multi_worker`; more than one GPU → `mirrored`; one GPU → `one_device`;
    else `default`. Any other name is returned as is.

    Args:
        name: A strategy name, see `get_strategy`. Defaults to `auto`.
        tpu: The TPU address, if any. Defaults to `None`.

    Returns:
        A `(name, reason)` tuple of strings.

    Raises:
        TypeError, ValueError: As `get_strategy` does for `name` and TF_CONFIG.
    """
    _check_name(name)
    if name != "auto":
        return name, "requested"
    if tpu is not None:
        return "tpu", f"tpu={tpu!r} was given"
    config = tf_config()
    if config is not None and "ps" in config["cluster"]:
        return "parameter_server", "TF_CONFIG has a 'ps' job"
    workers = _cluster.cluster_workers()
    if workers > 1:
        return "multi_worker", (
            f"TF_CONFIG has {workers} workers"
            if config
            else f"SLURM step has {workers} tasks"
        )
    gpus = _num_gpus()
    if gpus > 1:
        return "mirrored", f"{gpus} GPUs are visible"
    if gpus == 1:
        return "one_device", "one GPU is visible"
    return "default", "no TPU, cluster or GPU found"


NAMES = vocab.STRATEGIES


def _check_name(name):
    hint = (
        " A YAML value of off/no/false reads as False: quote it."
        if isinstance(name, bool)
        else ""
    )
    checks.check_name(name, "name", NAMES, hint=hint)


def _default(**_):
    return tf.distribute.get_strategy()


def _canonical(names):
    # "/cpu:0", "CPU:0" and "/device:CPU:0" name one device: one cache key.
    return tuple(tf.DeviceSpec.from_string(n).to_string() for n in names)


def _devices(resolved, num_gpus, devices):
    """The device names a one_device or mirrored strategy will use."""
    if devices:
        return _canonical(devices)
    if resolved == "one_device":
        return _canonical(["/gpu:0" if _num_gpus() else "/cpu:0"])
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and num_gpus != 0:
        return _canonical(d.name for d in gpus[:num_gpus])
    # No GPU: use the logical CPUs (configure_devices(logical_cpus=N)) so
    # that a CPU machine still gets real replicas.
    return _canonical(d.name for d in tf.config.list_logical_devices("CPU"))


def _one_device(*, devices, **_):
    return tf.distribute.OneDeviceStrategy(devices[0])


def _mirrored(*, devices, all_reduce, **_):
    if all_reduce == "nccl" and not any("GPU" in d.upper() for d in devices):
        raise ValueError(
            "`all_reduce` must not be 'nccl' without GPUs: NCCL only reduces "
            f"across GPUs. Received: all_reduce='nccl', devices={list(devices)!r}"
        )
    ops = ALL_REDUCE[all_reduce]() if all_reduce else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=ops)


def _multi_worker(*, communication, **_):
    return _cluster.multi_worker(COMMUNICATION[communication or "auto"])


def _parameter_server(**_):
    config = tf_config()
    if (
        config is None
        or "ps" not in config["cluster"]
        or ("worker" not in config["cluster"])
    ):
        raise ValueError(
            "`name`='parameter_server' needs TF_CONFIG with 'chief', 'worker' "
            "and 'ps' jobs. Received: TF_CONFIG="
            f"{os.environ.get('TF_CONFIG')!r}"
        )
    if config["task"]["type"] in ("worker", "ps"):
        raise ValueError(
            "`name`='parameter_server' builds the coordinator's strategy; a "
            f"{config['task']['type']!r} task serves instead: call "
            "tfopt.distribute.run_server(). Received: task="
            f"{config['task']!r}"
        )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.experimental.ParameterServerStrategy(resolver)


def _tpu(*, tpu, **_):
    return _cluster.connect_tpu("local" if tpu is None else tpu)


_BUILDERS = {
    "default": _default,
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
    "tpu": _tpu,
    "parameter_server": _parameter_server,
}
# Which names each optional argument applies to ("auto" accepts them all and
# passes on those that fit the strategy it picks).
_APPLIES = {
    "tpu": ("tpu",),
    "num_gpus": ("mirrored",),
    "devices": ("mirrored", "one_device"),
    "all_reduce": ("mirrored",),
    "communication": ("multi_worker",),
}


def _validate(name, tpu, num_gpus, devices, all_reduce, communication):
    _check_name(name)
    # Every strategy reads TF_CONFIG somewhere (MirroredStrategy too): check
    # it the same way for all of them.
    tf_config()
    if tpu is not None and (not isinstance(tpu, str) or not tpu):
        raise TypeError(
            "`tpu` must be a non-empty str ('local', a TPU name or "
            f"grpc://host:port) or None. Received: tpu={tpu!r}"
        )
    if num_gpus is not None:
        checks.check_int(num_gpus, "num_gpus", optional=True)
        present = _num_gpus()
        if not 0 <= num_gpus <= present:
            raise ValueError(
                f"`num_gpus` must be in [0, {present}], the GPUs present. "
                f"Received: num_gpus={num_gpus!r}"
            )
    if devices is not None:
        if (
            not isinstance(devices, (list, tuple))
            or not devices
            or not all(isinstance(d, str) for d in devices)
        ):
            raise TypeError(
                "`devices` must be a non-empty list of device names such as "
                f"['/gpu:0', '/gpu:1']. Received: devices={devices!r}"
            )
        if num_gpus is not None:
            raise ValueError(
                "`devices` and `num_gpus` are exclusive. Received: "
                f"devices={devices!r}, num_gpus={num_gpus!r}"
            )
        if name == "one_device" and len(devices) != 1:
            raise ValueError(
                "`devices` must name exactly one device for 'one_device'. "
                f"Received: devices={devices!r}"
            )
    checks.check_choice(all_reduce, "all_reduce", ALL_REDUCE, optional=True)
    checks.check_choice(communication, "communication", COMMUNICATION, optional=True)
    given = {
        "tpu": tpu,
        "num_gpus": num_gpus,
        "devices": devices,
        "all_reduce": all_reduce,
        "communication": communication,
    }
    for arg, value in given.items():
        if value is not None and name != "auto" and name not in _APPLIES[arg]:
            raise ValueError(
                f"`{arg}` only applies to {checks.describe(_APPLIES[arg])}, "
                f"not to name={name!r}. Received: {arg}={value!r}"
            )


def get_strategy(
    name="auto",
    *,
    tpu=None,
    num_gpus=None,
    devices=None,
    all_reduce=None,
    communication=None,
):
    """Builds (or returns the cached) `tf.distribute.Strategy` for `name`.

    One strategy is made per configuration per process and handed back on
    every later call with the same arguments: a second `MirroredStrategy` in
    one process breaks TFMOT pruning, and TensorFlow allows one multi-worker
    strategy and one TPU initialization per process.

    Args:
        name: One of `NAMES`. `auto` picks one from the machine and the
            environment (see `resolve_name`) and logs why. `default` is
            `tf.distribute.get_strategy()`; `one_device` uses GPU:0, else
            CPU:0; `mirrored` uses `devices`, or the first `num_gpus` GPUs,
            or with no GPU the logical CPUs (see `configure_devices`);
            `multi_worker` reads TF_CONFIG, or the SLURM step when TF_CONFIG
            is unset, and raises without either; `tpu` connects to `tpu`;
            `parameter_server` is the coordinator's strategy for a TF_CONFIG
            with chief, worker and ps jobs. Defaults to `auto`.
        tpu: `local` for the TPU of a TPU VM, a TPU name, or
            `grpc://host:port`. Defaults to `None` (`local` for `tpu`).
        num_gpus: How many GPUs `mirrored` uses. Defaults to `None` (all).
        devices: Explicit device names for `mirrored` or `one_device`.
            Defaults to `None`.
        all_reduce: `mirrored`'s cross-device reduction: `nccl`,
            `hierarchical_copy` or `reduction_to_one`. Defaults to `None`
            (TensorFlow's choice).
        communication: `multi_worker`'s collectives: `auto`, `ring` or
            `nccl`. Defaults to `None` (`auto`).

    Returns:
        A `tf.distribute.Strategy`, never None.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a name or value is unknown or out of range, an
            argument does not apply to `name`, TF_CONFIG is malformed or
            empty, or `multi_worker` finds no cluster.
        RuntimeError: If `multi_worker` comes after TensorFlow's runtime
            started (its collectives must be configured first).
        ConnectionError: If the TPU cannot be reached or initialized (within
            about a minute).

    Example:

    >>> import tfopt
    >>> strategy = tfopt.get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    _validate(name, tpu, num_gpus, devices, all_reduce, communication)
    resolved, reason = resolve_name(name, tpu=tpu)
    if name == "auto":
        logging.info("get_strategy('auto') chose %r: %s.", resolved, reason)
    if resolved == "default":
        return _default()
    if resolved in ("one_device", "mirrored"):
        # Key by the devices actually used, so that "mirrored" and "mirrored"
        # over the same explicit devices are one strategy, not two.
        devices, num_gpus = _devices(resolved, num_gpus, devices), None
    key = (resolved, tpu, num_gpus, tuple(devices or ()), all_reduce, communication)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _BUILDERS[resolved](
            tpu=tpu,
            devices=devices,
            all_reduce=all_reduce,
            communication=communication,
        )
    return _STRATEGIES[key]
