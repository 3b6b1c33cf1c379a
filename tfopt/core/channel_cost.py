"""What a channel-pruned model costs, and how many channels each group keeps
for a target, for both Kerases (on `core.channel_groups.Node`s): `cost`
counts parameters and multiply-accumulates per example of a flat graph, or
of the copy `shrink` would make; `final_counts` turns a target fraction of
channels, parameters or MACs into a channel count per group.
"""

import math
import warnings

import numpy as np

from tfopt.core import vocab
from tfopt.core.channel_groups import (
    DEPTHWISE,
    TRANSPOSED,
    blocked_message,
    describe,
    kept_channels,
    width,
)
from tfopt.core.sparsity import NOT_PARAMETERS


def _spatial(shape):
    """Positions per example of a layer output: the product of its middle
    dimensions (1 for a Dense on vectors)."""
    return int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1


def cost_terms(nodes, weights_of, input_shape_of):
    """What `cost` adds up, once per model: (source, layer, parameters,
    how they scale, positions per example) per weight. `weights_of(node)`
    are a node's variables (a pruning wrapper's included), and
    `input_shape_of(node)` its input shape (read for transposed
    convolutions, which run at their input's positions)."""
    terms = []
    for node in nodes:
        weights = weights_of(node)
        if not weights:
            continue
        source = node.sources[0] if node.sources else None
        shape = input_shape_of(node) if node.kind in TRANSPOSED else node.shape
        positions = _spatial(shape)
        for weight in weights:
            short = weight.name.split(":")[0].split("/")[-1]
            if short.endswith(NOT_PARAMETERS):
                continue
            if node.kind in DEPTHWISE and short in ("kernel", "depthwise_kernel"):
                scale = "out"
            elif short == "depthwise_kernel":  # a separable conv's
                scale = "in"
            elif short in ("kernel", "pointwise_kernel"):
                scale = "in*out"
            elif len(weight.shape) and weight.shape[-1] == width(node):
                scale = "out:params"  # per-channel: no multiplies
            else:
                scale = "none:params"
            terms.append(
                (source, node.name, float(np.prod(weight.shape)), scale, positions)
            )
    return terms


def cost(nodes, terms, kept=None):
    """(parameters, multiply-accumulates per example) of the graph of
    `nodes`, or of its shrunk copy when `kept` (see `kept_channels`) says
    which output channels each layer keeps. Biases and BatchNorm count as
    parameters, not MACs (they fold or are negligible)."""
    widths = {node.name: width(node) for node in nodes}

    def ratio(name):
        if kept is None or name is None or not widths.get(name):
            return 1.0
        return len(kept[name]) / widths[name]

    params = macs = 0.0
    for source, name, size, scale, positions in terms:
        share = {
            "in": ratio(source),
            "out": ratio(name),
            "in*out": ratio(source) * ratio(name),
            "none": 1.0,
        }[scale.split(":")[0]]
        params += size * share
        if not scale.endswith(":params"):
            macs += size * share * positions
    return int(round(params)), int(round(macs))


def kept_count(size, fraction, round_to):
    """Channels a group of `size` keeps when `fraction` is pruned."""
    # The epsilon keeps a product like 64 * 0.5 / 8 from rounding up a step.
    kept = math.ceil(size * (1.0 - fraction) / round_to - 1e-9) * round_to
    return int(min(size, max(kept, min(size, round_to), 1)))


def removed_share(nodes, terms, groups, prunable, measure, keep):
    """The fraction of the graph's `measure` that keeping `keep` removes."""
    if measure == "channels":
        return 1.0 - (
            sum(len(keep[i]) for i in prunable) / sum(groups[i].size for i in prunable)
        )
    index = vocab.PRUNE_MEASURES.index(measure) - 1
    kept = kept_channels(nodes, groups, keep)
    return 1.0 - (cost(nodes, terms, kept)[index] / cost(nodes, terms)[index])


def most_cut(nodes, terms, groups, prunable, measure, round_to):
    """The fraction of `measure` removed when every prunable group keeps
    only its minimum (`round_to`, or all of a smaller group)."""
    keep = {i: range(kept_count(groups[i].size, 1.0, round_to)) for i in prunable}
    return removed_share(nodes, terms, groups, prunable, measure, keep)


