"""Channel pruning during `fit`: `tfopt.prune(..., structure="channels")`.

Whole channel groups (`channels.channel_groups`) are zeroed on the same
fractional schedule as magnitude pruning, so that `tfopt.shrink` can then
remove them for a model that runs faster. The pruned model is a
`ChannelPrunedModel`: a functional model whose config carries the settings,
so it saves, reloads and resumes like any model. `PruningCallback` drives
it through a `ChannelPruning` controller: at each update step of the
schedule it ranks every group's channels (BatchNorm scales, the L2 norm of
the producers' output slices, or a first-order Taylor score) and keeps the best,
one channel fewer at a time as the schedule goes, down to a final count
that is a multiple of `round_to` (never zero); after every batch it zeroes
the other channels' producer kernels and biases, depthwise slices and
BatchNorm scales and offsets, undoing what the optimizer step moved. A
zeroed channel is zero all the way to its consumers, so the shrunk model
computes what the masked one does.

The masks follow from the weights, which are the same on every replica, and
the step from the optimizer, so a resumed `fit` (or a reloaded model) goes
on where it was: the channels already zeroed rank last.
"""

import tensorflow as tf

from tfopt.core import channel_choice, channel_cost, channel_groups, taylor, vocab
from tfopt.keras2 import binding, channels, cost, graph, pruning, selection
from tfopt.keras2.binding import keras
from tfopt.keras2.schedule import PruningSchedule
from tfopt.keras2.shrink import remove_channels

MEASURES = vocab.PRUNE_MEASURES  # ("channels", "params", "macs")
IMPORTANCES = vocab.PRUNE_IMPORTANCES
# Read here too: the class of what `prune_channels` returns.
ChannelPrunedModel = pruning.ChannelPrunedModel
_L = keras.layers


def _prunable_groups(model, layers, exclude):
    """(a flat copy of `model`, its cost terms (`cost.Terms`), its channel
    groups, the indices of those the chosen layers produce, what holds the
    other channels back)."""
    flat = graph.flat(selection.copy_model(model))
    chosen = {layer.name for layer in selection.chosen_layers(flat, layers, exclude)}
    terms = cost.Terms(flat)
    groups, blocked = channel_groups.analyse(terms.nodes, channels.ends(flat))
    found = channel_groups.prunable(groups, blocked, chosen, layers, exclude)
    return flat, terms, groups, found, blocked


def blocking(model):
    """`tfopt.channels.blocking` of a tf_keras model."""
    binding.check_model(model)
    selection.check_graph_model(model, "channel pruning")
    return channels.analyse(graph.flat(model))[1]


def max_cut(model, measure, round_to, layers, exclude):
    """`tfopt.channels.max_cut` of a tf_keras model, its arguments checked."""
    _, terms, groups, prunable, _ = _prunable_groups(model, layers, exclude)
    return channel_cost.most_cut(
        terms.nodes, terms.terms, groups, prunable, measure, round_to
    )


def prune_channels(model, structure, settings, *, layers, exclude):
    """`tfopt.prune` of tf_keras `model` with `structure=Channels(...)` (or
    "channels"), its arguments checked: a `ChannelPrunedModel` whose config
    says which groups lose how many channels on the schedule of `settings`
    (`core.schedule.ScheduleSteps`'s arguments)."""
    target = settings["target_sparsity"]
    measure, importance, round_to = structure
    flat, terms, groups, prunable, blocked = _prunable_groups(model, layers, exclude)
    counts = channel_cost.counts_for(
        terms.nodes, terms.terms, groups, prunable, blocked, structure, target
    )
    pruned = pruning.ChannelPrunedModel(flat.inputs, flat.outputs, name=model.name)
    pruned.tfopt_channel_pruning = {
        "target": float(target),
        "measure": measure,
        "importance": importance,
        "round_to": round_to,
        # Each prunable group (by its producers) and the channels it ends with.
        "groups": [
            {"producers": list(groups[i].producers), "kept": counts[i]}
            for i in prunable
        ],
        # The schedule's "sparsity" is the progress towards those counts.
        "schedule": PruningSchedule(
            **{
                **settings,
                "target_sparsity": 1.0,
                "initial_sparsity": settings["initial_sparsity"] / target,
            }
        ).get_config()["config"],
    }
    return pruned


def controller(model):
    """The `ChannelPruning` of a `ChannelPrunedModel` (made once, kept on the
    model: it lives and goes with it)."""
    found = model.__dict__.get("_tfopt_channel_controller")
    if found is None:
        found = ChannelPruning(model)
        # Not through Keras's attribute tracking: the controller's variables
        # are bookkeeping, not weights of the model.
        object.__setattr__(model, "_tfopt_channel_controller", found)
    return found


