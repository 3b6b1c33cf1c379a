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
checkpoints (see `tfopt.job.state`).
"""

import logging
import os
import sys
import time
from typing import NamedTuple

import tensorflow as tf

from tfopt import (
    callbacks,
    devices,
    distillation,
    distribute,
    export,
    models,
    pruning,
    quantization,
)
from tfopt.core import summary, tflite
from tfopt.core.kerases import Keras
from tfopt.job import lockstep, measure, report
from tfopt.job.config import EXPORTS, ClusterError, Config, ConfigError
from tfopt.job.state import Run as _Run
from tfopt.job.state import check

__all__ = ["ClusterError", "Config", "ConfigError", "Report", "get_strategy", "run"]

# Stage lines; `scripts/train.py` shows them as plain lines.
_log = logging.getLogger("tfopt.job.pipeline")


class Report(NamedTuple):
    """What `run` returns: one row per artifact, and the report as markdown
    (None on the workers of a cluster other than the chief)."""

    rows: list
    markdown: str | None


def keras_of(config):
    """The Keras module `config.keras` builds models with: tf_keras (the
    world of TFMOT) or Keras 3. Only the one asked for is imported."""
    return config.keras_api.module()


# The job's own callbacks run in either Keras's `fit`: `callbacks.Callback`.
class _EpochCheckpoint(callbacks.Callback):
    def __init__(self, manager, epoch):
        super().__init__()
        self.manager, self.epoch = manager, epoch

    def on_epoch_end(self, index, logs=None):
        self.epoch.assign(index + 1)
        self.manager.save(checkpoint_number=index + 1)


class _EpochLine(callbacks.Callback):
    """One line per epoch where there is no terminal for a progress bar."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, index, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, index, logs=None):
        values = ", ".join(
            f"{k} {v:.4f}"
            for k, v in (logs or {}).items()
            if isinstance(v, (int, float))
        )
        _log.info(
            "      epoch %d/%d: %s (%.1f s)",
            index + 1,
            self.epochs,
            values,
            time.perf_counter() - self.start,
        )


class _ScalarLogger(callbacks.Callback):
    def __init__(self, log_dir):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)

    def on_epoch_end(self, index, logs=None):
        summary.write_scalars(
            self.writer,
            index + 1,
            {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))},
        )


def _plan(config):
    """Stage name -> what its banner says, in order."""
    stages = {}
    if config.teacher == "train":
        stages["teacher"] = (
            f"train teacher {config.teacher_model}, {config.teacher_epochs} epochs"
        )
    if config.teacher:
        teacher = (
            config.teacher_model
            if config.teacher == "train"
            else os.path.basename(config.teacher)
        )
        stages["distilled"] = (
            f"distill{' + prune' * config.prune} "
            f"{config.model} ← {teacher}, {config.epochs} epochs"
        )
    else:
        stages["baseline"] = f"train {config.model}, {config.epochs} epochs"
        if config.prune:
            stages["pruned"] = (
                f"prune {_what_is_pruned(config)} of {config.model}, "
                f"{config.epochs} epochs"
                + (", distilled from the unpruned model" if config.recover else "")
            )
    if config.prunes_channels:
        stages["shrink"] = "shrink: remove the pruned channels"
    if config.qat:
        stages["qat"] = f"quantization-aware training, {config.qat_epochs} epochs"
    stages["export"] = f"evaluate and export {', '.join(config.export)}"
    return stages


def _what_is_pruned(config):
    if config.prune_structure == "weights":
        return f"{config.target_sparsity:.0%} of the weights"
    share = (
        "of each group's channels"
        if config.prune_measure == "channels"
        else (f"of the {config.prune_measure.replace('macs', 'MACs')}")
    )
    return f"channels: {config.target_sparsity:.0%} {share}"


def _banner(run, name, note=""):
    stages = _plan(run.config)
    _log.info(
        "[%d/%d] %s%s", list(stages).index(name) + 1, len(stages), stages[name], note
    )


