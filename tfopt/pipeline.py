"""The compress recipe that `scripts/train.py` runs, as plain functions.

configure devices -> strategy -> data -> teacher (train or load) -> student
(distilled and/or pruned, or a plain baseline) -> strip -> QAT -> export ->
evaluate -> report. Every training stage checkpoints each epoch and saves its
result when done, so re-running the same command after a kill resumes the
stage it was in at its last finished epoch, skips finished stages, and (with
per-epoch shuffles seeded by (seed, epoch) and deterministic ops) ends with
the same numbers.

On a multi-worker cluster every worker runs the same recipe (saving and
evaluating involve collectives, so all of them must); the chief writes
`model_dir`, the others write to temporary directories they delete at the
end, and every worker resumes from the chief's checkpoints.
"""

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import tensorflow as tf
from absl import logging

from tfopt import (
    _lockstep,
    _summary,
    data,
    devices,
    distillation,
    distribute,
    export,
    models,
    pruning,
    quantization,
    report,
)
from tfopt._keras import keras

__all__ = ["ClusterError", "Config", "ConfigError", "get_strategy", "run"]

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class ConfigError(ValueError):
    """A bad setting, found before any training; the message names the flag."""


class ClusterError(RuntimeError):
    """A worker of a multi-worker run stopped; the message names it."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of one run; `scripts/train.py` fills it from flags."""

    model_dir: str
    dataset: str = "mnist5k"
    batch_size: int = 64
    seed: int = 0
    model: str = "student_cnn"
    epochs: int = 3
    learning_rate: float = 3e-3
    teacher: str | None = None
    teacher_model: str = "teacher_cnn"
    teacher_epochs: int = 3
    temperature: float = 4.0
    alpha: float = 0.1
    distillation_loss: str = "kl"
    cache_teacher: bool = True
    prune: bool = False
    target_sparsity: float = 0.8
    pruning_begin: float = 0.0
    pruning_end: float = 0.75
    m_by_n: tuple | None = None
    qat: bool = False
    qat_epochs: int = 1
    export: tuple = ("tflite", "tflite_int8")
    strategy: str = "auto"
    tpu: str | None = None
    num_gpus: int | None = None
    all_reduce: str | None = None
    memory_growth: bool | None = None
    memory_limit_mb: int | None = None
    logical_cpus: int | None = None
    mixed_precision: str | None = None
    deterministic: bool = True
    overwrite: bool = False

    def settings(self):
        """What identifies the run's results (not where or whether to overwrite)."""
        values = dataclasses.asdict(self)
        for key in ("model_dir", "overwrite", "deterministic"):
            values.pop(key)
        return json.loads(json.dumps(values))


def check(config):
    """Raises `ConfigError` for settings that cannot work, before any training."""
    if not config.model_dir:
        raise ConfigError("--model_dir is required: where checkpoints and the "
                          "report go.")
    if os.path.isfile(config.model_dir):
        raise ConfigError(f"--model_dir={config.model_dir} is a file; it must be a "
                          "directory (new or from this same command).")
    if config.strategy == "tpu" and not config.tpu:
        raise ConfigError("--strategy=tpu needs --tpu: 'local' on a Cloud TPU VM, "
                          "the TPU's name, or grpc://host:port.")
    teacher = config.teacher
    if teacher not in (None, "", "train") and not os.path.exists(teacher):
        raise ConfigError(f"--teacher={teacher} does not exist; give a saved model "
                          "(.keras, .h5 or SavedModel) or 'train'.")
    try:
        resolved, _ = distribute.resolve_name(config.strategy, tpu=config.tpu)
        cluster = distribute.tf_config()
    except ValueError as err:  # a malformed or empty TF_CONFIG
        raise ConfigError(str(err)) from err
    if resolved == "parameter_server" or (cluster and "ps" in cluster["cluster"]):
        raise ConfigError(
            "scripts/train.py does not run parameter-server training (its "
            "stages checkpoint and evaluate every epoch in lockstep, which a "
            "ClusterCoordinator does not do): run it with --strategy="
            "multi_worker and a TF_CONFIG of 'worker' tasks only. The library "
            "supports parameter servers: tfopt.get_strategy('parameter_server') "
            "on the chief, tfopt.distribute.run_server() on the other tasks.")


