"""The main job's training stages: banners, one `fit` per stage with a
checkpoint each epoch, resumption from the last one, and the result saved
and loaded back (so a resumed run measures what an uninterrupted one does).
"""

import logging
import os
import sys
import time

import tensorflow as tf

from tfopt import callbacks, distillation, distribute, models, quantization
from tfopt.core import summary
from tfopt.core.kerases import Keras
from tfopt.job import lockstep, sources
from tfopt.job.config import ConfigError

# Stage lines; `scripts/train.py` shows them as plain lines.
_log = logging.getLogger("tfopt.job.pipeline")


def keras_of(config):
    """The Keras module `config.keras` builds models with: tf_keras (the
    one TFMOT takes) or Keras 3. Only the one asked for is imported."""
    return models.keras_module(config.keras_api)


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


def plan(config):
    """Stage name -> what its banner says, in order."""
    stages = {}
    teacher_spec, epochs = config.teacher_spec, config.stage_epochs
    model = _short(config.model)
    if config.teacher and (teacher_spec is None or not teacher_spec.is_file):
        name = config.teacher_model if teacher_spec is None else config.teacher
        stages["teacher"] = (
            f"train teacher {_short(name)}, {config.teacher_epochs} epochs"
        )
    if config.teacher:
        teacher = (
            _short(config.teacher_model)
            if config.teacher == "train"
            else _short(config.teacher)
        )
        stages["distilled"] = (
            f"distill{' + prune' * config.prune} {model} ← {teacher}, {epochs} epochs"
        )
    else:
        if not config.given:
            stages["baseline"] = f"train {model}, {epochs} epochs"
        elif config.epochs and not config.prune:
            stages["finetuned"] = f"fine-tune {model}, {config.epochs} epochs"
        if config.prune:
            stages["pruned"] = (
                f"prune {_what_is_pruned(config)} of {model}, "
                f"{epochs} epochs"
                + (", distilled from the unpruned model" if config.recover else "")
            )
    if config.dense_control:
        stages["control"] = (
            f"dense control: train {model} uncompressed, "
            f"{config.control_epochs} epochs (the run's training of it)"
        )
    if config.prunes_channels:
        stages["shrink"] = "shrink: remove the pruned channels"
    if config.qat:
        stages["qat"] = f"quantization-aware training, {config.qat_epochs} epochs"
    stages["export"] = f"evaluate and export {', '.join(config.export)}"
    return stages


def _short(text):
    """A model as a banner names it: a saved one by its file name."""
    return os.path.basename(text.rstrip("/")) if "/" in text else text


def _what_is_pruned(config):
    if config.prune_structure == "weights":
        return f"{config.target_sparsity:.0%} of the weights"
    share = (
        "of each group's channels"
        if config.prune_measure == "channels"
        else (f"of the {config.prune_measure.replace('macs', 'MACs')}")
    )
    return f"channels: {config.target_sparsity:.0%} {share}"


def banner(run, name, note=""):
    stages = plan(run.config)
    _log.info(
        "[%d/%d] %s%s", list(stages).index(name) + 1, len(stages), stages[name], note
    )


def stage(run, name, build, epochs, callbacks=()):
    """Builds, compiles and trains one stage (resuming it if interrupted)
    and saves its result; returns that result as loaded back from disk,
    whether trained now or earlier, so a resumed run measures and exports
    exactly what an uninterrupted one does."""
    done = run.chief_path("checkpoints", f"{name}.keras")
    finished = tf.io.gfile.exists(done)
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
        banner(run, name, f": finished earlier, loading {done}")
        with run.timed(f"{name} (loaded)"), run.strategy.scope():
            return run.load(done)
    replicas = run.strategy.num_replicas_in_sync
    banner(run, name, f" on {replicas} replicas" if replicas > 1 else "")
    with run.timed(name):
        saved = train(run, name, build, epochs, callbacks, latest)
        with run.strategy.scope():
            result = run.load(saved)
    # The digest lets the workers of a cluster be compared from their logs.
    _log.info(
        "      stage %s: %d epochs in %.1f s (weights %s)",
        name,
        epochs,
        run.seconds[name],
        lockstep.digest(result),
    )
    return result


def train(run, name, build, epochs, callbacks, latest):
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
        run.stream(first, epochs, augment=run.config.augment),
        epochs=epochs,
        initial_epoch=first,
        steps_per_epoch=run.steps,
        validation_data=run.splits.validation,
        # The data sets shuffle themselves; Keras 3 warns at every fit that
        # `shuffle=True` (its default) is ignored for a tf.data input.
        shuffle=False,
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
    # Keras saves through tf.io.gfile: `model_dir` may be on gs://.
    result.save(mine + ".tmp.keras")
    tf.io.gfile.rename(mine + ".tmp.keras", mine, overwrite=True)
    return mine


def peak(config, start):
    """The peak learning rate of a stage that starts `start`: 'scratch',
    'teacher' (a teacher from scratch), 'trained' (pruning or fine-tuning
    trained weights) or 'qat'."""
    rate = config.learning_rate
    return {
        "scratch": rate,
        "teacher": config.teacher_learning_rate or rate,
        "trained": config.finetune_learning_rate or rate,
        "qat": config.qat_learning_rate or rate / 10,
    }[start]


def rate(run, start, epochs):
    """The learning rate of a stage of `epochs` that starts `start` (see
    `peak`): with `lr_schedule=cosine` a cosine decay to 0 at the stage's
    last step, after a linear warm-up over `warmup` of the stage for a model
    from scratch (trained weights would be disturbed by a cold start's
    large steps, so they start at their peak). The schedule reads the
    optimizer's step count, which the stage's checkpoints keep: a resumed
    stage goes on where it stopped."""
    config, top = run.config, peak(run.config, start)
    if config.lr_schedule == "constant":
        return top
    total = max(1, epochs * run.steps)
    warm = round(config.warmup * total) if start in ("scratch", "teacher") else 0
    return keras_of(config).optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warm else top,
        decay_steps=total - warm,
        warmup_target=top if warm else None,
        warmup_steps=warm,
    )


def compiled(config, model, learning_rate):
    """`model` compiled with Adam at `learning_rate` (a number or a
    schedule, `rate`) and the job's loss and metric."""
    keras = keras_of(config)
    if config.keras_api is Keras.KERAS3:
        distribute.keras3_multi_worker(model)  # Keras 3.15's trainer bugs
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def model_start(config):
    """How `model`'s first stage starts (see `peak`): a saved model is
    trained already, a built one starts from scratch."""
    return "trained" if config.given else "scratch"


def fresh(run):
    """`model` as the run starts it: the saved one, or built (the baseline's
    and the dense control's weights, the same seed)."""
    config = run.config
    if config.given:
        return sources.load(config, config.model, "model", run.scratch)
    return sources.build(
        config, config.model, "model", run.info, config.seed + 1, run.scratch
    )


def control(run):
    """The dense control: `model` trained without compression for every
    epoch the run trains it (`Config.control_epochs`), in one stage."""
    config = run.config
    epochs, start = config.control_epochs, model_start(config)
    return stage(
        run,
        "control",
        lambda: compiled(config, fresh(run), rate(run, start, epochs)),
        epochs,
    )


def qat(run, model):
    """`model` after quantization-aware training (pruned zeros kept)."""
    config = run.config
    zeros = config.prune and not config.prunes_channels
    return stage(
        run,
        "qat",
        lambda: compiled(
            config,
            quantization.quantize(model, preserve_sparsity=zeros),
            rate(run, "qat", config.qat_epochs),
        ),
        config.qat_epochs,
    )