def _stage(run, name, build, epochs, callbacks=()):
    """Builds, compiles and trains one stage (resuming it if interrupted)
    and saves its result; returns that result as loaded back from disk,
    whether trained now or earlier, so a resumed run measures and exports
    exactly what an uninterrupted one does."""
    done = run.chief_path("checkpoints", f"{name}.keras")
    finished = os.path.exists(done)
    latest = tf.train.latest_checkpoint(run.chief_path("checkpoints", name))
    # Every worker decides from the chief's files on its own: they must see
    # the same ones, or they would run different stages and hang.
    _, same = lockstep.agree(
        run.strategy, run.worker, True, [finished, latest and os.path.basename(latest)]
    )
    if not same:
        raise ConfigError(
            f"the workers see different files in `model_dir={run.shared}`: it "
            "must be one directory that every worker reaches at the same path "
            "(a shared file system)."
        )
    if finished:
        _banner(run, name, f": finished earlier, loading {done}")
        with run.timed(f"{name} (loaded)"), run.strategy.scope():
            return export.load_model(done)
    replicas = run.strategy.num_replicas_in_sync
    _banner(run, name, f" on {replicas} replicas" if replicas > 1 else "")
    with run.timed(name):
        saved = _train(run, name, build, epochs, callbacks, latest)
        with run.strategy.scope():
            result = export.load_model(saved)
    # The digest lets the workers of a cluster be compared from their logs.
    _log.info(
        "      stage %s: %d epochs in %.1f s (weights %s)",
        name,
        epochs,
        run.seconds[name],
        lockstep.digest(result),
    )
    return result


def _train(run, name, build, epochs, callbacks, latest):
    """Trains a stage from `latest` (its last checkpoint, or None) and saves
    its result; returns where."""
    with run.strategy.scope():
        model = build()
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, epoch=epoch
        )
    manager = tf.train.CheckpointManager(
        checkpoint, run.path("checkpoints", name), max_to_keep=1
    )
    if latest:
        checkpoint.restore(latest)
        _log.info("      resuming after epoch %d", int(epoch.numpy()))
    first = int(epoch.numpy())
    # Keras's progress bar on a terminal; else one line per epoch.
    bar = sys.stdout.isatty()
    model.fit(
        run.stream(first, epochs),
        epochs=epochs,
        initial_epoch=first,
        steps_per_epoch=run.steps,
        validation_data=run.splits.validation,
        verbose=1 if bar else 0,
        callbacks=[
            *callbacks,
            _EpochCheckpoint(manager, epoch),
            _ScalarLogger(run.path("logs", name)),
            *([] if bar else [_EpochLine(epochs)]),
        ],
    )
    result = model.student if isinstance(model, distillation.Distiller) else model
    mine = run.path("checkpoints", f"{name}.keras")
    result.save(mine + ".tmp.keras")
    os.replace(mine + ".tmp.keras", mine)
    return mine


def _compiled(config, model, learning_rate):
    keras = keras_of(config)
    if config.keras_api is Keras.KERAS3:
        distribute.keras3_multi_worker(model)  # Keras 3.15's trainer bugs
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _build(config, name, info, seed):
    keras_of(config).utils.set_random_seed(seed)
    return models.build(
        name, info.input_shape, info.num_classes, keras_version=config.keras_api.value
    )


def _teacher(run):
    config = run.config
    if config.teacher == "train":

        def build():
            return _compiled(
                config,
                _build(config, config.teacher_model, run.info, config.seed),
                config.learning_rate,
            )

        return _stage(run, "teacher", build, config.teacher_epochs)
    with run.strategy.scope():
        return export.load_model(config.teacher)


def _prune(config, model):
    extra = (
        {
            "measure": config.prune_measure,
            "importance": config.prune_importance,
            "round_to": config.prune_round_to,
        }
        if config.prunes_channels
        else {}
    )
    return pruning.prune(
        model,
        config.target_sparsity,
        begin=config.pruning_begin,
        end=config.pruning_end,
        m_by_n=config.m_by_n,
        structure=config.prune_structure,
        **extra,
    )