def _claim(config):
    """The chief's checks of `model_dir`, then makes it its own."""
    previous = os.path.join(config.model_dir, "config.json")
    if os.path.isdir(config.model_dir) and os.listdir(config.model_dir) and (
        not os.path.exists(previous)
    ):
        # Not a tfopt run: never write into (or, with --overwrite, delete) it.
        raise ConfigError(f"--model_dir={config.model_dir} holds files but no tfopt "
                          "run (no config.json); give a new or empty directory.")
    if os.path.exists(previous) and not config.overwrite:
        with open(previous) as file:
            if json.load(file) != config.settings():
                raise ConfigError(
                    f"--model_dir={config.model_dir} holds a run with other flags; "
                    "use a new directory, or --overwrite to replace it.")
    if config.overwrite and os.path.isdir(config.model_dir):
        shutil.rmtree(config.model_dir)
    for sub in ("checkpoints", "logs", "export"):
        os.makedirs(os.path.join(config.model_dir, sub), exist_ok=True)
    with open(previous, "w") as file:
        json.dump(config.settings(), file, indent=2)


class _Run:
    """Paths, strategy, data and timings of one run."""

    def __init__(self, config, strategy, command):
        self.config, self.strategy, self.command = config, strategy, command
        self.worker = distribute.worker_info(strategy)
        self.strategy_name = distribute.resolve_name(config.strategy,
                                                     tpu=config.tpu)[0]
        # Wall seconds per stage of this run, for the report.
        self.seconds = {}
        replicas = strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(f"--batch_size={config.batch_size} must divide evenly "
                              f"over the {replicas} replicas of --strategy.")
        # tf.distribute's convention: the chief writes where the user asked,
        # the others to directories of their own, deleted when they finish.
        self.shared = config.model_dir
        self.dir = self.shared if self.worker.is_chief else tempfile.mkdtemp(
            prefix=f"tfopt-{self.worker.task_type}{self.worker.task_id}-")
        self.splits = self.info = self._x = self._y = self.steps = None

    def start(self):
        """Claims the directories, waits for every worker, loads the data."""
        config, refusal = self.config, None
        if self.worker.is_chief:
            try:
                _claim(config)
            except ConfigError as err:
                refusal = err
        else:
            for sub in ("checkpoints", "logs", "export"):
                os.makedirs(self.path(sub), exist_ok=True)
        # No worker reads the chief's checkpoints before it has claimed (or,
        # with --overwrite, emptied) the directory; all stop if one refuses.
        disagreement = _lockstep.agree(self.strategy, self.worker,
                                       config.settings(), refusal is None)
        if refusal is not None:
            raise refusal
        if disagreement:
            raise ConfigError(disagreement)
        self.splits = data.load(config.dataset, batch_size=config.batch_size,
                                seed=config.seed)
        self.info = self.splits.info
        # The training split in memory; epoch e is a stateless shuffle of it
        # seeded by (seed, e), so a restarted run replays the same batches.
        self._x, self._y = next(iter(self.splits.train.unbatch().batch(
            self.info.train_size)))
        self.steps = self.info.train_size // config.batch_size
        if not self.steps:
            raise ConfigError(f"--batch_size={config.batch_size} must be at most the "
                              f"{self.info.train_size} training examples of "
                              f"--dataset={config.dataset}.")

    def path(self, *parts):
        """Where this worker writes."""
        return os.path.join(self.dir, *parts)

    def chief_path(self, *parts):
        """Where every worker reads what earlier runs finished."""
        return os.path.join(self.shared, *parts)

    def close(self):
        if self.dir != self.shared:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stream(self, first_epoch, epochs):
        seed, batch = self.config.seed, self.config.batch_size
        size, x, y = self.info.train_size, self._x, self._y

        def epoch(index):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), index]))
            # Full global batches only: a partial one would be split unevenly
            # over the replicas, whose mean-of-means loss then depends on
            # the replica count (and TPUs need static shapes). The shuffle
            # drops different examples each epoch.
            return tf.data.Dataset.from_tensor_slices(order).batch(
                batch, drop_remainder=True).map(
                lambda rows: (tf.gather(x, rows), tf.gather(y, rows)))

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        stream = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
        return stream.with_options(options).prefetch(2)


