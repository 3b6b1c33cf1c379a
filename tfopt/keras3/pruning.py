"""Magnitude pruning of Keras 3 models (the `keras` package), side by side
with `tfopt.keras2.pruning`, which does it for tf_keras through TFMOT.

TFMOT refuses Keras 3 objects, so this path is tfopt's own, and small: a
pruned weight gets a `PruningMask` constraint. Keras 3 optimizers apply a
variable's constraint after every update, so `w * mask` keeps the pruned
weights at zero inside the training step, on every replica, at the cost of
one multiply. `tfopt.keras3.callback.PruningCallback` moves the masks
along the schedule. The step count is
kept in each `PruningMask`'s config (a `.keras` file) and in the optimizer
(a checkpoint), whichever is further, so a reloaded model resumes where it
stopped: its masks are its zeros.

m:n structure is applied at each schedule update from `begin` and
recomputed from the magnitudes then (TFMOT fixes it at its first update).
Block pruning (`block_size`) zeroes whole blocks of a 2-D kernel, ranked by
their mean magnitude, as TFMOT's average-pooled block masks do.

The layer graph is left as it was (no wrapper layers), so the pruned model
saves, reloads and exports as the plain model does. QAT slots in the same
way: `rebuild` swaps layer configs of a Sequential or functional model,
nested ones included.
"""

import warnings
import weakref

import keras
import numpy as np

from tfopt.core import masks, selection, sparsity
from tfopt.core import schedule as _steps
from tfopt.core.sparsity import m_by_n_compliant
from tfopt.keras3 import fit

MISSING_CALLBACK = (
    "This Keras 3 model was pruned with tfopt.prune and is training without "
    "tfopt.PruningCallback(), which advances the pruning schedule and keeps "
    "the masks. Add it: model.fit(..., callbacks=[tfopt.PruningCallback()])."
)

# (layer classes, weight attribute, constraint argument): the weights TFMOT
# prunes in the same layers of tf_keras (the pointwise kernel only, for a
# separable convolution). A Keras 3 depthwise convolution holds its kernel
# as `kernel` (tf_keras: `depthwise_kernel`), constrained by
# `depthwise_constraint`.
_PRUNABLE = (
    (
        (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D),
        "pointwise_kernel",
        "pointwise_constraint",
    ),
    (
        (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D),
        "kernel",
        "depthwise_constraint",
    ),
    (
        (
            keras.layers.Dense,
            keras.layers.EinsumDense,
            keras.layers.Conv1D,
            keras.layers.Conv2D,
            keras.layers.Conv3D,
            keras.layers.Conv1DTranspose,
            keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose,
        ),
        "kernel",
        "kernel_constraint",
    ),
    ((keras.layers.Embedding,), "embeddings", "embeddings_constraint"),
)


def prunable(layer):
    """(weight attribute, constraint attribute) of `layer`'s prunable
    weight, or None."""
    for classes, weight, constraint in _PRUNABLE:
        if isinstance(layer, classes):
            return weight, constraint
    return None


@keras.saving.register_keras_serializable(package="tfopt")
class PruningMask(keras.constraints.Constraint):
    """The constraint of a pruned weight: `inner(w) * mask`.

    Its config holds the schedule (so a `.keras` file knows how to go on);
    the mask itself is a variable `PruningCallback` makes from the weight's
    zeros when `fit` starts, in the model's strategy scope.
    """

    def __init__(
        self,
        *schedule,
        m_by_n=None,
        block_size=None,
        inner=None,
        step=0,
        channels=None,
        **settings,
    ):
        # `schedule` and `settings`: the arguments of `ScheduleSteps`.
        self.schedule = _steps.ScheduleSteps(*schedule, **settings)
        # Training steps this weight has been pruned for. The optimizer counts
        # too, but a new one (a compile, a Distiller, a student-only file)
        # starts again at 0: the schedule must not.
        self.step = int(step)
        self.m_by_n = tuple(m_by_n) if m_by_n else None
        self.block_size = tuple(block_size) if block_size else None
        # Channel pruning's settings (`tfopt.keras3.channel_pruning`): its
        # masks zero whole channels and are chosen for the whole model.
        self.channels = channels
        self.inner = keras.constraints.get(inner)
        self.mask = None
        self.ready = False
        self.trainer = None  # a weak reference to the model whose fit runs it
        self.failed = False  # raised MISSING_CALLBACK while a step was traced

    def __call__(self, w):
        if not self.ready:
            # Raised while `fit` traces its step, before the first update.
            # Drop the half-traced step, or the next fit would reuse it.
            trainer = self.trainer() if self.trainer else None
            if trainer is not None:
                trainer.train_function = None
            self.failed = True
            raise RuntimeError(MISSING_CALLBACK)
        if self.inner is not None:
            w = self.inner(w)
        return keras.ops.multiply(w, keras.ops.cast(self.mask, w.dtype))

    def get_config(self):
        return {
            **self.schedule.settings(),
            "m_by_n": list(self.m_by_n) if self.m_by_n else None,
            "block_size": list(self.block_size) if self.block_size else None,
            "inner": keras.constraints.serialize(self.inner),
            "step": self.step,
            "channels": self.channels,
        }