class ChannelPruning:
    """Chooses and applies the channel masks of a `ChannelPrunedModel`."""

    def __init__(self, model):
        settings = model.tfopt_channel_pruning
        self.model = model
        self._terms = cost.cost_terms(model)
        self._nodes = {node.name: node for node in self._terms.nodes}
        self.groups, _ = channel_groups.analyse(self._terms.nodes, channels.ends(model))
        final = {tuple(g["producers"]): g["kept"] for g in settings["groups"]}
        self.prunable = [i for i, g in enumerate(self.groups) if g.producers in final]
        self.final = {i: final[self.groups[i].producers] for i in self.prunable}
        self.schedule = PruningSchedule(**settings["schedule"])
        self.importance, self.measure = settings["importance"], settings["measure"]
        self.keep = {i: list(range(g.size)) for i, g in enumerate(self.groups)}
        self._updated_at = None  # the schedule step of the masks in place
        # One mask variable per masked weight, and one traced function that
        # applies them all: called after every batch, it must cost far less
        # than the batch, and never retrace when the masks change.
        self._masks = {}
        with model.distribute_strategy.scope():
            for i in self.prunable:
                for name in self.groups[i].channels:
                    for variable, axis in channels.output_variables(
                        model.get_layer(name)
                    ):
                        shape = channel_choice.mask(variable, axis, []).shape
                        self._masks[id(variable)] = (
                            variable,
                            tf.Variable(
                                tf.ones(shape, variable.dtype),
                                trainable=False,
                                name="channel_mask",
                            ),
                            axis,
                        )
        pairs = [(v, m) for v, m, _ in self._masks.values()]

        @tf.function(autograph=False)
        def apply():
            for variable, mask in pairs:
                variable.assign(variable * mask)

        self._apply = apply
        self._gradient = None  # traced on the first Taylor update

    def _gradients(self, trained, data):
        """{id(variable): dL/dw} of the masked variables on the first
        batches of `data`."""
        variables = [v for v, _, _ in self._masks.values()]
        if self._gradient is None:
            # The hard-label loss: a Distiller's, or the compiled one (not
            # `compute_loss`, which would also move the loss metric).
            loss_fn = getattr(trained, "hard_loss", None) or (
                binding.per_example(trained.loss)
            )
            self._gradient = taylor.gradient_sums(
                self.model.distribute_strategy,
                lambda x: self.model(x, training=False),
                loss_fn,
                variables,
            )
        sums = self._gradient(data)
        return {id(v): total for v, total in zip(variables, sums, strict=True)}

    def update(self, progress, trained=None, data=None):
        """Chooses the channels each group keeps `progress` (0 to 1) of the
        way to its final count."""
        # The optimizer step since the last batch moved pruned weights off
        # zero (BatchNorm offsets, momentum): zero them again before ranking,
        # so that pruned channels stay pruned.
        self.apply()
        gradients = None
        if self.importance == "taylor" and progress > 0:
            gradients = self._gradients(trained, data)
        for i in self.prunable:
            group_scores = channel_choice.scores(
                self.groups[i],
                self._nodes,
                self.importance,
                lambda variable: variable.numpy(),
                gradients,
            )
            self.keep[i] = channel_choice.keep_at(
                self.groups[i], self.final[i], progress, group_scores
            )
        removed = channel_choice.removed(
            self.groups, self.prunable, self.keep, self._nodes
        )
        with self.model.distribute_strategy.scope():
            for key, (variable, mask, axis) in self._masks.items():
                values = channel_choice.mask(variable, axis, removed[key][2])
                mask.assign(tf.constant(values, mask.dtype))
        self.apply()

    def apply(self):
        """Zeroes the pruned channels' weights (on every replica)."""
        with self.model.distribute_strategy.scope():
            self._apply()

    def begin(self, trained, epochs, steps, data=None):
        """At the start of `fit`: resolves the schedule, restores the masks
        of the step the optimizer is at (a resumed or continued fit)."""
        if self.importance == "taylor" and data is None:
            raise ValueError(taylor.TAYLOR_NEEDS_DATA)
        if self.schedule.fractional:
            if not (epochs and steps):
                raise ValueError(
                    "Pruning `begin`/`end` are fractions of the run, but this fit "
                    "does not know its length (the data set has no known size): "
                    "pass steps_per_epoch to fit, or give prune() int steps."
                )
            self.schedule.resolve(epochs * steps)
        self._updated_at = None
        self.batch_end(trained, data)

    def batch_end(self, trained, data=None):
        """After a batch: the update of the last schedule step reached (the
        step counter can jump several steps with steps_per_execution), else
        the masks again."""
        last = self.schedule.last_update_at_or_before(
            int(trained.optimizer.iterations.numpy())
        )
        if last is not None and last != self._updated_at:
            self.update(self.schedule.sparsity_at(last), trained, data)
            self._updated_at = last
        else:
            self.apply()

    def sparsity(self):
        """The fraction of the model's `measure` removed now."""
        return cost.removed_share(
            self.model, self.groups, self.prunable, self.measure, self.keep, self._terms
        )

    def shrink(self):
        """The physically smaller model of the channels kept now."""
        return remove_channels(self.model, self.groups, self.keep)
