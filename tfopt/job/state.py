"""One run of the main job (`tfopt.job.pipeline`): its checks, its directories,
its data, and the agreement of the workers of a cluster.

Every worker of a multi-worker run checks what it can see, loads the data
and then agrees with the others (`lockstep.agree`) before anything is
written, so that one refusing worker stops them all with the same error
instead of leaving them waiting in a collective. Only then does the chief
claim `--model_dir`; the others write beside it, in `workertemp_<task>`.
"""

import contextlib
import json
import os
import shutil
import time

import tensorflow as tf

from tfopt import data, distribute
from tfopt.core import cluster as _cluster
from tfopt.job import lockstep
from tfopt.job.config import ClusterError, ConfigError  # noqa: F401 (re-exported)


def check(config):
    """Raises `ConfigError` for settings that cannot work, before any work.

    Only the flags and the cluster description: what each worker finds on
    disk is checked once the cluster has formed, so that all workers can
    refuse together.
    """
    config.check()
    try:
        resolved, _ = distribute.resolve_name(config.strategy, tpu=config.tpu)
        cluster = distribute.tf_config()
    except ValueError as err:  # a malformed or empty TF_CONFIG
        raise ConfigError(str(err)) from err
    if resolved == "parameter_server" or (cluster and "ps" in cluster["cluster"]):
        raise ConfigError(
            "scripts/train.py does not run parameter-server training (its "
            "stages checkpoint and evaluate every epoch in lockstep, which a "
            "ClusterCoordinator does not do): run it with `strategy="
            "multi_worker` and a TF_CONFIG of 'worker' tasks only. The library "
            "supports parameter servers: tfopt.get_strategy('parameter_server') "
            "on the chief, tfopt.distribute.run_server() on the other tasks."
        )
    workers = _cluster.cluster_workers()
    if workers > 1 and resolved != "multi_worker":
        # Each process would train alone, and each would be a chief.
        raise ConfigError(
            f"`strategy={config.strategy}` trains in this process alone, but "
            f"{'TF_CONFIG' if cluster else 'the SLURM step'} names {workers} "
            "workers, which would all write `model_dir`: use `strategy="
            "multi_worker` (or auto), or run without the cluster."
        )


def _check_files(config, worker):
    """This worker's checks of the paths it was given; the chief's also of
    what `model_dir` holds. Changes nothing."""
    if os.path.isfile(config.model_dir):
        raise ConfigError(
            f"`model_dir={config.model_dir}` is a file; it must be a "
            "directory (new or from this same command)."
        )
    teacher = config.teacher
    if teacher not in (None, "", "train") and not os.path.exists(teacher):
        raise ConfigError(
            f"`teacher={teacher}` does not exist; give a saved model "
            "(.keras, .h5 or SavedModel) or 'train'."
        )
    if not worker.is_chief:
        return
    previous = os.path.join(config.model_dir, "config.json")
    if (
        os.path.isdir(config.model_dir)
        and os.listdir(config.model_dir)
        and (not os.path.exists(previous))
    ):
        # Not a tfopt run: never write into (or, with --overwrite, delete) it.
        raise ConfigError(
            f"`model_dir={config.model_dir}` holds files but no tfopt "
            "run (no config.json); give a new or empty directory."
        )
    if os.path.exists(previous) and not config.overwrite:
        with open(previous) as file:
            if json.load(file) != config.settings():
                raise ConfigError(
                    f"`model_dir={config.model_dir}` holds a run with other flags; "
                    "use a new directory, or `overwrite` to replace it."
                )


def _claim(config):
    """The chief makes `model_dir` this run's, once every worker agreed."""
    if config.overwrite and os.path.isdir(config.model_dir):
        shutil.rmtree(config.model_dir)
    for sub in ("checkpoints", "logs", "export"):
        os.makedirs(os.path.join(config.model_dir, sub), exist_ok=True)
    with open(os.path.join(config.model_dir, "config.json"), "w") as file:
        json.dump(config.settings(), file, indent=2)


