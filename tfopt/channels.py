"""Channel pruning, for tf_keras models: `Channels`, the `structure` of
`tfopt.prune` that zeroes whole channel groups, and `shrink`, which removes
them (a smaller, faster model). Both are public in `tfopt.pruning` too.
Keras 3 models are refused with the wording of `tfopt.core.kerases`.
"""

from typing import NamedTuple

from tfopt.core import checks, vocab
from tfopt.core.kerases import require


class Channels(NamedTuple):
    """`structure=Channels(...)` of `prune`: zero whole channel groups, which
    `shrink` then removes (a smaller, faster model).

    Attributes:
        measure: What `target_sparsity` is a fraction of: `channels` (of each
            prunable group), `params` or `macs` (of the whole model).
        importance: How channels are ranked: `l2` (norm of the producers'
            output slices), `bn_gamma` (BatchNorm scales) or `taylor`
            (first-order, on `PruningCallback(data=...)` batches).
        round_to: Each group keeps a multiple of this many channels (or all
            of them; never none).
    """

    measure: str = "channels"
    importance: str = "l2"
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
        model: A built tf_keras Sequential or functional model.
        measure: One of `params`, `macs` or `channels` (see `Channels`).
            Defaults to `"macs"`.
        round_to: As `Channels.round_to`. Defaults to `8`.
        layers: The producers that may be pruned, as for `prune`. Defaults
            to `None` (all).
        exclude: Producers to leave alone, as for `prune`. Defaults to `None`.

    Returns:
        A float in [0, 1].

    Raises:
        TypeError: If `model` is not a tf_keras model (channel pruning is
            tf_keras only: `tfopt.core.kerases.CAPABILITIES`), or an
            argument has the wrong type.
        ValueError: For an unknown `measure`, `round_to` below 1, or no
            prunable channel group among the chosen layers.

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("student_cnn", (8, 8), 10)
    >>> round(tfopt.channels.max_cut(model, measure="channels", round_to=8), 2)
    0.67
    """
    require("channel_pruning", model, "tfopt.channels.max_cut")
    Channels(measure=measure, round_to=round_to).check()
    from tfopt.keras2 import channel_pruning

    return channel_pruning.max_cut(model, measure, round_to, layers, exclude)


def shrink(model, *, atol=1e-4):
    """Removes the channels that channel pruning zeroed: a physically
    smaller, faster copy of `model`, checked to compute what it does.

    Args:
        model: A tf_keras model pruned with `structure="channels"` (or any
            tf_keras model whose producers hold zeroed channels).
        atol: The largest difference allowed between the outputs of the
            copy and of `model` on a random batch. Defaults to `1e-4`.

    Returns:
        A plain functional tf_keras model.

    Raises:
        TypeError: If `model` is not a tf_keras model (`shrink` is tf_keras
            only: `tfopt.core.kerases.CAPABILITIES`).
    """
    require("shrink", model, "tfopt.shrink")
    from tfopt.keras2 import shrink as _shrink

    return _shrink.shrink(model, atol=atol)
