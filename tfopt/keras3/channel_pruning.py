"""Channel pruning of Keras 3 models: `tfopt.prune(..., structure="channels")`,
side by side with `tfopt.keras2.channel_pruning` (tf_keras), on the same
channel groups (`tfopt.core.channel_groups`), costs and choices.

Every per-channel weight of a prunable group (producers' kernels and biases,
depthwise kernels, BatchNorm scales and offsets) gets a `PruningMask`
constraint, as magnitude pruning does, whose mask zeroes whole channels:
Keras 3 optimizers apply it after every update, on every replica. The
settings ride in the masks' configs (the producers' kernels also hold their
group's final channel count), so a `.keras` file knows how to go on.
`PruningCallback` drives a `ChannelMasks` controller: at each update of the
schedule it ranks every group's channels and keeps the best, one channel
fewer at a time, down to the final count. A BatchNorm's moving mean of a
pruned channel is zeroed with it (it has no constraint; with its input zero
it stays zero), so a `scale=False` BatchNorm's pruned channel is zero too.
"""

import keras
import numpy as np

from tfopt.core import channel_choice, channel_cost, channel_groups, selection, taylor
from tfopt.core.channel_groups import DEPTHWISE, PRODUCERS, SEPARABLE, analyse
from tfopt.keras3 import channels, distillation, fit, pruning


def _constraints(node):
    """(weight attribute, constraint argument) of `node`'s masked weights."""
    bias = [("bias", "bias_constraint")] if getattr(node.layer, "use_bias", 0) else []
    if node.kind in SEPARABLE:
        return [("pointwise_kernel", "pointwise_constraint")] + bias
    if node.kind in DEPTHWISE:
        return [("kernel", "depthwise_constraint")] + bias
    if node.kind in PRODUCERS:
        return [("kernel", "kernel_constraint")] + bias
    if node.kind == "BatchNormalization":
        return [
            (name, f"{name}_constraint")
            for name in ("gamma", "beta")
            if getattr(node.layer, name, None) is not None
        ]
    return []


def _prunable_groups(model, layers, exclude):
    """(the functional model, its nodes, cost terms, channel groups, the
    indices of those the chosen layers produce, what blocks the others)."""
    pruning.check_graph_model(model, "channel pruning")
    flat = channels.functional(model)
    terms = channels.Terms(flat)
    groups, blocked = analyse(terms.nodes, channels.ends(flat))
    producers = [n.layer for n in terms.nodes if n.kind in PRODUCERS]
    every = [n.layer for n in terms.nodes if hasattr(n.layer, "weights")]
    chosen = {
        layer.name
        for layer in selection.select(every, producers, layers, exclude, "tfopt")
    }
    found = channel_groups.prunable(groups, blocked, chosen, layers, exclude)
    return flat, terms, groups, found, blocked


def blocking(model):
    """`tfopt.channels.blocking` of a Keras 3 model."""
    pruning.check_graph_model(model, "channel pruning")
    return channels.analyse(channels.functional(model))[1]


def max_cut(model, measure, round_to, layers, exclude):
    """`tfopt.channels.max_cut` of a Keras 3 model, its arguments checked."""
    _, terms, groups, prunable, _ = _prunable_groups(model, layers, exclude)
    return channel_cost.most_cut(
        terms.nodes, terms.terms, groups, prunable, measure, round_to
    )


def prune_channels(model, structure, settings, *, layers, exclude):
    """`tfopt.prune` of Keras 3 `model` with `structure=Channels(...)`, its
    arguments checked: a functional copy whose prunable groups' weights
    carry channel `PruningMask`s."""
    target = settings["target_sparsity"]
    measure, importance, round_to = structure
    flat, terms, groups, prunable, blocked = _prunable_groups(model, layers, exclude)
    counts = channel_cost.counts_for(
        terms.nodes, terms.terms, groups, prunable, blocked, structure, target
    )
    by_name = {node.name: node for node in terms.nodes}
    common = {
        "target": float(target),
        "measure": measure,
        "importance": importance,
        "round_to": round_to,
    }
    masks = {}  # layer name -> {constraint argument: channel settings}
    for i in prunable:
        for name in groups[i].channels:
            for attr, key in _constraints(by_name[name]):
                final = name in groups[i].producers and "kernel" in attr
                masks.setdefault(name, {})[key] = (
                    {**common, "kept": counts[i]} if final else common
                )
    # The schedule's "sparsity" is the progress towards those counts.
    progress = {
        **settings,
        "target_sparsity": 1.0,
        "initial_sparsity": settings["initial_sparsity"] / target,
    }

    def add_masks(layer, config):
        for key, info in masks.get(layer.name, {}).items():
            config[key] = pruning.PruningMask(
                **progress, channels=info, inner=config.get(key)
            )
        return config

    return fit.enable_multi_worker(pruning.guard(pruning.rebuild(flat, add_masks)))