class _EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, manager, epoch):
        super().__init__()
        self.manager, self.epoch = manager, epoch

    def on_epoch_end(self, index, logs=None):
        self.epoch.assign(index + 1)
        self.manager.save(checkpoint_number=index + 1)


class _ScalarLogger(keras.callbacks.Callback):
    def __init__(self, log_dir):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)

    def on_epoch_end(self, index, logs=None):
        _summary.write_scalars(self.writer, index + 1, {
            k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))})


def _stage(run, name, build, epochs, callbacks=()):
    """Builds, compiles and trains one stage (resuming it if interrupted);
    returns the trained model, or the saved result of a finished stage."""
    done = run.chief_path("checkpoints", f"{name}.keras")
    start = time.perf_counter()
    if os.path.exists(done):
        logging.info("stage %s: finished earlier, loading %s", name, done)
        with run.strategy.scope():
            model = export.load_model(done)
        run.seconds[name] = time.perf_counter() - start
        return model
    logging.info("stage %s: training %d epochs on %d replicas", name, epochs,
                 run.strategy.num_replicas_in_sync)
    with run.strategy.scope():
        model = build()
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                         epoch=epoch)
    manager = tf.train.CheckpointManager(
        checkpoint, run.path("checkpoints", name), max_to_keep=1)
    latest = tf.train.latest_checkpoint(run.chief_path("checkpoints", name))
    if latest:
        checkpoint.restore(latest)
        logging.info("stage %s: resuming after epoch %d", name, int(epoch.numpy()))
    first = int(epoch.numpy())
    model.fit(run.stream(first, epochs), epochs=epochs, initial_epoch=first,
              steps_per_epoch=run.steps, validation_data=run.splits.validation,
              verbose=1 if sys.stdout.isatty() else 2,
              callbacks=[*callbacks, _EpochCheckpoint(manager, epoch),
                         _ScalarLogger(run.path("logs", name))])
    result = model.student if isinstance(model, distillation.Distiller) else model
    mine = run.path("checkpoints", f"{name}.keras")
    result.save(mine + ".tmp.keras")
    os.replace(mine + ".tmp.keras", mine)
    run.seconds[name] = time.perf_counter() - start
    logging.info("stage %s: %d epochs in %.1f s (weights %s)", name, epochs,
                 run.seconds[name], _lockstep.digest(result))
    return result


def _compiled(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_LOSS,
                  metrics=["accuracy"])
    return model


def _teacher(run):
    config = run.config
    if config.teacher == "train":
        def build():
            keras.utils.set_random_seed(config.seed)
            return _compiled(models.build(config.teacher_model, run.info.input_shape,
                                          run.info.num_classes), config.learning_rate)
        return _stage(run, "teacher", build, config.teacher_epochs)
    with run.strategy.scope():
        return export.load_model(config.teacher)


def _prune(config, model):
    return pruning.prune(model, config.target_sparsity, begin=config.pruning_begin,
                         end=config.pruning_end, m_by_n=config.m_by_n)


def _student(run, teacher):
    """The trained student: distilled and/or pruned, from scratch or from a
    plain baseline."""
    config = run.config
    callbacks = [pruning.PruningCallback(log_dir=run.path("logs", "pruning"))] \
        if config.prune else []

    def fresh():
        keras.utils.set_random_seed(config.seed + 1)
        return models.build(config.model, run.info.input_shape, run.info.num_classes)

    if teacher is not None:
        def distill():
            student = _prune(config, fresh()) if config.prune else fresh()
            return _compiled(distillation.Distiller(
                student, teacher, temperature=config.temperature, alpha=config.alpha,
                distillation_loss=config.distillation_loss,
                cache_teacher=config.cache_teacher), config.learning_rate)
        return None, _stage(run, "distilled", distill, config.epochs, callbacks)
    baseline = _stage(run, "baseline",
                      lambda: _compiled(fresh(), config.learning_rate), config.epochs)
    if not config.prune:
        return baseline, baseline
    def pruned():
        return _compiled(_prune(config, baseline), config.learning_rate)

    return baseline, _stage(run, "pruned", pruned, config.epochs, callbacks)


