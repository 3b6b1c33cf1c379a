"""Magnitude pruning: TFMOT's engine without its traps.

`prune` copies the model and wraps the chosen layers in TFMOT's
`PruneLowMagnitude` with a schedule whose `begin`/`end` may be fractions of
the run. `PruningCallback` does what TFMOT's two callbacks do, resolves the
fractions when `fit` starts, reports `sparsity` in the logs and warns when a
schedule cannot finish. Training a pruned model without it fails in Python
before the first step. `strip` removes the wrappers; `sparsity_report`
counts zeros.
"""

import warnings

import tensorflow as tf

from tfopt import (
    _checks,
    _keras,
    _schedule,
    _selection,
    _steps,
    _summary,
    _tfmot,
    config,
)
from tfopt._keras import keras
from tfopt._schedule import PruningSchedule
from tfopt._sparsity import SparsityReport, check_m_by_n, sparsity_report

__all__ = ["PrunedModel", "PruneLowMagnitude", "PruningCallback",
           "PruningSchedule", "SparsityReport", "apply_masks", "prune",
           "sparsity_report", "strip", "wrappers"]

STRUCTURES = config.PRUNE_STRUCTURES
MISSING_CALLBACK = (
    "This model was pruned with tfopt.prune and is training without "
    "tfopt.PruningCallback(), which advances the pruning schedule and "
    "re-applies the masks. Add it: model.fit(..., "
    "callbacks=[tfopt.PruningCallback()])."
)


@keras.utils.register_keras_serializable(package="tfopt")
class PruneLowMagnitude(_tfmot.PruneLowMagnitudeBase):
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
        if isinstance(layer, _tfmot.PruneLowMagnitudeBase):
            found[id(layer)] = layer
        elif isinstance(layer, keras.Model):
            found.update((id(w), w) for w in wrappers(layer))
    return list(found.values())


def _channel_models(model):
    from tfopt import _channel_pruning  # it subclasses PrunedModel

    return _channel_pruning.channel_models(model)


def require_callback(model, trainer=None):
    """Raises `RuntimeError` if `model` has wrappers (or is channel-pruned)
    and PruningCallback did not prepare it. Models holding a pruned model (a
    Distiller) call it too, as `trainer`."""
    if any(not getattr(w, "_tfopt_ready", False)
           for w in wrappers(model) + _channel_models(model)):
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

    distribute_reduction_method = _keras.SYNCED_LOGS

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        _keras.check_compile(optimizer, loss, metrics)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # tf_keras does not restore the compile of a class that overrides
        # compile() (this one only checks its arguments first): do it here.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if isinstance(getattr(self, "optimizer", None),
                      keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)  # its variables

    def train_step(self, data):
        require_callback(self)
        logs = super().train_step(data)
        logs["sparsity"] = mask_sparsity(self)
        return logs


