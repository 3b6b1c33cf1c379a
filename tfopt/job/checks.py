"""The main job's `Config` checks across fields (`Config.check`): what
cannot work is refused before TensorFlow is imported. No TensorFlow; reads
no file (it only asks whether a local model path exists)."""

import dataclasses

from tfopt.core.kerases import refusal, supports
from tfopt.core.vocab import EXPORTS
from tfopt.job import specs
from tfopt.job.fields import ConfigError
from tfopt.job.fields import check as _check_field

# Read only when `prune_structure=channels`.
CHANNEL_SETTINGS = ("prune_measure", "prune_importance", "prune_round_to")


def check(config):
    """Raises `ConfigError` for the first setting of `config` that cannot
    work."""
    for field in dataclasses.fields(config):
        _check_field(field, getattr(config, field.name))
    if not config.model_dir:
        raise ConfigError(
            "`model_dir` is required: where checkpoints and the report go."
        )
    specs.check(config)
    if config.dense_control and not (config.prune or config.qat or config.teacher):
        raise ConfigError(
            "`dense_control` needs `prune`, `qat` or `teacher`: without them "
            "the run's own training is the dense model."
        )
    _check_rates(config)
    if config.pruning_begin >= config.ramp_end:
        raise ConfigError(
            f"`pruning_begin={config.pruning_begin}` must be below "
            f"`pruning_end={config.ramp_end}`"
            + (" (its default)." if config.pruning_end is None else ".")
        )
    if config.prune and not 0 < config.target_sparsity < 1:
        raise ConfigError(
            f"`target_sparsity={config.target_sparsity}` must be in "
            "(0, 1) with `prune`: the fraction of weights "
            "pruned."
        )
    if config.sparsity_m_by_n is not None and config.m_by_n is None:
        raise ConfigError(
            f"`sparsity_m_by_n={config.sparsity_m_by_n}` must look "
            "like 2:4 (m zeros in every n weights, 0 < m < n)."
        )
    if config.sparsity_m_by_n is not None and not config.prune:
        raise ConfigError(f"`sparsity_m_by_n={config.sparsity_m_by_n}` needs `prune`.")
    defaults = _defaults(config)
    if config.recover_alpha != defaults["recover_alpha"] and (
        config.teacher or not config.prune or not config.recover
    ):
        raise ConfigError(
            f"`recover_alpha={config.recover_alpha}` needs `prune` "
            "with `recover` and no `teacher`."
        )
    for name in (*CHANNEL_SETTINGS, "prune_structure"):
        if getattr(config, name) != defaults[name] and not config.prunes_channels:
            raise ConfigError(
                f"`{name}={getattr(config, name)}` needs `prune`"
                + (
                    "."
                    if name == "prune_structure"
                    else " with `prune_structure=channels`."
                )
            )
    if config.prune_structure == "channels" and config.sparsity_m_by_n is not None:
        raise ConfigError(
            f"`sparsity_m_by_n={config.sparsity_m_by_n}` applies to "
            "`prune_structure=weights`."
        )
    if not config.export:
        raise ConfigError(f"`export` must name at least one of {', '.join(EXPORTS)}.")
    if config.temperature <= 0:
        raise ConfigError(f"`temperature={config.temperature}` must be > 0.")
    for name in (
        "learning_rate",
        "teacher_learning_rate",
        "finetune_learning_rate",
        "qat_learning_rate",
    ):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ConfigError(f"`{name}={getattr(config, name)}` must be > 0.")
    keras = config.keras_api
    for name, value, capability, instead in (
        ("qat", config.qat, "quantize", ""),
        ("prune_structure", config.prunes_channels, "channel_pruning", ""),
        ("export", "saved_model" in config.export, "export_saved_model", ""),
        (
            "prune_importance",
            config.prunes_channels and config.prune_importance == "taylor",
            "taylor",
            "Use --prune_importance=l2 or bn_gamma.",
        ),
    ):
        if value and not supports(keras, capability):
            subject = f"`{name}={getattr(config, name)}`"
            raise ConfigError(refusal(capability, keras, subject, instead))
    if config.strategy == "tpu" and not config.tpu:
        raise ConfigError(
            "`strategy=tpu` needs `tpu`: 'local' on a Cloud TPU "
            "VM, the TPU's name, or grpc://host:port."
        )


def _defaults(config):
    return {field.name: field.default for field in dataclasses.fields(config)}


def _check_rates(config):
    """Refuses a stage's learning-rate setting that no stage of the run
    would read."""
    defaults = _defaults(config)
    if config.lr_schedule == "constant" and config.warmup != defaults["warmup"]:
        raise ConfigError(
            f"`warmup={config.warmup}` needs `lr_schedule=cosine`: a constant "
            "rate has no warm-up."
        )
    if config.qat_learning_rate is not None and not config.qat:
        raise ConfigError(
            f"`qat_learning_rate={config.qat_learning_rate}` needs `qat`."
        )
    from_trained = config.given or (config.prune and not config.teacher)
    if config.finetune_learning_rate is not None and not from_trained:
        raise ConfigError(
            f"`finetune_learning_rate={config.finetune_learning_rate}` needs a "
            "stage that starts from trained weights: a saved `model`, or "
            "`prune` without `teacher`."
        )
