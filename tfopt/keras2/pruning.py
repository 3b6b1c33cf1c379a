"""Magnitude pruning: TFMOT's engine without its traps.

`prune` copies the model and wraps the chosen layers in TFMOT's
`PruneLowMagnitude` with a schedule whose `begin`/`end` may be fractions of
the run. `PruningCallback` does what TFMOT's two callbacks do, resolves the
fractions when `fit` starts, reports `sparsity` in the logs and warns when a
schedule cannot finish. Training a pruned model without it fails in Python
before the first step. `strip` removes the wrappers (`tfopt.keras2.sparsity`
counts the zeros).
"""

import warnings

import tensorflow as tf

from tfopt.core import sparsity
from tfopt.keras2 import binding, selection, tfmot
from tfopt.keras2.binding import keras
from tfopt.keras2.schedule import PruningSchedule

__all__ = [
    "MISSING_CALLBACK",
    "ChannelPrunedModel",
    "PrunedModel",
    "PruneLowMagnitude",
    "PruningSchedule",
    "apply_masks",
    "check_prunable",
    "prune",
    "strip",
    "wrappers",
]
MISSING_CALLBACK = (
    "This model was pruned with tfopt.prune and is training without "
    "tfopt.PruningCallback(), which advances the pruning schedule and "
    "re-applies the masks. Add it: model.fit(..., "
    "callbacks=[tfopt.PruningCallback()])."
)


@keras.utils.register_keras_serializable(package="tfopt")
class PruneLowMagnitude(tfmot.PruneLowMagnitudeBase):
    """TFMOT's pruning wrapper, with `sparsity_m_by_n` kept in its config.

    TFMOT 0.8.1 leaves `sparsity_m_by_n` out of `get_config`, so a saved 2:4
    model reloads as an unstructured one. Everything else is TFMOT's.
    """

    def get_config(self):
        config = super().get_config()
        config["sparsity_m_by_n"] = self.sparsity_m_by_n
        return config


def wrappers(model):
    """Every pruning wrapper in `model`, nested models included, once each
    (a Distiller holds its student's layers twice)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, tfmot.PruneLowMagnitudeBase):
            found[id(layer)] = layer
        elif isinstance(layer, keras.Model):
            found.update((id(w), w) for w in wrappers(layer))
    return list(found.values())


def channel_models(model):
    """The channel-pruned models that training `model` trains: itself, or a
    Distiller's student."""
    found = [
        m
        for m in (model, getattr(model, "student", None))
        if isinstance(m, ChannelPrunedModel)
    ]
    return list({id(m): m for m in found}.values())


def require_callback(model, trainer=None):
    """Raises `RuntimeError` if `model` has wrappers (or is channel-pruned)
    and PruningCallback did not prepare it. Models holding a pruned model (a
    Distiller) call it too, as `trainer`."""
    if any(
        not getattr(w, "_tfopt_ready", False)
        for w in wrappers(model) + channel_models(model)
    ):
        # This runs while `fit` traces its step: drop the half-made function,
        # or the next `fit` (with the callback) would reuse it and fail.
        (trainer or model).train_function = None
        raise RuntimeError(MISSING_CALLBACK)


def mask_sparsity(model):
    """Fraction of pruned weights masked to zero, as a scalar tensor."""
    masks = [mask for w in wrappers(model) for _, mask, _ in w.pruning_vars]
    if not masks:
        return tf.constant(0.0)
    zeros = tf.add_n([tf.reduce_sum(1.0 - tf.cast(m, tf.float32)) for m in masks])
    return zeros / float(sum(m.shape.num_elements() for m in masks))


def apply_masks(model):
    """Zeroes the pruned weights of `model` now, as its masks say.

    Between an optimizer step and the next forward pass the wrapped weights
    can hold non-zeros under a zero mask; this masks them for good. It runs
    in the model's strategy scope (cross-replica), where TFMOT's mask op
    updates mirrored weights on every replica.
    """
    with model.distribute_strategy.scope():
        for wrapper in wrappers(model):
            wrapper.pruning_obj.weight_mask_op()


