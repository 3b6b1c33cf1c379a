"""Device set-up that must happen before TensorFlow's first op.

TensorFlow fixes its devices (visible GPUs, memory growth or limits, logical
CPUs) the first time it runs an op; later changes raise deep inside
`tf.config`. `configure_devices` applies everything in one call, checks each
setting against the state already in effect (so a repeated call is a no-op),
and turns a too-late call into an error that says what to move.

It never starts TensorFlow's runtime itself: a `MultiWorkerMirroredStrategy`
must configure its collectives before the runtime starts, so
`configure_devices` followed by `get_strategy("multi_worker")` has to leave
that to the strategy.
"""

import os
import sys
from typing import NamedTuple

import tensorflow as tf
from absl import logging

from tfopt.core import checks, vocab

# Keras policy names accepted for `mixed_precision`.
PRECISIONS = vocab.PRECISIONS
_GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"


class DeviceConfig(NamedTuple):
    """What `configure_devices` found and set."""

    physical_devices: tuple
    logical_devices: tuple
    memory_growth: bool | None
    memory_limit_mb: int | None
    mixed_precision: str


def _env_growth():
    # TensorFlow's GPU allocator obeys this variable over any API setting,
    # but only for these two exact values.
    return {"true": True, "false": False}.get(os.environ.get(_GROWTH_ENV))


def _validate(
    memory_growth, memory_limit_mb, visible_gpus, logical_cpus, mixed_precision
):
    checks.check_bool(memory_growth, "memory_growth", optional=True)
    checks.check_int(memory_limit_mb, "memory_limit_mb", minimum=1, optional=True)
    checks.check_int(logical_cpus, "logical_cpus", minimum=1, optional=True)
    if memory_growth and memory_limit_mb is not None:
        raise ValueError(
            "`memory_growth` and `memory_limit_mb` are exclusive: a hard "
            "per-GPU limit allocates that memory up front. Pass one of them. "
            f"Received: memory_growth=True, memory_limit_mb={memory_limit_mb!r}"
        )
    env = _env_growth()
    if env is not None and memory_growth is not None and memory_growth != env:
        raise ValueError(
            f"`memory_growth` must agree with {_GROWTH_ENV}={os.environ[_GROWTH_ENV]}"
            f" set in the environment, which TensorFlow obeys over the API. "
            f"Received: memory_growth={memory_growth!r}"
        )
    if visible_gpus is not None:
        if not isinstance(visible_gpus, (list, tuple)) or not all(
            checks.is_int(i) for i in visible_gpus
        ):
            raise TypeError(
                "`visible_gpus` must be a list of GPU indices or None. "
                f"Received: visible_gpus={visible_gpus!r}"
            )
        if len(set(visible_gpus)) != len(visible_gpus) or any(
            i < 0 for i in visible_gpus
        ):
            raise ValueError(
                "`visible_gpus` must hold distinct indices >= 0. "
                f"Received: visible_gpus={visible_gpus!r}"
            )
    checks.check_choice(mixed_precision, "mixed_precision", PRECISIONS, optional=True)


def _configure_gpus(gpus, growth, memory_limit_mb, visible_gpus):
    if visible_gpus is not None:
        if max(visible_gpus, default=-1) >= len(gpus):
            raise ValueError(
                f"`visible_gpus` must index the {len(gpus)} GPUs present "
                f"({[gpu.name for gpu in gpus]}). "
                f"Received: visible_gpus={visible_gpus!r}"
            )
        wanted = [gpus[i] for i in visible_gpus]
        if tf.config.get_visible_devices("GPU") != wanted:
            tf.config.set_visible_devices(wanted, "GPU")
        gpus = wanted
    for gpu in gpus:
        if memory_limit_mb is not None:
            wanted = [
                tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)
            ]
            if tf.config.get_logical_device_configuration(gpu) != wanted:
                tf.config.set_logical_device_configuration(gpu, wanted)
        elif tf.config.experimental.get_memory_growth(gpu) != growth:
            tf.config.experimental.set_memory_growth(gpu, growth)


def _configure_cpus(logical_cpus):
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if len(current or [None]) != logical_cpus:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )


