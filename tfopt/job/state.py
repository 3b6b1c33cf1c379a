"""One run of the main job (`tfopt.job.pipeline`): its checks, its directories,
its data, and the agreement of the workers of a cluster.

Every worker of a multi-worker run checks what it can see, loads the data
and then agrees with the others (`lockstep.agree`) before anything is
written, so that one refusing worker stops them all with the same error
instead of leaving them waiting in a collective. Only then does the chief
claim `--model_dir`; the others write beside it, in `workertemp_<task>`.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfopt import data, distribute
from tfopt.core import cluster as _cluster
from tfopt.job import feed, files, inputs, lockstep, rundir, sources
from tfopt.job.config import ClusterError, ConfigError  # noqa: F401 (re-exported)

_log = logging.getLogger("tfopt.job.pipeline")


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
        self.source = self._conform = self._counts = None
        self._in_memory_conform = self.target = None
        self._own_dir = False  # this worker's directory exists because of us
        # Local copies of saved models read from other file systems.
        self.scratch = tempfile.mkdtemp(prefix="tfopt-run-")

    def start(self, check=None):
        """Checks, loads the data, runs `check()` (the recipe's own checks,
        which may read the data and shape it for the model: `shape_data`),
        agrees with every worker, then claims the directories. Nothing is
        written unless every worker can run."""
        refusal = None
        try:
            replicas = self.strategy.num_replicas_in_sync
            if self.config.batch_size % replicas:
                raise ConfigError(
                    f"`batch_size={self.config.batch_size}` must divide "
                    f"evenly over the {replicas} replicas of "
                    "`strategy`."
                )
            self.config = sources.resolve(self.config, self.scratch)
            rundir.check(self.config, self.worker)
            self._load()
        except Exception as err:  # noqa: BLE001 - every worker must agree
            refusal = _as_refusal(err)
        all_ok, same = lockstep.agree(
            self.strategy, self.worker, refusal is None, self.config.settings()
        )
        _refuse(refusal, all_ok, same)
        # Every worker is here: the counts of streamed data are summed over
        # them (a collective), then the model is checked against the data.
        try:
            if self.source is not None:
                self._count()
            if check is not None:
                check()
        except Exception as err:  # noqa: BLE001 - every worker must agree
            refusal = _as_refusal(err)
        all_ok, _ = lockstep.agree(self.strategy, self.worker, refusal is None)
        _refuse(refusal, all_ok, True)
        if self.worker.is_chief:
            rundir.claim(self.config)
        # Nobody reads the chief's directory before it has claimed (or, with
        # --overwrite, emptied) it.
        lockstep.barrier(self.strategy, self.worker)
        if not self.worker.is_chief:
            # Inside a claimed run directory: what a killed run left.
            self._own_dir = True
            if tf.io.gfile.exists(self.dir):
                tf.io.gfile.rmtree(self.dir)
            for sub in ("checkpoints", "logs", "export"):
                tf.io.gfile.makedirs(self.path(sub))

    def _load(self):
        config = self.config
        self.source = inputs.open_source(config)
        if self.source is not None:
            self.source.check_pipelines(self.worker.num_workers)
            return
        try:
            self.splits = data.load(
                config.dataset,
                batch_size=config.batch_size,
                seed=config.seed,
                validation_fraction=config.validation_split,
                test_fraction=config.test_split,
                train_split=config.train_split or "train",
            )
        except ValueError as err:
            raise ConfigError(f"`dataset={config.dataset}`: {err}") from err
        self.info = self.splits.info
        if not self.info.test_size:
            raise ConfigError(
                f"`test_split={config.test_split}` leaves "
                f"`dataset={config.dataset}` no test examples."
            )
        self._steps(self.info.train_size, 1)
        # The training split in memory; epoch e is a stateless shuffle of it
        # seeded by (seed, e), so a restarted run replays the same batches.
        self._x, self._y = next(
            iter(self.splits.train.unbatch().batch(self.info.train_size))
        )

    def _steps(self, smallest, pipelines):
        self.steps = smallest // (self.config.batch_size // pipelines)
        if not self.steps:
            raise ConfigError(
                f"`batch_size={self.config.batch_size}` must be at most the "
                + (
                    f"{smallest} training examples of "
                    if pipelines == 1
                    else f"{pipelines} x {smallest} training examples (the "
                    "fewest of a worker) of "
                )
                + f"`dataset={self.config.dataset}`."
            )

    def _count(self):
        """Sizes and classes of streamed data: each worker counts its own
        share of the training split; the sums and the fewest per worker
        (which sets the steps of every worker's epoch) are agreed."""
        source, workers = self.source, self.worker.num_workers
        index = lockstep.index(self.worker)
        mine = source.count(index, workers)
        if workers > 1:
            _log.info(
                "      worker %d of %d reads %s",
                index,
                workers,
                source.share(index, workers),
            )
        per_worker = lockstep.gather(self.strategy, self.worker, mine)
        self._counts = [round(count) for count, _ in per_worker]
        largest = max(round(label) for _, label in per_worker)
        sizes = [0, 0]
        for i, split in enumerate((source.validation, source.test)):
            if split is not None:
                sizes[i], top = inputs.count_examples(split)
                largest = max(largest, top)
        self.info = data.DatasetInfo(
            source.name, source.shape, largest + 1, sum(self._counts), *sizes
        )
        if self.info.num_classes < 2:
            raise ConfigError(
                f"`dataset={self.config.dataset}` has {self.info.num_classes} "
                "class; a classifier needs at least 2."
            )
        self._steps(min(self._counts), workers)

    def shape_data(self, target, scale, name):
        """Makes `splits` (and the training stream) give images of `target`
        shape, scaled by `scale`: resized and converted, batched, cached."""
        info, batch = self.info, self.config.batch_size
        conform = feed.conformer(info.input_shape, target, scale, name)
        example_bytes = 4 * int(np.prod(target))
        self._conform, self._example_bytes = conform, example_bytes
        self.target = tuple(target)
        if self.source is None:
            if tuple(info.input_shape) != tuple(target) or scale is not None:
                # Per batch (in `feed.in_memory` too): the whole split
                # resized at once can exceed memory (CIFAR-10 at 224x224).
                self._in_memory_conform = conform
                self.splits = self.splits._replace(
                    **{
                        split: getattr(self.splits, split).map(
                            lambda x, y: (conform(x), y), num_parallel_calls=-1
                        )
                        for split in ("train", "validation", "test")
                        if getattr(self.splits, split) is not None
                    }
                )
            return
        source = self.source

        def shaped(dataset, count):
            dataset = dataset.map(
                lambda x, y: (conform(x), y), num_parallel_calls=feed.AUTOTUNE
            )
            return feed.batched(dataset, batch, count, example_bytes)

        # A sample of the training split for calibration, Taylor scores and
        # timing: never cached (it is read in part).
        sample = source.train(0, 1).map(
            lambda x, y: (conform(x), y), num_parallel_calls=feed.AUTOTUNE
        )
        self.splits = data.Splits(
            feed.batched(sample, batch, None, example_bytes),
            shaped(source.validation, info.validation_size)
            if source.validation is not None
            else None,
            shaped(source.test, info.test_size),
            info,
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
        """Where this worker writes (through `tf.io.gfile`, or a library
        call that does: checkpoints, summaries, Keras's own saving)."""
        return os.path.join(self.dir, *parts)

    def work(self, *parts):
        """Where calls that write local files only (TFLite and HDF5 writers)
        write: `path` itself, or for a `model_dir` on another file system
        (`gs://`) a local mirror that `publish` copies there."""
        if "://" not in self.dir:
            return self.path(*parts)
        local = os.path.join(self.scratch, "out", *parts)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return local

    def publish(self):
        """Copies what `work` holds to `path` (nothing for a local run)."""
        mirror = os.path.join(self.scratch, "out")
        if "://" not in self.dir or not os.path.isdir(mirror):
            return
        files.copy_tree(mirror, self.path())

    def load(self, path):
        """A stage's saved model, read through `tf.io.gfile`."""
        from tfopt import export

        return export.load_model(sources.local_copy(path, self.scratch))

    def chief_path(self, *parts):
        """Where every worker reads what earlier runs finished."""
        return os.path.join(self.shared, *parts)

    def close(self):
        # Never a directory of a refused run: it may be the user's.
        if self._own_dir and tf.io.gfile.exists(self.dir):
            tf.io.gfile.rmtree(self.dir)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def stream(self, first_epoch, epochs, augment=False):
        """Epochs `first_epoch`..`epochs` of training batches, `steps` each:
        the same batches whenever the run is resumed."""
        if self.source is not None:
            # `Dataset.shuffle` pairs its seed with the global one: set here,
            # so a resumed stage shuffles as the uninterrupted one did.
            tf.random.set_seed(self.config.seed)
            return self.strategy.distribute_datasets_from_function(
                feed.streamed(
                    self.source,
                    self._conform,
                    seed=self.config.seed,
                    batch_size=self.config.batch_size,
                    steps=self.steps,
                    first=first_epoch,
                    epochs=epochs,
                    extra=(
                        feed.augment if augment else None,
                        self._example_bytes,
                        self._counts,
                    ),
                )
            )
        return feed.in_memory(
            self._x,
            self._y,
            self._in_memory_conform,
            seed=self.config.seed,
            batch_size=self.config.batch_size,
            first=first_epoch,
            epochs=epochs,
            augmented=augment,
        )


def _as_refusal(err):
    """`err` as the `ConfigError` every worker agrees on: a failure of the
    user's files or code before the run starts is one line too."""
    if isinstance(err, ConfigError):
        return err
    first = (str(err).strip().splitlines() or [""])[0]
    refusal = ConfigError(f"the run cannot start: {type(err).__name__}: {first}")
    refusal.__cause__ = err
    return refusal


def _refuse(refusal, all_ok, same):
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
