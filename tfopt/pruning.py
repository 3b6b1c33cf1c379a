"""Pruning, for tf_keras and Keras 3 models alike.

The public names check their arguments here, once, then call the
implementation of the model's Keras: `tfopt.keras2.pruning` (TFMOT's
wrappers) and `tfopt.keras2.channel_pruning` for tf_keras,
`tfopt.keras3.pruning` (`PruningMask` constraints) for Keras 3. What a Keras
lacks is refused with the wording of `tfopt.core.kerases`.

Names that were public here before this module became Keras-neutral (the
tf_keras ones: `wrappers`, `PrunedModel`, `PruneLowMagnitude`,
`PruningSchedule`, `apply_masks`, `MISSING_CALLBACK`, ...) are still read
from `tfopt.keras2.pruning` for one release; import them from there.
"""

import importlib

from tfopt import legacy, models
from tfopt.callbacks import ByModel
from tfopt.channels import Channels, shrink
from tfopt.core import checks, selection, sparsity, vocab
from tfopt.core.kerases import Keras, refuse, supports
from tfopt.core.schedule import KINDS, check_schedule
from tfopt.core.sparsity import SparsityReport

__all__ = [
    "Channels",
    "KINDS",
    "PruningCallback",
    "STRUCTURES",
    "SparsityReport",
    "prune",
    "shrink",
    "sparsity_report",
    "strip",
]

STRUCTURES = vocab.PRUNE_STRUCTURES


_CHANNEL_DEFAULTS = Channels()


def _channels(structure, measure, importance, round_to, m_by_n, block_size):
    """The `Channels` that `structure` and the flat arguments ask for, or
    None for weight pruning."""
    flat = Channels(measure, importance, round_to)
    if isinstance(structure, Channels):
        if flat != _CHANNEL_DEFAULTS:
            raise ValueError(
                "`measure`, `importance` and `round_to` are set in "
                "`structure=Channels(...)`, not beside it. Received: "
                f"structure={structure!r}, measure={measure!r}, "
                f"importance={importance!r}, round_to={round_to!r}"
            )
        chosen = structure
    else:
        checks.check_choice(structure, "structure", STRUCTURES)
        if structure == "weights":
            for arg, value in zip(Channels._fields, flat, strict=True):
                if value != getattr(_CHANNEL_DEFAULTS, arg):
                    raise ValueError(
                        f"`{arg}` applies to structure='channels'. "
                        f"Received: {arg}={value!r}"
                    )
            return None
        chosen = flat
    if m_by_n or block_size:
        raise ValueError(
            "`m_by_n` and `block_size` apply to structure='weights'. "
            f"Received: m_by_n={m_by_n!r}, block_size={block_size!r}"
        )
    return chosen.check()


def _check_block_size(block_size, m_by_n):
    if block_size is not None and not (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(checks.is_int(v) and v >= 1 for v in block_size)
    ):
        raise ValueError(
            "`block_size` must be two ints >= 1, such as (1, 4), or None. "
            f"Received: block_size={block_size!r}"
        )
    if m_by_n and block_size:
        raise ValueError(
            "`m_by_n` and `block_size` are exclusive. "
            f"Received: m_by_n={m_by_n!r}, block_size={block_size!r}"
        )