def _logical_names(gpus):
    """The logical devices the configuration in effect gives, named as
    TensorFlow numbers them, read without starting the runtime
    (`tf.config.list_logical_devices` would start it)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    cpus = len(tf.config.get_logical_device_configuration(cpu) or [None])
    names = [f"/device:CPU:{i}" for i in range(cpus)]
    if gpus:
        count = sum(
            len(tf.config.get_logical_device_configuration(gpu) or [None])
            for gpu in tf.config.get_visible_devices("GPU")
        )
        names += [f"/device:GPU:{i}" for i in range(count)]
    return tuple(names)


# The policy configure_devices set, for a Keras that loads later
# (`tfopt.keras2.binding`).
requested_policy = None


def _set_policy(name):
    # The policy is global per Keras, and a program may use either (or both):
    # set it on Keras 3 (TensorFlow ships it), and on tf_keras where this
    # program has loaded it (else `tfopt.keras2.binding` sets it when it loads).
    global requested_policy
    requested_policy = name
    import keras

    keras.mixed_precision.set_global_policy(name)
    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].mixed_precision.set_global_policy(name)


def _policy():
    for name in ("tf_keras", "keras"):
        if name in sys.modules and hasattr(sys.modules[name], "mixed_precision"):
            return sys.modules[name].mixed_precision.global_policy().name
    return requested_policy or "float32"


def configure_devices(
    *,
    memory_growth=None,
    memory_limit_mb=None,
    visible_gpus=None,
    logical_cpus=None,
    mixed_precision=None,
):
    """Configures GPUs, logical CPUs and the Keras precision policy.

    Call it first: before any TensorFlow op, model or data set. It does not
    start TensorFlow's runtime, so `get_strategy` may come before or after
    it (a `multi_worker` strategy needs the runtime unstarted). A later call
    whose settings are already in effect is a no-op; one that would change
    them after the runtime started raises. On a machine without GPUs the
    GPU settings are logged and skipped.

    Args:
        memory_growth: Let each visible GPU allocate memory on demand instead
            of all of it at start. Defaults to `None`: growth on, unless
            `memory_limit_mb` is given or `TF_FORCE_GPU_ALLOW_GROWTH` is set
            in the environment (which TensorFlow obeys, so it is respected).
        memory_limit_mb: A hard memory limit per visible GPU, in MiB;
            exclusive with `memory_growth=True`. Defaults to `None`.
        visible_gpus: Indices of the physical GPUs TensorFlow may use.
            Defaults to `None` (all).
        logical_cpus: Split the CPU into this many logical devices, which a
            `MirroredStrategy` then uses as replicas on a CPU-only machine.
            Defaults to `None` (leave as is).
        mixed_precision: One of `PRECISIONS`, set as the global Keras policy.
            Defaults to `None` (leave the policy as is).

    Returns:
        A `DeviceConfig` with the physical and logical device names, the
        memory settings applied to GPUs (`None` without GPUs) and the Keras
        policy in effect.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a value is out of range or settings conflict.
        RuntimeError: If TensorFlow already initialized its devices with a
            different configuration.

    Example:

    >>> import tfopt
    >>> config = tfopt.configure_devices(logical_cpus=2)
    >>> len([d for d in config.logical_devices if "CPU" in d])
    2
    """
    _validate(
        memory_growth, memory_limit_mb, visible_gpus, logical_cpus, mixed_precision
    )
    growth = memory_growth
    if growth is None:
        env = _env_growth()
        growth = env if env is not None else memory_limit_mb is None
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if gpus:
            _configure_gpus(gpus, growth, memory_limit_mb, visible_gpus)
        elif memory_limit_mb is not None or visible_gpus:
            logging.info(
                "configure_devices: no GPU present; GPU settings "
                "(memory_limit_mb, visible_gpus) skipped."
            )
        if logical_cpus is not None:
            _configure_cpus(logical_cpus)
    except RuntimeError as err:
        raise RuntimeError(
            "configure_devices must run before TensorFlow's first op (before "
            "building a model, a data set or a strategy): TensorFlow has "
            f"already initialized its devices with another configuration "
            f"({err}). Move the call to the top of your program."
        ) from err
    if mixed_precision is not None:
        _set_policy(mixed_precision)
    config = DeviceConfig(
        physical_devices=tuple(d.name for d in tf.config.list_physical_devices()),
        logical_devices=_logical_names(gpus),
        memory_growth=growth if gpus and memory_limit_mb is None else None,
        memory_limit_mb=memory_limit_mb if gpus else None,
        mixed_precision=_policy(),
    )
    logging.info("configure_devices: %s", config)
    return config