def unprunable(layer):
    """Whether `layer` holds matrices (weights of rank 2 or more: attention,
    recurrent or custom layers) that tfopt does not prune."""
    return not prunable(layer) and any(
        len(w.shape) >= 2 for w in layer.trainable_weights
    )


def flat_layers(model):
    """Every layer of `model`, nested models flattened, inputs left out."""
    return selection.flat_layers(model, keras)


def masked(model):
    """(layer, variable, PruningMask) of every pruned weight of `model`."""
    return [
        (layer, variable, variable.constraint)
        for layer in flat_layers(model)
        for variable in layer.weights
        if isinstance(getattr(variable, "constraint", None), PruningMask)
    ]


def unmasked_config(config):
    """A layer's `config` with each `PruningMask` constraint replaced by the
    constraint it wraps."""
    for key, value in config.items():
        if key.endswith("_constraint") and isinstance(value, dict):
            if value.get("class_name") == "PruningMask":
                config[key] = value["config"]["inner"]
    return config


def guard(trainer, model=None):
    """Makes `trainer` (a pruned model, or a Distiller of a pruned `model`)
    refuse to train without PruningCallback, in Python, before the forward
    pass of its first step (eager or traced); returns `trainer`."""
    found = masked(model or trainer)
    for _, _, constraint in found:
        constraint.trainer = weakref.ref(trainer)
    if found and not getattr(trainer, "_tfopt_guarded", False):
        step = trainer.train_step
        pruned = model or trainer

        def guarded(data):
            if not all(c.ready for _, _, c in masked(pruned)):
                # Traced: drop the half-made step, or the next fit reuses it.
                trainer.train_function = None
                raise RuntimeError(MISSING_CALLBACK)
            return step(data)

        # `train_step` is Keras's documented override point; on the instance,
        # so only this model changes.
        trainer.train_step = guarded
        trainer._tfopt_guarded = True
    return trainer


def graph_model(model):
    """Whether `model` is Sequential or functional: a layer graph Keras can
    clone (a subclassed model hides its graph)."""
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def check_graph_model(model, action):
    if not graph_model(model):
        raise TypeError(
            f"`model` must be a Sequential or functional Keras 3 model for "
            f"{action}: a subclassed model ({type(model).__name__}) hides its "
            f"layer graph. Build it with the functional API. Received: "
            f"model={model!r}"
        )
    if not model.built:
        raise ValueError(
            f"`model` must be built (give it an `Input`) before {action}. "
            f"Received: model={model!r}"
        )


def rebuild(model, new_config):
    """A copy of Sequential/functional `model` (nested models too) whose
    layers are made from `new_config(layer, config)`, weights copied."""

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        config = new_config(layer, layer.get_config())
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def check_prunable(model):
    """Raises unless `model` is a Keras 3 model `prune` can take."""
    check_graph_model(model, "pruning")
    if masked(model):
        raise ValueError(
            "`model` is already pruned: train it with PruningCallback, or "
            f"tfopt.strip it first. Received: model={model.name!r}"
        )