def prune(model, target_sparsity, *, schedule="polynomial", begin=0.0, end=0.75,
          initial_sparsity=0.0, frequency=None, power=3, layers=None,
          exclude=None, m_by_n=None, block_size=None, structure="weights",
          measure="channels", importance="l2", round_to=8):
    """Returns a pruned copy of `model` (the input is left untouched).

    Train the result with `PruningCallback`; `strip` it afterwards (or, for
    `structure="channels"`, `tfopt.shrink` it: a smaller, faster model).
    Call it inside `strategy.scope()` when training under a strategy.

    Args:
        model: A built Sequential or functional tf_keras model; nested
            functional models are pruned too.
        target_sparsity: Fraction of each pruned weight tensor set to zero by
            `end`, in (0, 1).
        schedule: One of `KINDS`: `polynomial` (sparsity rises from
            `initial_sparsity` as TFMOT's PolynomialDecay) or `constant`
            (TFMOT's ConstantSparsity). Defaults to `polynomial`.
        begin: When pruning starts: a float in [0, 1] is a fraction of the
            whole run (`epochs * steps_per_epoch` optimizer steps, counted
            from the first), an int an optimizer step. Defaults to `0.0`.
        end: When `target_sparsity` is reached, in the same unit as `begin`.
            The mask is always updated at `end`. Defaults to `0.75`.
        initial_sparsity: Sparsity at `begin` for `polynomial`, in
            [0, target_sparsity). Defaults to `0.0`.
        frequency: Steps between mask updates. Defaults to `None`: about 20
            updates between `begin` and `end`, at least one step apart.
        power: Exponent of the polynomial schedule. Defaults to `3`.
        layers: Layers to prune: names, regular expressions (full match) or
            layer classes. Defaults to `None`: every layer with weights TFMOT
            can prune.
        exclude: Layers to leave dense, in the same forms. Defaults to `None`.
        m_by_n: Structured sparsity, e.g. `(2, 4)`: m zeros in every n
            consecutive input-channel weights, on the layers whose input
            channels are a multiple of n; the others are pruned without
            structure to `target_sparsity`, and a warning names them.
            Defaults to `None`.
        block_size: `(height, width)` blocks pruned together, on layers with
            2-D kernels (Dense); others as above. Defaults to `None`.
        structure: `weights` (TFMOT's magnitude pruning: smaller files after
            compression, not faster ones) or `channels` (whole channel groups
            zeroed: a producer's output channels with its BatchNorm, the
            matching depthwise channels and consumer inputs, tied across an
            `Add`'s inputs and through concatenations; `tfopt.shrink` then
            removes them, and the model runs faster). Defaults to `weights`.
        measure: With `channels`, what `target_sparsity` is a fraction of:
            `channels` (of each prunable group), `params` or `macs` (of the
            whole model: every group loses the largest common fraction short
            of the target, then the fullest groups `round_to` more channels
            until it is met). Defaults to `channels`.
        importance: With `channels`, how channels are ranked: `l2` (norm of
            the producers' output slices), `bn_gamma` (BatchNorm scales) or
            `taylor` (first-order: (weight * gradient)^2 summed over the
            group, on batches given as `PruningCallback(data=...)`).
            Defaults to `l2`.
        round_to: With `channels`, each group keeps a multiple of this many
            channels (or all of them; never none): counts that are not
            multiples of 8 lose part of the speed-up. Defaults to `8`.

    Returns:
        A `PrunedModel` with TFMOT pruning wrappers around the chosen layers;
        for `channels`, a flat functional `ChannelPrunedModel` (nested models
        inlined) without wrappers.

    Raises:
        TypeError: If `model` is not a tf_keras Sequential/functional model
            (Keras 3 and subclassed models included) or an argument has the
            wrong type.
        ValueError: If a value is out of range, `begin`/`end` mix fractions
            and steps, a named layer does not exist, or `target_sparsity`
            would leave a pruned tensor empty.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10)
    >>> pruned = tfopt.prune(model, 0.8, end=1.0)
    >>> [w.layer.name for w in tfopt.pruning.wrappers(pruned)]
    ['conv2d', 'dense']
    """
    _keras.check_model(model)
    _selection.check_prunable_model(model)
    if _keras.frozen(model):
        # The copy keeps the flags: training it would move only the masks.
        warnings.warn("prune: " + _keras.frozen_message(
            model, "model", "the pruned copy would only move its masks when "
            "trained"), UserWarning, stacklevel=2)
    _steps.check_schedule(target_sparsity, schedule, begin, end,
                          initial_sparsity, frequency, power)
    _selection.check_specs(layers, "layers")
    _selection.check_specs(exclude, "exclude")
    _checks.check_choice(structure, "structure", STRUCTURES)
    if structure == "channels":
        if m_by_n or block_size:
            raise ValueError(
                "`m_by_n` and `block_size` apply to structure='weights'. "
                f"Received: m_by_n={m_by_n!r}, block_size={block_size!r}")
        from tfopt import _channel_pruning

        return _channel_pruning.prune_channels(
            model, target_sparsity, measure=measure, importance=importance,
            round_to=round_to, schedule=schedule, begin=begin, end=end,
            initial_sparsity=initial_sparsity, frequency=frequency, power=power,
            layers=layers, exclude=exclude)
    for arg, value, default in (("measure", measure, "channels"),
                                ("importance", importance, "l2"),
                                ("round_to", round_to, 8)):
        if value != default:
            raise ValueError(f"`{arg}` applies to structure='channels'. "
                             f"Received: {arg}={value!r}")
    check_m_by_n(m_by_n, "m_by_n", optional=True)
    if block_size is not None and not (
        isinstance(block_size, (tuple, list)) and len(block_size) == 2
        and all(_checks.is_int(v) and v >= 1 for v in block_size)
    ):
        raise ValueError(
            "`block_size` must be two ints >= 1, such as (1, 4), or None. "
            f"Received: block_size={block_size!r}")
    if m_by_n and block_size:
        raise ValueError(
            "`m_by_n` and `block_size` are exclusive. "
            f"Received: m_by_n={m_by_n!r}, block_size={block_size!r}")

    copy = _selection.copy_model(model)
    selected = _selection.select(copy, layers, exclude)
    structured = [layer for layer in selected
                  if _selection.fits_structure(layer, m_by_n, block_size)]
    if m_by_n or block_size:
        unfit = [layer.name for layer in selected if layer not in structured]
        if unfit:
            what = f"m_by_n={tuple(m_by_n)}" if m_by_n else (
                f"block_size={tuple(block_size)}")
            warnings.warn(
                f"{what} does not fit layers {unfit} (input channels must be a "
                "multiple of n for m_by_n, kernels 2-D for block_size); they are "
                f"pruned without structure to {target_sparsity}.",
                UserWarning, stacklevel=2)
    _selection.check_ceiling([layer for layer in selected if layer not in structured
                    or not m_by_n], target_sparsity,
                   tuple(block_size) if block_size else None)
    pruning_schedule = PruningSchedule(
        target_sparsity, schedule, begin, end, initial_sparsity, frequency, power)
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
            return PruneLowMagnitude(layer, pruning_schedule=pruning_schedule,
                                     **params[id(layer)])
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
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10)
    >>> type(tfopt.strip(tfopt.prune(model, 0.5))).__name__
    'Functional'
    """
    _keras.check_model(model)
    _selection.check_graph_model(model, "stripping", hint=(
        "tfopt.prune makes only functional models; strip_pruning cannot see "
        "wrappers a subclassed model holds."))
    apply_masks(model)
    stripped = _tfmot.sparsity.strip_pruning(model)
    if isinstance(stripped, PrunedModel):
        stripped = keras.Model(stripped.inputs, stripped.outputs, name=model.name)
    return stripped


class PruningCallback(keras.callbacks.Callback):
    """Drives pruning during `fit`: the one callback a pruned model needs.

    It does what TFMOT's `UpdatePruningStep` and `PruningSummaries` do, and:
    resolves fractional `begin`/`end` from `fit`'s epochs and steps, adds
    `sparsity` (the masked fraction of the pruned weights) to the epoch logs
    (progress bar, `History`, `CSVLogger`), and warns when an absolute
    schedule cannot reach its target within the run. It finds wrappers in
    nested models, and in the student of a `Distiller`.

    Args:
        log_dir: Where to write TensorBoard summaries of the sparsity of each
            pruned weight and of the target. Defaults to `None` (none).
        update_freq: When to write them: `epoch`, `batch`, or every N
            batches (an int). Defaults to `epoch`.
        data: Batches of `(x, y)` (a `tf.data.Dataset`) on which a model
            pruned with `structure="channels", importance="taylor"` scores
            its channels at each update (the first few batches; the
            gradients are averaged over replicas and workers, so every worker
            chooses the same channels). Defaults to `None`.

    Raises:
        TypeError, ValueError: For a bad `log_dir`, `update_freq` or `data`.

    Example:

    >>> import numpy as np, tfopt
    >>> model = tfopt.prune(tfopt.models.build("tfmot_mnist", (8, 8), 10), 0.5)
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.zeros((8, 8, 8)), np.zeros((8, 10)), verbose=0,
    ...                     callbacks=[tfopt.PruningCallback()])
    >>> round(history.history["sparsity"][-1], 2)
    0.5
    """

    def __init__(self, log_dir=None, update_freq="epoch", data=None):
        super().__init__()
        if data is not None and not isinstance(data, tf.data.Dataset):
            raise TypeError("`data` must be a tf.data.Dataset of (x, y) batches or "
                            f"None. Received: data={data!r}")
        self.data = data
        self._channels = []
        _checks.check_callback_output(log_dir, update_freq)
        self.log_dir = log_dir
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self._wrappers = []
        self._writer = None

    def _schedules(self):
        unique = {id(w.pruning_schedule): w.pruning_schedule for w in self._wrappers}
        return [s for s in unique.values() if isinstance(s, _schedule.PruningSchedule)]

    def on_train_begin(self, logs=None):
        from tfopt import _channel_pruning

        self._wrappers = wrappers(self.model)
        trained = getattr(self.model, "student", self.model)
        if _keras.frozen(trained):
            warnings.warn("PruningCallback: " + _keras.frozen_message(
                trained, "model", "this fit only moves the pruning masks"),
                UserWarning, stacklevel=2)
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._channels = []
        for model in _channel_pruning.channel_models(self.model):
            controller = _channel_pruning.controller(model)
            controller.begin(self.model, epochs, steps, self.data)
            model._tfopt_ready = True
            self._channels.append(controller)
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        if not self._wrappers:
            if not self._channels:
                warnings.warn("PruningCallback found no pruned model to drive "
                              "(no pruning wrappers, no channel-pruned model); it "
                              "does nothing.", UserWarning, stacklevel=2)
            return
        for wrapper in self._wrappers:
            if int(wrapper.pruning_step.numpy()) == -1:
                wrapper.pruning_step.assign(0)
        start = int(self._wrappers[0].pruning_step.numpy())
        total = epochs * steps if epochs and steps else None
        changed = False
        for schedule in self._schedules():
            if schedule.fractional:
                if total is None:
                    raise ValueError(_steps.UNKNOWN_LENGTH)
                changed |= schedule.resolve(total)
            elif total is not None:
                self._warn_if_unreachable(schedule, start, start + epochs * steps
                                          if start >= total else total)
        for wrapper in self._wrappers:
            wrapper._tfopt_ready = True
        if changed and getattr(self.model, "train_function", None) is not None:
            # The schedule's steps are constants of the traced step: retrace.
            self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        # Only this callback keeps pruned channels at zero: a later fit
        # without it must fail as a first one does, not let them grow back.
        for controller in self._channels:
            controller.model._tfopt_ready = False
        if self._channels:
            self.model.train_function = None

    def _warn_if_unreachable(self, schedule, start, last):
        message = schedule.unreachable_warning(start, last)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)

    def _write(self):
        step = int(self._wrappers[0].pruning_step.numpy())
        values = {"pruning/sparsity": mask_sparsity(self.model)}
        for schedule in self._schedules():
            if schedule.steps:
                values["pruning/target_sparsity"] = schedule.sparsity_at(step)
        for wrapper in self._wrappers:
            for weight, mask, _ in wrapper.pruning_vars:
                values[f"pruning/{weight.name.split(':')[0]}"] = (
                    1.0 - tf.reduce_mean(tf.cast(mask, tf.float32)))
        _summary.write_scalars(self._writer, step, values)

    def on_train_batch_end(self, batch, logs=None):
        for controller in self._channels:
            controller.batch_end(self.model, self.data)
        if (self._writer is not None and self.update_freq != "epoch"
                and (batch + 1) % self.update_freq == 0):
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self._channels:
            sparsity = float(self._channels[0].sparsity())
            if logs is not None:
                logs["sparsity"] = sparsity
            if self._writer is not None:
                step = int(self.model.optimizer.iterations.numpy())
                _summary.write_scalars(self._writer, step,
                                       {"pruning/channel_sparsity": sparsity})
        if not self._wrappers:
            return
        # The last optimizer step of the epoch may have moved pruned weights
        # off zero; TFMOT's UpdatePruningStep re-masks them here too.
        apply_masks(self.model)
        if logs is not None:
            logs["sparsity"] = float(mask_sparsity(self.model))
        if self._writer is not None and self.update_freq == "epoch":
            self._write()
