"""What a channel-pruned model costs, and how many channels each group keeps
for a target: `cost` counts parameters and multiply-accumulates per example
of a flat functional model, or of the copy `shrink` would make; `final_counts`
turns a target fraction of channels, parameters or MACs into a channel count
per group.
"""

import math

import numpy as np

from tfopt.core import vocab
from tfopt.core.sparsity import NOT_PARAMETERS
from tfopt.keras2 import channels, graph
from tfopt.keras2.binding import keras

_L = keras.layers


def _spatial(shape):
    """Positions per example of a layer output: the product of its middle
    dimensions (1 for a Dense on vectors)."""
    if isinstance(shape, list):
        shape = shape[0]
    return int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1


def cost_terms(model):
    """What `cost` adds up, once per model: (source, layer, parameters,
    how they scale, positions per example) per weight."""
    sources = graph.inbound(model.get_config())
    terms = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a pruning/QAT wrapper's layer
        source = sources[layer.name][0] if sources[layer.name] else None
        positions = _spatial(
            layer.input_shape
            if isinstance(inner, (_L.Conv2DTranspose, _L.Conv3DTranspose))
            else layer.output_shape
        )
        for weight in layer.weights:
            short = weight.name.split(":")[0].split("/")[-1]
            if short.endswith(NOT_PARAMETERS):
                continue
            if isinstance(inner, _L.DepthwiseConv2D) and short == "depthwise_kernel":
                scale = "out"
            elif short == "depthwise_kernel":  # a separable conv's
                scale = "in"
            elif short in ("kernel", "pointwise_kernel"):
                scale = "in*out"
            elif len(weight.shape) and weight.shape[-1] == channels.width(layer):
                scale = "out:params"  # per-channel: no multiplies
            else:
                scale = "none:params"
            terms.append(
                (source, layer.name, float(np.prod(weight.shape)), scale, positions)
            )
    return terms


def cost(model, kept=None, terms=None):
    """(parameters, multiply-accumulates per example) of the flat functional
    `model`, or of its shrunk copy when `kept` (see `kept_channels`) says
    which output channels each layer keeps. Biases and BatchNorm count as
    parameters, not MACs (they fold or are negligible). `terms` are
    `cost_terms(model)`, when the caller has them."""
    widths = {layer.name: channels.width(layer) for layer in model.layers}

    def ratio(name):
        if kept is None or name is None or not widths.get(name):
            return 1.0
        return len(kept[name]) / widths[name]

    params = macs = 0.0
    for source, name, size, scale, positions in terms or cost_terms(model):
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


def removed_share(model, groups, prunable, measure, keep, terms=None):
    """The fraction of `model`'s `measure` that keeping `keep` removes."""
    if measure == "channels":
        return 1.0 - (
            sum(len(keep[i]) for i in prunable) / sum(groups[i].size for i in prunable)
        )
    index = vocab.PRUNE_MEASURES.index(measure) - 1
    terms = terms or cost_terms(model)
    kept = channels.kept_channels(model, groups, keep)
    return 1.0 - (cost(model, kept, terms)[index] / cost(model, terms=terms)[index])


def most_cut(model, groups, prunable, measure, round_to, terms=None):
    """The fraction of `measure` removed when every prunable group keeps
    only its minimum (`round_to`, or all of a smaller group)."""
    keep = {i: range(kept_count(groups[i].size, 1.0, round_to)) for i in prunable}
    return removed_share(model, groups, prunable, measure, keep, terms)


def final_counts(model, groups, prunable, measure, target, round_to):
    """{group index: channels it keeps} once `target` of `measure` is cut.

    For `channels`, every group loses `target` of its channels. For `params`
    and `macs`, every group first loses the largest common fraction that
    stays short of the target; then the groups with the most channels left
    (relative to their size) shed `round_to` more, one at a time, until the
    target is met, so the cut lands just past it instead of a rounding step
    beyond.
    """
    if measure == "channels":
        return {i: kept_count(groups[i].size, target, round_to) for i in prunable}
    terms = cost_terms(model)

    def cut(counts):
        return removed_share(
            model,
            groups,
            prunable,
            measure,
            {i: range(n) for i, n in counts.items()},
            terms,
        )

    def at(fraction):
        return {i: kept_count(groups[i].size, fraction, round_to) for i in prunable}

    most = most_cut(model, groups, prunable, measure, round_to, terms)
    if most < target:
        raise ValueError(
            f"`target_sparsity` must be at most {math.floor(most * 1000) / 1000} "
            f"with measure={measure!r}: removing every prunable channel (down "
            f"to round_to={round_to} per group) cuts only that fraction of the "
            f"model's {measure}. Received: target_sparsity={target!r}"
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