def prune(
    model, target_sparsity, settings, *, layers, exclude, m_by_n, block_size=None
):
    """`tfopt.prune` of Keras 3 `model`, its arguments checked: a copy whose
    chosen weights carry `PruningMask` constraints of `settings`
    (`core.schedule.ScheduleSteps`'s arguments)."""
    all_layers = list(flat_layers(model))
    selected = selection.select(
        all_layers, [x for x in all_layers if prunable(x)], layers, exclude, "tfopt"
    )
    left = [f"{x.name} ({type(x).__name__})" for x in all_layers if unprunable(x)]
    if left and layers is None:
        warnings.warn(
            f"prune: these layers' weights stay dense: {left} (tfopt prunes the "
            "kernels of Dense, EinsumDense, convolutions and Embedding; attention, "
            "recurrent and custom layers are not pruned yet). sparsity_report "
            "counts their weights, so its overall sparsity is of the whole model.",
            UserWarning,
            stacklevel=3,
        )
    fits = {id(layer): _fits(layer, m_by_n, block_size) for layer in selected}
    for layer in selected:
        if m_by_n and fits[id(layer)]:
            continue  # m:n's share is fixed
        shape = getattr(layer, prunable(layer)[0]).shape
        # TFMOT keeps at least one weight (or block) of every pruned tensor.
        blocks = fits[id(layer)] and block_size and tuple(block_size) != (1, 1)
        count = int(np.prod(shape))
        if blocks:  # a 2-D kernel
            count = -(-shape[0] // block_size[0]) * -(-shape[1] // block_size[1])
        sparsity.check_ceiling(
            f"{layer.name}/{prunable(layer)[0]}",
            count,
            target_sparsity,
            "blocks" if blocks else "weights",
        )
    unfit = [layer.name for layer in selected if not fits[id(layer)]]
    if unfit:
        what = (
            f"m_by_n={tuple(m_by_n)}" if m_by_n else f"block_size={tuple(block_size)}"
        )
        warnings.warn(
            sparsity.unfit_message(what, unfit, target_sparsity),
            UserWarning,
            stacklevel=3,
        )

    def add_mask(layer, config):
        if id(layer) in fits:
            key = prunable(layer)[1]
            fit_ = fits[id(layer)]
            config[key] = PruningMask(
                **settings,
                m_by_n=m_by_n if fit_ else None,
                block_size=block_size if fit_ else None,
                inner=config.get(key),
            )
        return config

    return fit.enable_multi_worker(guard(rebuild(model, add_mask)))


def _fits(layer, m_by_n, block_size):
    """Whether `layer`'s pruned weight takes the structure asked for (True
    where none is): m:n needs input channels a multiple of n, blocks a 2-D
    kernel of more than one block each way (as on tf_keras)."""
    shape = getattr(layer, prunable(layer)[0]).shape
    if m_by_n:
        return m_by_n_compliant(np.zeros(shape), m_by_n) is not None
    if block_size:
        return sparsity.block_fits(shape, block_size)
    return True


def strip(model):
    """`tfopt.strip` for a Keras 3 model: the masks applied, the
    `PruningMask` constraints replaced by what they wrapped."""
    check_graph_model(model, "stripping")
    apply_masks(model)

    return rebuild(model, lambda layer, config: unmasked_config(config))


def values_of(variable, constraint):
    """`variable`'s values as its mask leaves them."""
    values = variable.numpy()
    if constraint.mask is not None:
        values = values * constraint.mask.numpy()
    return values


def apply_masks(model):
    """Zeroes the pruned weights of `model` as its masks say, on every
    replica (this runs in cross-replica context)."""
    with model.distribute_strategy.scope():
        for _, variable, constraint in masked(model):
            if constraint.mask is not None:
                variable.assign(values_of(variable, constraint))


def update_masks(model, found, step_update):
    """Sets the masks of `found` (from `masked`) to the schedule's sparsity
    at `step_update` (or m:n), ranking the weights by magnitude."""
    with model.distribute_strategy.scope():
        for _, variable, constraint in found:
            if constraint.channels:  # chosen per group, not per weight
                continue
            values = values_of(variable, constraint)
            if constraint.m_by_n:
                mask = masks.m_by_n(values, constraint.m_by_n)
            elif constraint.block_size:
                mask = masks.blocks(
                    values,
                    constraint.schedule.sparsity_at(step_update),
                    constraint.block_size,
                )
            else:
                mask = masks.magnitude(
                    values, constraint.schedule.sparsity_at(step_update)
                )
            constraint.mask.assign(mask)
            variable.assign(values * mask)


def mask_sparsity(found):
    """The fraction of the pruned weights masked to zero."""
    total = sum(int(np.prod(v.shape)) for _, v, _ in found)
    zeros = sum(
        int((c.mask.numpy() == 0).sum()) for _, _, c in found if c.mask is not None
    )
    return zeros / total if total else 0.0