def _qat(run, model):
    config = run.config
    return _stage(run, "qat", lambda: _compiled(
        quantization.quantize(model, preserve_sparsity=config.prune),
        config.learning_rate / 10), config.qat_epochs)


def _exports(run, final):
    made = []
    for name in run.config.export:
        if name == "saved_model":
            path = run.path("export", "saved_model")
            made.append(("saved_model", export.export_saved_model(final, path,
                                                                  overwrite=True).path))
            continue
        path = run.path("export", f"model_{name[7:] or 'float32'}.tflite")
        # A QAT model carries its ranges; a float one is calibrated on data.
        export.export_tflite(final, path, quantization=export.TFLITE_FORMATS[name],
                             overwrite=True, representative_data=None
                             if run.config.qat else run.splits.train)
        made.append((name, path))
    return made


def get_strategy(config):
    """The run's (cached) strategy; `ConfigError` for a bad cluster."""
    try:
        return distribute.get_strategy(
            config.strategy, tpu=config.tpu, num_gpus=config.num_gpus,
            all_reduce=config.all_reduce)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def run(config, *, command=None):
    """Runs the recipe for `config`; returns the report rows.

    Args:
        config: The run's `Config`.
        command: The command line, for the report. Defaults to `sys.argv`.

    Raises:
        ConfigError: For settings that cannot work, before any training.
        ClusterError: When a worker of a multi-worker run stops; the message
            names it.
    """
    check(config)
    start = time.perf_counter()
    devices.configure_devices(
        memory_growth=config.memory_growth, memory_limit_mb=config.memory_limit_mb,
        logical_cpus=config.logical_cpus, mixed_precision=config.mixed_precision)
    # Before any op: a multi_worker strategy configures the runtime.
    strategy = get_strategy(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        # Same numbers after a restart; a process-wide, one-way switch.
        tf.config.experimental.enable_op_determinism()
    run_ = _Run(config, strategy, sys.argv if command is None else command)
    try:
        run_.start()
        rows = _recipe(run_)
        run_.seconds["total"] = time.perf_counter() - start
        if run_.worker.is_chief:
            report.write(run_, rows)
            logging.info("report written to %s", run_.path("report.md"))
        else:
            logging.info("%s %d done; the chief writes the report to %s",
                         run_.worker.task_type, run_.worker.task_id, run_.shared)
        # The chief hosts the cluster's coordination service: it must not
        # leave while a worker still evaluates or exports.
        _lockstep.barrier(strategy, run_.worker)
    except _lockstep.PEER_ERRORS as err:
        if run_.worker.num_workers < 2:
            raise
        raise ClusterError(_lockstep.lost_task(err, run_.worker)) from err
    finally:
        run_.close()
    return rows


def _recipe(run_):
    config = run_.config
    rows = []
    teacher = _teacher(run_) if config.teacher else None
    baseline, student = _student(run_, teacher)
    reference = teacher if teacher is not None else baseline
    start = time.perf_counter()
    logging.info("evaluating and exporting")
    rows.append(report.keras_row(run_, "baseline", reference, reference=None))
    final = pruning.strip(student)
    if teacher is not None:
        rows.append(report.keras_row(run_, "distilled" + ("+pruned" * config.prune),
                                     final, rows[0]))
    elif config.prune:
        rows.append(report.keras_row(run_, "pruned", final, rows[0]))
    if config.qat:
        run_.seconds["evaluate"] = time.perf_counter() - start
        final = _qat(run_, final)
        start = time.perf_counter()
        rows.append(report.keras_row(run_, "qat", final, rows[0]))
    for name, path in _exports(run_, final):
        rows.append(report.file_row(run_, name, path, final, rows[0]))
    run_.seconds["evaluate"] = run_.seconds.get("evaluate", 0.0) + (
        time.perf_counter() - start)
    return rows