class Run:
    """Paths, strategy, data and timings of one run."""

    def __init__(self, config, strategy, command):
        self.config, self.strategy, self.command = config, strategy, command
        self.worker = distribute.worker_info(strategy)
        self.strategy_name = distribute.resolve_name(config.strategy, tpu=config.tpu)[0]
        # Wall seconds per stage of this run, for the report.
        self.seconds = {}
        # tf.distribute's convention: the chief writes where the user asked,
        # every other worker to a directory of its own beside it, emptied
        # when it starts and deleted when it finishes.
        self.shared = config.model_dir
        self.dir = (
            self.shared
            if self.worker.is_chief
            else os.path.join(self.shared, f"workertemp_{self.worker.task_id}")
        )
        self.splits = self.info = self._x = self._y = self.steps = None
        self._own_dir = False  # this worker's directory exists because of us

    def start(self, check=None):
        """Checks, loads the data, runs `check()` (the recipe's own checks,
        which may read the data), agrees with every worker, then claims the
        directories. Nothing is written unless every worker can run."""
        config, refusal = self.config, None
        try:
            replicas = self.strategy.num_replicas_in_sync
            if config.batch_size % replicas:
                raise ConfigError(
                    f"`batch_size={config.batch_size}` must divide "
                    f"evenly over the {replicas} replicas of "
                    "`strategy`."
                )
            _check_files(config, self.worker)
            self._load()
            if check is not None:
                check()
        except ConfigError as err:
            refusal = err
        all_ok, same = lockstep.agree(
            self.strategy, self.worker, refusal is None, config.settings()
        )
        if refusal is not None:
            raise refusal
        if not all_ok:
            raise ConfigError(
                "a worker refused the run (its log says why, usually "
                "the chief's about `model_dir`); fix that and start "
                "every worker again."
            )
        if not same:
            raise ConfigError(
                "the workers were started with different flags; "
                "start every worker with the same command."
            )
        if self.worker.is_chief:
            _claim(config)
        # Nobody reads the chief's directory before it has claimed (or, with
        # --overwrite, emptied) it.
        lockstep.barrier(self.strategy, self.worker)
        if not self.worker.is_chief:
            # Inside a claimed run directory: what a killed run left.
            self._own_dir = True
            shutil.rmtree(self.dir, ignore_errors=True)
            for sub in ("checkpoints", "logs", "export"):
                os.makedirs(self.path(sub))

    def _load(self):
        config = self.config
        self.splits = data.load(
            config.dataset, batch_size=config.batch_size, seed=config.seed
        )
        self.info = self.splits.info
        self.steps = self.info.train_size // config.batch_size
        if not self.steps:
            raise ConfigError(
                f"`batch_size={config.batch_size}` must be at most the "
                f"{self.info.train_size} training examples of "
                f"`dataset={config.dataset}`."
            )
        # The training split in memory; epoch e is a stateless shuffle of it
        # seeded by (seed, e), so a restarted run replays the same batches.
        self._x, self._y = next(
            iter(self.splits.train.unbatch().batch(self.info.train_size))
        )

    @contextlib.contextmanager
    def timed(self, name):
        """Adds the wall time of the block to `seconds[name]`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (
                time.perf_counter() - start
            )

    def path(self, *parts):
        """Where this worker writes."""
        return os.path.join(self.dir, *parts)

    def chief_path(self, *parts):
        """Where every worker reads what earlier runs finished."""
        return os.path.join(self.shared, *parts)

    def close(self):
        # Never a directory of a refused run: it may be the user's.
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stream(self, first_epoch, epochs):
        seed, batch = self.config.seed, self.config.batch_size
        size, x, y = self.info.train_size, self._x, self._y

        def epoch(index):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), index])
            )
            # Full global batches only: a partial one would be split unevenly
            # over the replicas, whose mean-of-means loss then depends on
            # the replica count (and TPUs need static shapes). The shuffle
            # drops different examples each epoch.
            return (
                tf.data.Dataset.from_tensor_slices(order)
                .batch(batch, drop_remainder=True)
                .map(lambda rows: (tf.gather(x, rows), tf.gather(y, rows)))
            )

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        stream = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
        return stream.with_options(options).prefetch(2)