def _student(run, teacher):
    """The trained student: distilled and/or pruned, from scratch or from a
    plain baseline."""
    config = run.config
    taylor = config.prunes_channels and config.prune_importance == "taylor"
    callbacks = (
        [
            pruning.PruningCallback(
                log_dir=run.path("logs", "pruning"),
                data=run.splits.train if taylor else None,
            )
        ]
        if config.prune
        else []
    )

    def fresh():
        return _build(config, config.model, run.info, config.seed + 1)

    def distiller(student, teacher, alpha=config.alpha):
        return _compiled(
            config,
            distillation.Distiller(
                student=student,
                teacher=teacher,
                temperature=config.temperature,
                alpha=alpha,
                distillation_loss=config.distillation_loss,
                cache_teacher=config.cache_teacher,
            ),
            config.learning_rate,
        )

    if teacher is not None:

        def distill():
            return distiller(
                _prune(config, fresh()) if config.prune else fresh(), teacher
            )

        return None, _stage(run, "distilled", distill, config.epochs, callbacks)
    baseline = _stage(
        run,
        "baseline",
        lambda: _compiled(config, fresh(), config.learning_rate),
        config.epochs,
    )
    if not config.prune:
        return baseline, baseline

    def pruned():
        # Recovery: the unpruned model teaches its pruned copy (the copy is
        # the one that trains; the baseline stays as it was saved).
        if config.recover:
            return distiller(_prune(config, baseline), baseline, config.recover_alpha)
        return _compiled(config, _prune(config, baseline), config.learning_rate)

    return baseline, _stage(run, "pruned", pruned, config.epochs, callbacks)


def _qat(run, model):

    config = run.config
    zeros = config.prune and not config.prunes_channels
    return _stage(
        run,
        "qat",
        lambda: _compiled(
            config,
            quantization.quantize(model, preserve_sparsity=zeros),
            config.learning_rate / 10,
        ),
        config.qat_epochs,
    )


class Verified(NamedTuple):
    """One exported artifact and how it did on the test split."""

    name: str  # a `tfopt.job.config.EXPORTS` name
    path: str
    size_bytes: int
    accuracy: float
    latency_ms_per_example: float | None  # TFLite files only
    model: object  # what it was made from (a SavedModel: as loaded back)


def export_and_verify(
    model, formats, output_dir, splits, *, batch_size, overwrite=False
):
    """Exports `model` in each of `formats` (`tfopt.job.config.EXPORTS` names)
    under `output_dir` and evaluates each file on `splits.test`; the main
    job and `scripts/export.py` both use it. A float model's int8 file is
    calibrated on `splits.train`; a QAT model's uses its learned ranges.

    Returns:
        One `Verified` per format, in order.
    """
    calibration = None if _is_quantized(model) else splits.train
    verified = []
    for name in formats:
        form = EXPORTS[name]
        path = os.path.join(output_dir, form.filename)
        if form.kind == "saved_model":
            made = export.export_saved_model(model, path, overwrite=overwrite)
            loaded = export.load_model(made.path, compile=False)
            verified.append(
                Verified(
                    name,
                    made.path,
                    made.size_bytes,
                    measure.keras_accuracy(loaded, splits.test),
                    None,
                    loaded,
                )
            )
            continue
        made = export.export_tflite(
            model,
            path,
            quantization=form.quantization,
            overwrite=overwrite,
            representative_data=calibration,
        )
        result = tflite.evaluate_tflite(made.path, splits.test)
        verified.append(
            Verified(
                name,
                made.path,
                made.size_bytes,
                result.accuracy,
                result.mean_batch_latency_ms / batch_size,
                model,
            )
        )
    return verified


def _is_quantized(model):
    if Keras.of(model) is Keras.KERAS3:
        return False  # Keras 3 has no QAT yet
    from tfopt.keras2 import selection

    return selection.is_quantized(model)


def get_strategy(config):
    """The run's (cached) strategy; `ConfigError` for a bad cluster, an
    unreachable TPU or a too-late start."""
    try:
        return distribute.get_strategy(
            config.strategy,
            tpu=config.tpu,
            num_gpus=config.num_gpus,
            all_reduce=config.all_reduce,
        )
    except (ValueError, ConnectionError, RuntimeError) as err:
        # A cluster, TPU or start-up that cannot work: one error line.
        raise ConfigError(str(err)) from err