@keras.utils.register_keras_serializable(package="tfopt")
class PrunedModel(keras.Model):
    """What `prune` returns: a functional model whose `train_step` checks for
    `PruningCallback` (in Python, before the first step) and logs the
    `sparsity` of its masks at every step."""

    distribute_reduction_method = binding.SYNCED_LOGS

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        binding.check_compile(optimizer, loss, metrics)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # tf_keras does not restore the compile of a class that overrides
        # compile() (this one only checks its arguments first): do it here.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if (
            isinstance(getattr(self, "optimizer", None), keras.optimizers.Optimizer)
            and self.built
        ):
            self.optimizer.build(self.trainable_variables)  # its variables

    def train_step(self, data):
        require_callback(self)
        logs = super().train_step(data)
        logs["sparsity"] = mask_sparsity(self)
        return logs


def check_prunable(model):
    """Raises unless `model` is a tf_keras model `prune` can take; warns when
    it is frozen (the pruned copy keeps the flags)."""
    binding.check_model(model)
    selection.check_prunable_model(model)
    if binding.frozen(model):
        warnings.warn(
            "prune: "
            + binding.frozen_message(
                model, "model", "the pruned copy would only move its masks when trained"
            ),
            UserWarning,
            stacklevel=3,
        )


def prune(model, target_sparsity, settings, *, layers, exclude, m_by_n, block_size):
    """`tfopt.prune` of tf_keras `model` with `structure="weights"`, its
    arguments checked: TFMOT's wrappers around the chosen layers, driven by
    one `PruningSchedule` of `settings` (`core.schedule.ScheduleSteps`'s
    arguments). Returns a `PrunedModel`."""
    copy = selection.copy_model(model)
    selected = selection.select(copy, layers, exclude)
    structured = [
        layer
        for layer in selected
        if selection.fits_structure(layer, m_by_n, block_size)
    ]
    if m_by_n or block_size:
        unfit = [layer.name for layer in selected if layer not in structured]
        if unfit:
            what = (
                f"m_by_n={tuple(m_by_n)}"
                if m_by_n
                else (f"block_size={tuple(block_size)}")
            )
            warnings.warn(
                sparsity.unfit_message(what, unfit, target_sparsity),
                UserWarning,
                stacklevel=3,
            )
    selection.check_ceiling(
        [layer for layer in selected if layer not in structured or not m_by_n],
        target_sparsity,
        tuple(block_size) if block_size else None,
    )
    pruning_schedule = PruningSchedule(**settings)
    params = {id(layer): {} for layer in selected}
    for layer in structured:
        if m_by_n:
            params[id(layer)] = {"sparsity_m_by_n": tuple(m_by_n)}
        elif block_size:
            params[id(layer)] = {"block_size": tuple(block_size)}

    def wrap(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=wrap)
        if id(layer) in params:
            return PruneLowMagnitude(
                layer, pruning_schedule=pruning_schedule, **params[id(layer)]
            )
        return layer

    pruned = keras.models.clone_model(copy, clone_function=wrap)
    return PrunedModel(pruned.inputs, pruned.outputs, name=model.name)


def strip(model):
    """Removes pruning wrappers; the kernels keep the pruned zeros.

    Quantization wrappers are left in place. The result shares its layers
    with `model`.

    Args:
        model: A tf_keras model, pruned or not.

    Returns:
        A plain functional (or Sequential) tf_keras model.

    Raises:
        TypeError: If `model` is not a Sequential or functional tf_keras
            model.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10, keras_version=2)
    >>> type(tfopt.strip(tfopt.prune(model, 0.5))).__name__
    'Functional'
    """
    binding.check_model(model)
    selection.check_graph_model(
        model,
        "stripping",
        hint=(
            "tfopt.prune makes only functional models; strip_pruning cannot see "
            "wrappers a subclassed model holds."
        ),
    )
    apply_masks(model)
    stripped = tfmot.sparsity.strip_pruning(model)
    if isinstance(stripped, PrunedModel):
        stripped = keras.Model(stripped.inputs, stripped.outputs, name=model.name)
    return stripped


@keras.utils.register_keras_serializable(package="tfopt")
class ChannelPrunedModel(PrunedModel):
    """What `prune(..., structure="channels")` returns: a flat functional
    model whose `tfopt_channel_pruning` settings say how `PruningCallback`
    zeroes its channels; `tfopt.shrink` then removes them."""

    tfopt_channel_pruning = None  # the settings; set by prune or from_config

    def train_step(self, data):
        require_callback(self)
        return keras.Model.train_step(self, data)

    def get_config(self):
        config = super().get_config()
        config["tfopt_channel_pruning"] = dict(self.tfopt_channel_pruning)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        settings = config.pop("tfopt_channel_pruning")
        model = super().from_config(config, custom_objects)
        model.tfopt_channel_pruning = settings
        return model
