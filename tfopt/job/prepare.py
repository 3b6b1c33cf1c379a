"""The main job's checks of its model against its data, before anything is
written: the model (and a saved teacher) loaded or built once, its classes
and input checked against the data, the data shaped for it, and a channel
pruning target it cannot reach refused."""

import logging
import math

from tfopt import channels
from tfopt.core.channel_groups import describe
from tfopt.core.kerases import Keras
from tfopt.job import feed, sources, stages
from tfopt.job.fields import ConfigError

_log = logging.getLogger("tfopt.job.pipeline")


def prepare(run_):
    """Loads or builds the model (and teacher) once to check them against
    the data, and shapes the data for them: before anything is written."""
    config = run_.config
    if config.given:
        model = sources.load(config, config.model, "model", run_.scratch, note=True)
    else:
        model = sources.build(
            config, config.model, "model", run_.info, config.seed, run_.scratch
        )
    sources.check_fits(model, config.model, "model", run_.info)
    target = feed.target_shape(model, run_.info.input_shape)
    spec = config.teacher_spec
    if config.teacher:
        if spec is not None and spec.is_file:
            teacher = sources.load(
                config, config.teacher, "teacher", run_.scratch, serving=True, note=True
            )
            text = config.teacher
        else:  # built here, for the student's input
            text = config.teacher_model if spec is None else config.teacher
            teacher = sources.build(
                config, text, "teacher", run_.info, 0, run_.scratch, shape=target
            )
        _check_teacher(config, teacher, text, target, run_.info)
    keras = stages.keras_of(config)
    run_.shape_data(target, feed.preprocess_fn(config, keras), config.model)
    distills = config.teacher or (config.prune and config.recover)
    if config.augment and distills and config.cache_teacher:
        _log.info("      --augment: teacher logits are computed every step (no cache)")
    check_reachable(run_, model)


def _check_teacher(config, teacher, text, target, info):
    name = "teacher" if config.teacher != "train" else "teacher_model"
    sources.check_fits(teacher, text, name, info)
    if Keras.of(teacher) is not config.keras_api:
        raise ConfigError(
            f"`{name}={text}` is a {Keras.of(teacher).label} model and "
            f"`model={config.model}` a {config.keras_api.label} one: "
            "distillation needs both in one Keras."
        )
    shape = feed.target_shape(teacher, target)
    if shape != target:
        raise ConfigError(
            f"`{name}={text}` takes inputs of shape {shape}, "
            f"`model={config.model}` of {target}: distillation feeds both the "
            "same images."
        )


def check_reachable(run_, model):
    """Refuses, before any training, a `target_sparsity` that channel
    pruning by `params`/`macs` cannot reach on this model (found once only
    after the baseline had trained, as a traceback)."""
    config = run_.config
    if not config.prunes_channels or config.prune_measure == "channels":
        return
    most = channels.max_cut(
        model, measure=config.prune_measure, round_to=config.prune_round_to
    )
    if config.target_sparsity > most:
        held = channels.blocking(model)
        why = f" Held back by: {describe(held)}." if held else ""
        raise ConfigError(
            f"`target_sparsity={config.target_sparsity}` must be at most "
            f"{math.floor(most * 1000) / 1000} with "
            f"`prune_measure={config.prune_measure}` and "
            f"`prune_round_to={config.prune_round_to}`: removing every prunable "
            f"channel of {config.model} cuts only that fraction of its "
            f"{config.prune_measure}.{why}"
        )