class _Cuts:
    """`removed_share` of `params`/`macs` for many choices of counts, fast:
    a layer's kept share is linear in its groups' counts, so one matrix
    product and one pass over the terms' arrays price a choice (DenseNet121:
    thousands of choices while `final_counts` searches)."""

    def __init__(self, nodes, terms, groups, prunable, measure):
        index = {node.name: i for i, node in enumerate(nodes)}
        self.widths = np.array([width(node) or 0 for node in nodes], float)
        self.sizes = np.array([groups[i].size for i in prunable], float)
        self.spread = np.zeros((len(prunable), len(nodes)))
        for row, i in enumerate(prunable):
            for name, positions in groups[i].channels.items():
                first = positions[0]
                self.spread[row, index[name]] = (
                    len(first) if isinstance(first, tuple) else 1
                )
        macs = measure == "macs"
        kept = [t for t in terms if not (macs and t[3].endswith(":params"))]
        self.source = np.array([index.get(t[0], -1) for t in kept], int)
        self.name = np.array([index[t[1]] for t in kept], int)
        self.weight = np.array([t[2] * (t[4] if macs else 1) for t in kept])
        kinds = ("in", "out", "in*out", "none")
        self.kind = np.array([kinds.index(t[3].split(":")[0]) for t in kept], int)
        self.prunable = prunable
        self.full = self.total(self.sizes)

    def total(self, counts):
        removed = (self.sizes - counts) @ self.spread
        ratio = np.where(self.widths > 0, 1 - removed / np.maximum(self.widths, 1), 1)
        src = np.where(self.source >= 0, ratio[self.source], 1.0)
        out = ratio[self.name]
        factor = np.choose(self.kind, [src, out, src * out, np.ones_like(out)])
        return float(self.weight @ factor)

    def __call__(self, counts):
        vector = np.array([counts[i] for i in self.prunable], float)
        return 1.0 - self.total(vector) / self.full


def counts_for(nodes, terms, groups, prunable, blocked, structure, target):
    """`final_counts` for `prune(..., structure=Channels(...))`, with the
    warnings a user reads at their `prune` call: when `round_to` puts the
    nearest cut more than 5 points past the target, and which layers
    (`blocked`, from `channel_groups.analyse`) hold channels back."""
    measure, _, round_to = structure
    args = (nodes, terms, groups, prunable, measure)
    counts = final_counts(*args, target, round_to, describe(blocked))
    reached = removed_share(*args, {i: range(n) for i, n in counts.items()})
    messages = [blocked_message(blocked)] if blocked else []
    if abs(reached - target) > 0.05:
        sizes = sorted({groups[i].size for i in prunable})
        messages.insert(
            0,
            f"prune: with round_to={round_to}, the nearest cut these channel "
            f"groups allow removes {reached:.0%} of the {measure} (target "
            f"{target:.0%}): groups of {sizes} channels keep multiples of "
            f"{round_to}. A smaller round_to comes closer.",
        )
    for message in messages:
        # The user's `tfopt.prune` call: front, Keras package, here.
        warnings.warn(message, UserWarning, stacklevel=4)
    return counts


def final_counts(
    nodes, terms, groups, prunable, measure, target, round_to, held_back=""
):
    """{group index: channels it keeps} once `target` of `measure` is cut.

    For `channels`, every group loses `target` of its channels. For `params`
    and `macs`, every group first loses the largest common fraction that
    stays short of the target; then the groups with the most channels left
    (relative to their size) shed `round_to` more, one at a time, until the
    target is met, so the cut lands just past it instead of a rounding step
    beyond. `held_back` names what keeps other channels from being pruned,
    for the message of an unreachable target.
    """
    if measure == "channels":
        return {i: kept_count(groups[i].size, target, round_to) for i in prunable}

    cut = _Cuts(nodes, terms, groups, prunable, measure)

    def at(fraction):
        return {i: kept_count(groups[i].size, fraction, round_to) for i in prunable}

    most = most_cut(nodes, terms, groups, prunable, measure, round_to)
    if most < target:
        why = f" Held back by: {held_back}." if held_back else ""
        raise ValueError(
            f"`target_sparsity` must be at most {math.floor(most * 1000) / 1000} "
            f"with measure={measure!r}: removing every prunable channel (down "
            f"to round_to={round_to} per group) cuts only that fraction of the "
            f"model's {measure}.{why} Received: target_sparsity={target!r}"
        )
    low, high = 0.0, 1.0  # cut(at(low)) < target <= cut(at(high))
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (low, middle) if cut(at(middle)) >= target else (middle, high)
    counts = at(low)
    while cut(counts) < target:
        # The next count down: a multiple of round_to, never below it.
        lower = {i: (counts[i] - 1) // round_to * round_to for i in prunable}
        shrinkable = [
            i for i in prunable if lower[i] >= max(1, min(round_to, groups[i].size))
        ]
        if not shrinkable:
            return at(high)
        cuts = {i: cut({**counts, i: lower[i]}) for i in shrinkable}
        enough = [i for i in shrinkable if cuts[i] >= target]
        if enough:  # the last step: the one that overshoots least
            best = min(enough, key=lambda i: (cuts[i], i))
            counts[best] = lower[best]
            break
        i = max(shrinkable, key=lambda i: (counts[i] / groups[i].size, -i))
        counts[i] = lower[i]
    return counts