def run(config, *, command=None):
    """Runs the recipe for `config`; returns its `Report`.

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
        memory_growth=config.memory_growth,
        memory_limit_mb=config.memory_limit_mb,
        logical_cpus=config.logical_cpus,
        mixed_precision=config.mixed_precision,
    )
    # Before any op: a multi_worker strategy configures the runtime.
    strategy = get_strategy(config)
    keras_of(config).utils.set_random_seed(config.seed)
    if config.deterministic:
        # Same numbers after a restart; a process-wide, one-way switch.
        tf.config.experimental.enable_op_determinism()
    run_ = _Run(config, strategy, sys.argv if command is None else command)
    try:
        run_.start()
        rows, speed = _recipe(run_)
        run_.seconds["total"] = time.perf_counter() - start
        failure = text = None
        if run_.worker.is_chief:
            try:
                text = report.write(
                    run_.path(),
                    title=f"{config.model} on {run_.info.name}",
                    rows=rows,
                    env=measure.environment(run_),
                    settings=config.settings(),
                    dataset=run_.info._asdict(),
                    speed=speed,
                )
                _log.info("report written to %s", run_.path("report.md"))
            except Exception as err:  # noqa: BLE001 - re-raised below
                failure = err
        # The chief hosts the cluster's coordination service: it must not
        # leave while a worker still evaluates or exports, and they learn
        # whether it wrote the report.
        all_ok, _ = lockstep.agree(strategy, run_.worker, failure is None)
        if failure is not None:
            raise failure
        if not all_ok:
            raise ClusterError(
                "the chief could not write the report (its log says "
                "why); the run's stages are saved: fix that and "
                "re-run the same command on every worker."
            )
        if not run_.worker.is_chief:
            _log.info(
                "%s %d done; the chief wrote the report to %s",
                run_.worker.task_type,
                run_.worker.task_id,
                run_.shared,
            )
    except lockstep.PEER_ERRORS as err:
        if run_.worker.num_workers < 2:
            raise
        raise ClusterError(lockstep.lost_task(err, run_.worker)) from err
    finally:
        run_.close()
    return Report(rows, text)


def _recipe(run_):
    config = run_.config
    rows, speed = [], None
    teacher = _teacher(run_) if config.teacher else None
    baseline, student = _student(run_, teacher)
    shrunk = None
    reference = teacher if teacher is not None else baseline
    with run_.timed("evaluate"):
        rows.append(
            _row(
                run_,
                "teacher" if teacher is not None else "baseline",
                reference,
                reference=None,
            )
        )
        final = pruning.strip(student)
        if teacher is not None:
            rows.append(
                _row(run_, "distilled" + ("+pruned" * config.prune), final, rows[0])
            )
        elif config.prune:
            rows.append(_row(run_, "pruned", final, rows[0]))
    if config.prunes_channels:
        _banner(run_, "shrink")
        with run_.timed("shrink"):
            # Deterministic from the saved pruned model: a resumed run shrinks
            # it to the same model, so it needs no checkpoint of its own.
            final = shrunk = pruning.shrink(final)
            rows.append(_row(run_, "shrunk", final, rows[0]))
    if config.qat:
        final = _qat(run_, final)
        with run_.timed("evaluate"):
            rows.append(_row(run_, "qat", final, rows[0]))
    _banner(run_, "export")
    with run_.timed("evaluate"):
        for verified in export_and_verify(
            final,
            config.export,
            run_.path("export"),
            run_.splits,
            batch_size=config.batch_size,
            overwrite=True,
        ):
            rows.append(measure.file_row(verified, rows[0]))
    if shrunk is not None:
        _log.info("      timing the dense and the shrunk model (TFLite, batch 1)")
        with run_.timed("speed"):
            dense = (
                baseline
                if baseline is not None
                else models.build(
                    config.model,
                    run_.info.input_shape,
                    run_.info.num_classes,
                    keras_version=config.keras_api.value,
                )
            )
            speed = measure.speed(
                {"dense": dense, "shrunk": shrunk},
                run_.path("export", "speed"),
                run_.splits.train,
            )
    return rows, speed


def _row(run_, name, model, reference):
    return measure.keras_row(
        run_.path("export", name.replace("+", "_")),
        name,
        model,
        run_.splits.test,
        reference,
    )