def _pruned_model(trainer, layer):
    """The Sequential/functional model of `trainer` (itself, or a model it
    holds, such as a Distiller's student) that holds `layer`."""
    candidates = [trainer] + [m for m in trainer.layers if isinstance(m, keras.Model)]
    for model in candidates:
        if pruning.graph_model(model):
            if any(inner is layer for inner in model.layers):
                return model
    raise ValueError(
        f"PruningCallback found channel masks in layer {layer.name!r} but no "
        f"Sequential or functional model of {trainer.name!r} holding it."
    )


class ChannelMasks:
    """Chooses the channel masks of a Keras 3 channel-pruned model (its
    `PruningMask`s with `channels` settings) as the schedule goes."""

    def __init__(self, trainer, found, data=None):
        # `trainer` is the pruned model, or a Distiller training it; `data`
        # the batches Taylor importance scores channels on.
        self.pruned = _pruned_model(trainer, found[0][0])
        flat = channels.functional(self.pruned)
        self.model = trainer
        self.data = data
        self._gradient = self._variables = None  # made on the first Taylor update
        self.terms = channels.Terms(flat)
        self.nodes = {node.name: node for node in self.terms.nodes}
        self.groups, _ = analyse(self.terms.nodes, channels.ends(flat))
        self.constraints = {id(v): c for _, v, c in found if c.channels}
        final = {
            layer.name: c.channels["kept"]
            for layer, _, c in found
            if c.channels and "kept" in c.channels
        }
        settings = next(iter(self.constraints.values())).channels
        self.importance, self.measure = settings["importance"], settings["measure"]
        self.prunable = [
            i
            for i, g in enumerate(self.groups)
            if all(name in final for name in g.producers)
        ]
        self.final = {i: final[self.groups[i].producers[0]] for i in self.prunable}
        self.keep = {i: list(range(g.size)) for i, g in enumerate(self.groups)}
        if self.importance == "taylor" and data is None:
            raise ValueError(taylor.TAYLOR_NEEDS_DATA)

    def _gradients(self):
        """{id(variable): dL/dw} of every per-channel variable of the
        prunable groups on the first batches of `data`."""
        if self._gradient is None:
            # Every per-channel variable of the prunable groups, in a fixed
            # order (the traced step returns its gradients in this order).
            self._variables = [
                variable
                for variable, _, _ in channel_choice.removed(
                    self.groups, self.prunable, self.keep, self.nodes
                ).values()
            ]
            # A Distiller's hard loss, or the compiled one, per example (not
            # `compute_loss`, which would also move the loss metric).
            loss_fn = getattr(self.model, "hard_loss", None) or (
                distillation.per_example(self.model.loss)
            )
            self._gradient = taylor.gradient_sums(
                self.model.distribute_strategy,
                lambda x: self.pruned(x, training=False),
                loss_fn,
                [variable.value for variable in self._variables],  # tf.Variables
            )
        sums = self._gradient(self.data)
        return {id(v): total for v, total in zip(self._variables, sums, strict=True)}

    def _values(self, variable):
        constraint = self.constraints.get(id(variable))
        if constraint is None:
            return np.asarray(variable.numpy())
        return pruning.values_of(variable, constraint)

    def update(self, progress):
        """Keeps each group's best channels, `progress` (0 to 1) of the way
        to its final count; zeroes the others (on every replica)."""
        gradients = None
        if self.importance == "taylor" and progress > 0:
            gradients = self._gradients()
        for i in self.prunable:
            group = self.groups[i]
            group_scores = channel_choice.scores(
                group, self.nodes, self.importance, self._values, gradients
            )
            self.keep[i] = channel_choice.keep_at(
                group, self.final[i], progress, group_scores
            )
        removed = channel_choice.removed(
            self.groups, self.prunable, self.keep, self.nodes
        )
        with self.model.distribute_strategy.scope():
            for key, (variable, axis, indices) in removed.items():
                mask = channel_choice.mask(variable, axis, indices)
                constraint = self.constraints.get(key)
                if constraint is not None:
                    constraint.mask.assign(np.broadcast_to(mask, variable.shape))
                variable.assign(np.asarray(variable.numpy()) * mask)

    def sparsity(self):
        """The fraction of the model's `measure` removed now."""
        return channel_cost.removed_share(
            self.terms.nodes,
            self.terms.terms,
            self.groups,
            self.prunable,
            self.measure,
            self.keep,
        )