def prune(
    model,
    target_sparsity,
    *,
    schedule="polynomial",
    begin=0.0,
    end=0.75,
    initial_sparsity=0.0,
    frequency=None,
    power=3,
    layers=None,
    exclude=None,
    m_by_n=None,
    block_size=None,
    structure="weights",
    measure="channels",
    importance="bn_gamma",
    round_to=8,
):
    """Returns a pruned copy of `model` (the input is left untouched).

    Train the result with `PruningCallback`; `strip` it afterwards (or, for
    channel pruning, `shrink` it: a smaller, faster model). Call it inside
    `strategy.scope()` when training under a strategy.

    Args:
        model: A built Sequential or functional model, tf_keras or Keras 3;
            nested functional models are pruned too.
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
            layer classes. Defaults to `None`: every layer with weights that
            can be pruned.
        exclude: Layers to leave dense, in the same forms. Defaults to `None`.
        m_by_n: Structured sparsity, e.g. `(2, 4)`: m zeros in every n
            consecutive input-channel weights, on the layers whose input
            channels are a multiple of n; the others are pruned without
            structure to `target_sparsity`, and a warning names them.
            Defaults to `None`.
        block_size: `(height, width)` blocks pruned together, ranked by
            their mean magnitude, on layers with 2-D kernels (Dense,
            Embedding) of more than one block along each axis; others as
            above. Defaults to `None`.
        structure: `weights` (magnitude pruning: smaller files after
            compression, not faster ones), or `channels` / a `Channels(...)`
            (whole channel groups zeroed: a producer's output channels with
            its BatchNorm, the matching depthwise channels and consumer
            inputs, tied across an `Add`'s inputs and through
            concatenations; `shrink` then removes them, and the model runs
            faster). Defaults to `weights`.
        measure: Shorthand for `Channels(measure=...)` with
            `structure="channels"`: `channels`, `params` or `macs` (every
            group loses the largest common fraction short of the target, then
            the fullest groups `round_to` more channels until it is met).
            Defaults to `channels`.
        importance: Shorthand for `Channels(importance=...)`: `bn_gamma`,
            `l2` or `taylor`. Defaults to `bn_gamma`.
        round_to: Shorthand for `Channels(round_to=...)`: counts that are not
            multiples of 8 lose part of the speed-up. Defaults to `8`.

    Returns:
        For tf_keras, a `PrunedModel` with TFMOT pruning wrappers around the
        chosen layers, or for channels a flat functional `ChannelPrunedModel`
        (nested models inlined) without wrappers; for Keras 3, a copy whose
        pruned weights carry `PruningMask` constraints.

    Raises:
        TypeError: If `model` is not a Sequential/functional model (subclassed
            models included) or an argument has the wrong type.
        ValueError: If a value is out of range, `begin`/`end` mix fractions
            and steps, a named layer does not exist, or `target_sparsity`
            would leave a pruned tensor empty.
        tfopt.core.kerases.NotAvailable: (a `TypeError` and a `ValueError`)
            If the model's Keras lacks what is asked.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10)
    >>> pruned = tfopt.prune(model, 0.8, end=1.0)
    >>> sum(row.pruned for row in tfopt.sparsity_report(pruned).rows)
    2
    """
    keras = Keras.of(model)
    if keras is Keras.KERAS3:
        from tfopt.keras3 import pruning as implementation
    else:
        from tfopt.keras2 import pruning as implementation
    implementation.check_prunable(model)
    check_schedule(
        target_sparsity, schedule, begin, end, initial_sparsity, frequency, power
    )
    for arg, specs in (("layers", layers), ("exclude", exclude)):
        selection.check_specs(
            specs, arg, models.keras_module(keras).layers.Layer, keras.label
        )
    channels = _channels(structure, measure, importance, round_to, m_by_n, block_size)
    if channels is not None and not supports(keras, "channel_pruning"):
        refuse("channel_pruning", keras, "structure", structure)
    if block_size is not None and not supports(keras, "block_pruning"):
        refuse("block_pruning", keras, "block_size", block_size)
    sparsity.check_m_by_n(m_by_n, "m_by_n", optional=True)
    _check_block_size(block_size, m_by_n)
    settings = dict(
        target_sparsity=target_sparsity,
        kind=schedule,
        begin=begin,
        end=end,
        initial_sparsity=initial_sparsity,
        frequency=frequency,
        power=power,
    )
    if channels is not None:
        if channels.importance == "taylor" and not supports(keras, "taylor"):
            refuse("taylor", keras, "importance", channels.importance)
        channel_pruning = importlib.import_module(f"{keras.package}.channel_pruning")
        return channel_pruning.prune_channels(
            model, channels, settings, layers=layers, exclude=exclude
        )
    return implementation.prune(
        model,
        target_sparsity,
        settings,
        layers=layers,
        exclude=exclude,
        m_by_n=m_by_n,
        block_size=block_size,
    )


