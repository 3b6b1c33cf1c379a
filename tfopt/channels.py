"""Channel pruning, for tf_keras and Keras 3 models: `Channels`, the
`structure` of `tfopt.prune` that zeroes whole channel groups, `shrink`,
which removes them (a smaller, faster model), and `max_cut`. `Channels` and
`shrink` are public in `tfopt.pruning` too. Each Keras's package does the
work (`channel_pruning`, `shrink`) on the groups of `tfopt.core.channel_groups`.
"""

import importlib
from typing import NamedTuple

from tfopt.core import checks, vocab
from tfopt.core.kerases import require


class Channels(NamedTuple):
    """`structure=Channels(...)` of `prune`: zero whole channel groups, which
    `shrink` then removes (a smaller, faster model).

    Attributes:
        measure: What `target_sparsity` is a fraction of: `channels` (of each
            prunable group), `params` or `macs` (of the whole model).
        importance: How channels are ranked: `bn_gamma` (BatchNorm scales;
            the L2 norm for a group without a scaled BatchNorm), `l2` (norm
            of the producers' output slices) or `taylor` (first-order, on
            `PruningCallback(data=...)` batches). Defaults to `bn_gamma`:
            behind a BatchNorm a kernel's norm says little (the BatchNorm
            rescales it), and the scales kept 0.5 to 2.3 points more
            accuracy on resnet_tiny and mobilenet_v2 (BUILD_NOTES).
        round_to: Each group keeps a multiple of this many channels (or all
            of them; never none).
    """

    measure: str = "channels"
    importance: str = "bn_gamma"
    round_to: int = 8

    def check(self):
        checks.check_choice(self.measure, "measure", vocab.PRUNE_MEASURES)
        checks.check_choice(self.importance, "importance", vocab.PRUNE_IMPORTANCES)
        checks.check_int(self.round_to, "round_to", minimum=1)
        return self


def max_cut(model, *, measure="macs", round_to=8, layers=None, exclude=None):
    """The largest `target_sparsity` channel pruning can reach on `model`:
    the fraction of `measure` removed when every prunable channel group
    keeps only `round_to` channels (all of a smaller group). One cost
    evaluation, so a job can refuse an unreachable target before training.

    Args:
        model: A built Sequential or functional model of either Keras.
        measure: One of `params`, `macs` or `channels` (see `Channels`).
            Defaults to `"macs"`.
        round_to: As `Channels.round_to`. Defaults to `8`.
        layers: The producers that may be pruned, as for `prune`. Defaults
            to `None` (all).
        exclude: Producers to leave alone, as for `prune`. Defaults to `None`.

    Returns:
        A float in [0, 1].

    Raises:
        TypeError: If `model` is not a Keras model, or an argument has the
            wrong type.
        ValueError: For an unknown `measure`, `round_to` below 1, or no
            prunable channel group among the chosen layers.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("student_cnn", (8, 8), 10)
    >>> round(tfopt.channels.max_cut(model, measure="channels", round_to=8), 2)
    0.67
    """
    keras = require("channel_pruning", model, "tfopt.channels.max_cut")
    Channels(measure=measure, round_to=round_to).check()
    channel_pruning = importlib.import_module(f"{keras.package}.channel_pruning")
    return channel_pruning.max_cut(model, measure, round_to, layers, exclude)


def blocking(model):
    """The layers that keep channels of `model` from being pruned, and why:
    channels that pass through a layer whose channels cannot be followed (a
    Lambda, a custom layer, a nested model, a grouped convolution), or that
    would not be zero where a convolution reads them (after a sigmoid, or
    `x + 3`). `prune` names them in a warning; this says it up front.

    Args:
        model: A built Sequential or functional model of either Keras.

    Returns:
        A dict {layer name: reason}, empty when nothing holds channels back.

    Raises:
        TypeError: If `model` is not a Keras model.

    Example:

    >>> import tfopt
    >>> tfopt.channels.blocking(tfopt.models.build("student_cnn", (8, 8), 10))
    {}
    """
    keras = require("channel_pruning", model, "tfopt.channels.blocking")
    channel_pruning = importlib.import_module(f"{keras.package}.channel_pruning")
    return channel_pruning.blocking(model)


def shrink(model, *, atol=1e-4):
    """Removes the channels that channel pruning zeroed: a physically
    smaller, faster copy of `model`, checked to compute what it does.

    Args:
        model: A model of either Keras pruned with `structure="channels"`
            (or any Sequential/functional model whose producers hold zeroed
            channels).
        atol: The largest difference allowed between the outputs of the
            copy and of `model` on a random batch. Defaults to `1e-4`.

    Returns:
        A plain functional model of `model`'s Keras.

    Raises:
        TypeError: If `model` is not a Sequential/functional Keras model.
        RuntimeError: If the copy's outputs differ by more than `atol`.
    """
    keras = require("shrink", model, "tfopt.shrink")
    return importlib.import_module(f"{keras.package}.shrink").shrink(model, atol=atol)
