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
`model_dir`, the others write beside it in `workertemp_<task>` directories
they delete at the end, and every worker resumes from the chief's
checkpoints (see `tfopt._run`).
"""

import dataclasses
import json
import os
import sys
import time

import tensorflow as tf
from absl import logging

from tfopt import (
    _lockstep,
    _summary,
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
from tfopt._run import ClusterError, ConfigError, check
from tfopt._run import Run as _Run

__all__ = ["ClusterError", "Config", "ConfigError", "get_strategy", "run"]

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


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
    finished = os.path.exists(done)
    latest = tf.train.latest_checkpoint(run.chief_path("checkpoints", name))
    # Every worker decides from the chief's files on its own: they must see
    # the same ones, or they would run different stages and hang.
    _, same = _lockstep.agree(run.strategy, run.worker, True, [
        finished, latest and os.path.basename(latest)])
    if not same:
        raise ConfigError(
            f"the workers see different files in --model_dir={run.shared}: it "
            "must be one directory that every worker reaches at the same path "
            "(a shared file system).")
    if finished:
        logging.info("stage %s: finished earlier, loading %s", name, done)
        with run.timed(f"{name} (loaded)"), run.strategy.scope():
            return export.load_model(done)
    logging.info("stage %s: training %d epochs on %d replicas", name, epochs,
                 run.strategy.num_replicas_in_sync)
    with run.timed(name):
        result = _train(run, name, build, epochs, callbacks, latest)
    logging.info("stage %s: %d epochs in %.1f s (weights %s)", name, epochs,
                 run.seconds[name], _lockstep.digest(result))
    return result


def _train(run, name, build, epochs, callbacks, latest):
    """Trains a stage from `latest` (its last checkpoint, or None) and saves
    its result."""
    with run.strategy.scope():
        model = build()
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                         epoch=epoch)
    manager = tf.train.CheckpointManager(
        checkpoint, run.path("checkpoints", name), max_to_keep=1)
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
                student=student, teacher=teacher, temperature=config.temperature,
                alpha=config.alpha,
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
    """The run's (cached) strategy; `ConfigError` for a bad cluster, an
    unreachable TPU or a too-late start."""
    try:
        return distribute.get_strategy(
            config.strategy, tpu=config.tpu, num_gpus=config.num_gpus,
            all_reduce=config.all_reduce)
    except (ValueError, ConnectionError, RuntimeError) as err:
        # A cluster, TPU or start-up that cannot work: one error line.
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
        failure = None
        if run_.worker.is_chief:
            try:
                report.write(run_, rows)
                logging.info("report written to %s", run_.path("report.md"))
            except Exception as err:  # noqa: BLE001 - re-raised below
                failure = err
        # The chief hosts the cluster's coordination service: it must not
        # leave while a worker still evaluates or exports, and they learn
        # whether it wrote the report.
        all_ok, _ = _lockstep.agree(strategy, run_.worker, failure is None)
        if failure is not None:
            raise failure
        if not all_ok:
            raise ClusterError("the chief could not write the report (its log says "
                               "why); the run's stages are saved: fix that and "
                               "re-run the same command on every worker.")
        if not run_.worker.is_chief:
            logging.info("%s %d done; the chief wrote the report to %s",
                         run_.worker.task_type, run_.worker.task_id, run_.shared)
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
    logging.info("evaluating and exporting")
    with run_.timed("evaluate"):
        rows.append(report.keras_row(run_, "baseline", reference, reference=None))
        final = pruning.strip(student)
        if teacher is not None:
            rows.append(report.keras_row(
                run_, "distilled" + ("+pruned" * config.prune), final, rows[0]))
        elif config.prune:
            rows.append(report.keras_row(run_, "pruned", final, rows[0]))
    if config.qat:
        final = _qat(run_, final)
        with run_.timed("evaluate"):
            rows.append(report.keras_row(run_, "qat", final, rows[0]))
    with run_.timed("evaluate"):
        for name, path in _exports(run_, final):
            rows.append(report.file_row(run_, name, path, final, rows[0]))
    return rows