def strip(model):
    """Removes pruning from `model`, keeping the zeros.

    For tf_keras, the pruning wrappers go (quantization wrappers stay; the
    result shares its layers with `model`); for Keras 3, the masks are
    applied and the `PruningMask` constraints replaced by what they wrapped.

    Args:
        model: A Sequential or functional model of either Keras, pruned or
            not.

    Returns:
        A plain functional (or Sequential) model of the same Keras.

    Raises:
        TypeError: If `model` is not a Sequential or functional model.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10)
    >>> type(tfopt.strip(tfopt.prune(model, 0.5))).__name__
    'Functional'
    """
    if Keras.of(model) is Keras.KERAS3:
        from tfopt.keras3 import pruning as implementation
    else:
        from tfopt.keras2 import pruning as implementation
    return implementation.strip(model)


def sparsity_report(model, *, m_by_n=(2, 4)):
    """Counts the zeros of every prunable weight of `model`, layer by layer.

    Works on a pruned model (counting the weights as masked) and on a
    stripped or never-pruned one. Nested models are walked.

    Args:
        model: A model of either Keras.
        m_by_n: The structured pattern to check, `(zeros, group)`. Defaults
            to `(2, 4)`.

    Returns:
        A `SparsityReport`: `.rows`, `.sparsity` (zeros over all counted
        weights), `str()` for a table, `.to_dict()` for JSON.

    Raises:
        TypeError: If `model` is not a Keras model.
        ValueError: If `m_by_n` is not two ints with 0 < m < n.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("tfmot_mnist", (28, 28, 1), 10)
    >>> round(tfopt.sparsity_report(model).sparsity, 2)
    0.0
    """
    if Keras.of(model) is Keras.KERAS3:
        from tfopt.keras3 import sparsity as implementation
    else:
        from tfopt.keras2 import sparsity as implementation
    return implementation.sparsity_report(model, m_by_n=m_by_n)


class PruningCallback(ByModel):
    """Drives pruning during `fit`: the one callback a pruned model needs.

    It advances the schedule (resolving fractional `begin`/`end` from
    `fit`'s epochs and steps), keeps the masks, adds `sparsity` (the masked
    fraction of the pruned weights) to the epoch logs, and warns when an
    absolute schedule cannot reach its target within the run. It finds
    pruned weights in nested models and in the student of a `Distiller`.
    It works for either Keras: the implementation of the model's Keras is
    made when `fit` starts.

    Args:
        log_dir: Where to write TensorBoard summaries of the sparsity of each
            pruned weight and of the target. Defaults to `None` (none).
        update_freq: When to write them: `epoch`, `batch`, or every N
            batches (an int). Defaults to `epoch`.
        data: Batches of `(x, y)` (a `tf.data.Dataset`) on which a model
            pruned with `Channels(importance="taylor")` scores its channels
            at each update (the first few batches; the gradients are averaged
            over replicas and workers, so every worker chooses the same
            channels). Defaults to `None`.

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
        checks.check_callback_output(log_dir, update_freq)
        if data is not None:
            import tensorflow as tf

            if not isinstance(data, tf.data.Dataset):
                raise TypeError(
                    "`data` must be a tf.data.Dataset of (x, y) "
                    f"batches or None. Received: data={data!r}"
                )
        super().__init__(log_dir=log_dir, update_freq=update_freq, data=data)

    @staticmethod
    def implementation(keras):
        if keras is Keras.KERAS3:
            from tfopt.keras3.callback import PruningCallback
        else:
            from tfopt.keras2.callback import PruningCallback
        return PruningCallback


# The tf_keras names this module held before it served both Kerases.
__getattr__ = legacy.moved(
    __name__,
    {
        **dict.fromkeys(
            (
                "MISSING_CALLBACK",
                "PruneLowMagnitude",
                "PrunedModel",
                "PruningSchedule",
                "apply_masks",
                "mask_sparsity",
                "require_callback",
                "wrappers",
            ),
            "tfopt.keras2.pruning",
        ),
        "check_m_by_n": "tfopt.core.sparsity",
    },
)
