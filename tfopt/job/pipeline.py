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
import sys
import time
from typing import NamedTuple

import tensorflow as tf

from tfopt import (
    devices,
    distillation,
    distribute,
    pruning,
)
from tfopt.job import lockstep, measure, prepare, report, sources, stages
from tfopt.job.config import ClusterError, Config, ConfigError
from tfopt.job.exports import Verified, export_and_verify
from tfopt.job.state import Run as _Run
from tfopt.job.state import check

__all__ = [
    "ClusterError",
    "Config",
    "ConfigError",
    "Report",
    "Verified",
    "export_and_verify",
    "get_strategy",
    "run",
]

# Stage lines; `scripts/train.py` shows them as plain lines.
_log = logging.getLogger("tfopt.job.pipeline")


class Report(NamedTuple):
    """What `run` returns: one row per artifact, and the report as markdown
    (None on the workers of a cluster other than the chief)."""

    rows: list
    markdown: str | None


def _teacher(run):
    config = run.config
    spec = config.teacher_spec
    if spec is None or not spec.is_file:
        name = config.teacher_model if spec is None else config.teacher

        def build():
            return stages.compiled(
                config,
                sources.build(
                    config,
                    name,
                    "teacher",
                    run.info,
                    config.seed,
                    run.scratch,
                    shape=run.target,
                ),
                stages.rate(run, "teacher", config.teacher_epochs),
            )

        return stages.stage(run, "teacher", build, config.teacher_epochs)
    with run.strategy.scope():
        return sources.load(
            config, config.teacher, "teacher", run.scratch, serving=True
        )


def _given(run):
    """The saved `model`, loaded in the run's strategy."""
    with run.strategy.scope():
        return sources.load(run.config, run.config.model, "model", run.scratch)


def _prune(config, model):
    structure = (
        pruning.Channels(
            measure=config.prune_measure,
            importance=config.prune_importance,
            round_to=config.prune_round_to,
        )
        if config.prunes_channels
        else "weights"
    )
    return pruning.prune(
        model,
        config.target_sparsity,
        begin=config.pruning_begin,
        end=config.ramp_end,
        m_by_n=config.m_by_n,
        structure=structure,
    )


def _student(run, teacher):
    """The trained student: distilled and/or pruned, from scratch or from a
    plain baseline."""
    config = run.config
    epochs, start = config.stage_epochs, stages.model_start(config)
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

    def distiller(student, teacher, rate, alpha=config.alpha):
        return stages.compiled(
            config,
            distillation.Distiller(
                student=student,
                teacher=teacher,
                temperature=config.temperature,
                alpha=alpha,
                distillation_loss=config.distillation_loss,
                # Augmented images differ each epoch: so do their logits.
                cache_teacher=config.cache_teacher and not config.augment,
            ),
            rate,
        )

    if teacher is not None:

        def distill():
            return distiller(
                _prune(config, stages.fresh(run))
                if config.prune
                else stages.fresh(run),
                teacher,
                stages.rate(run, start, epochs),
            )

        return None, stages.stage(run, "distilled", distill, epochs, callbacks)
    if config.given:
        baseline = _given(run)
        if not config.prune and config.epochs:
            return baseline, stages.stage(
                run,
                "finetuned",
                lambda: stages.compiled(
                    config,
                    stages.fresh(run),
                    stages.rate(run, "trained", config.epochs),
                ),
                config.epochs,
            )
    else:
        baseline = stages.stage(
            run,
            "baseline",
            lambda: stages.compiled(
                config, stages.fresh(run), stages.rate(run, "scratch", epochs)
            ),
            epochs,
        )
    if not config.prune:
        return baseline, baseline

    def pruned():
        # Recovery: the unpruned model teaches its pruned copy (the copy is
        # the one that trains; the baseline stays as it was saved).
        rate = stages.rate(run, "trained", epochs)
        if config.recover:
            return distiller(
                _prune(config, baseline), baseline, rate, config.recover_alpha
            )
        return stages.compiled(config, _prune(config, baseline), rate)

    return baseline, stages.stage(run, "pruned", pruned, epochs, callbacks)


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
    stages.keras_of(config).utils.set_random_seed(config.seed)
    if config.deterministic:
        # Same numbers after a restart; a process-wide, one-way switch.
        tf.config.experimental.enable_op_determinism()
    run_ = _Run(config, strategy, sys.argv if command is None else command)
    try:
        run_.start(lambda: prepare.prepare(run_))
        config = run_.config  # with the Keras of a saved model
        rows, speed = _recipe(run_)
        run_.publish()
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
    control = stages.control(run_) if config.dense_control else None
    shrunk = None
    reference = teacher if teacher is not None else baseline
    with run_.timed("evaluate"):
        first = "teacher" if teacher is not None else "baseline"
        given_first = config.given and teacher is None
        rows.append(
            _row(run_, "given" if given_first else first, reference, reference=None)
        )
        if config.given and teacher is not None:
            rows.append(_row(run_, "given", _given(run_), rows[0]))
        if control is not None:
            control_row = _row(run_, "dense_control", control, rows[0])
            rows.append(control_row)
        if given_first and not config.prune and config.epochs:
            rows.append(_row(run_, "finetuned", pruning.strip(student), rows[0]))
        final = pruning.strip(student)
        if teacher is not None:
            rows.append(
                _row(run_, "distilled" + ("+pruned" * config.prune), final, rows[0])
            )
        elif config.prune:
            rows.append(_row(run_, "pruned", final, rows[0]))
    if config.prunes_channels:
        stages.banner(run_, "shrink")
        with run_.timed("shrink"):
            # Deterministic from the saved pruned model: a resumed run shrinks
            # it to the same model, so it needs no checkpoint of its own.
            final = shrunk = pruning.shrink(final)
            rows.append(_row(run_, "shrunk", final, rows[0]))
    if config.qat:
        final = stages.qat(run_, final)
        with run_.timed("evaluate"):
            rows.append(_row(run_, "qat", final, rows[0]))
    stages.banner(run_, "export")
    with run_.timed("evaluate"):
        for verified in export_and_verify(
            final,
            config.export,
            run_.work("export"),
            run_.splits,
            batch_size=config.batch_size,
            overwrite=True,
        ):
            rows.append(measure.file_row(verified, rows[0]))
    if control is not None:
        # Against what the same training would have given uncompressed.
        for row in rows:
            row["control_delta"] = row["accuracy"] - control_row["accuracy"]
    if shrunk is not None:
        _log.info("      timing the dense and the shrunk model (TFLite, batch 1)")
        with run_.timed("speed"):
            dense = (
                baseline
                if baseline is not None
                else sources.build(
                    config, config.model, "model", run_.info, 0, run_.scratch
                )
                if not config.given
                else _given(run_)
            )
            speed = measure.speed(
                {"dense": dense, "shrunk": shrunk},
                run_.work("export", "speed"),
                run_.splits.train,
            )
    return rows, speed


def _row(run_, name, model, reference):
    return measure.keras_row(
        run_.work("export", name.replace("+", "_")),
        name,
        model,
        run_.splits.test,
        reference,
    )
