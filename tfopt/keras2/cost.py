"""What a channel-pruned tf_keras model costs (`tfopt.core.channel_cost` on
the model's `Node`s): parameters and multiply-accumulates per example of a
flat functional model or of the copy `shrink` would make, and the channel
counts a target asks for.
"""

from tfopt.core import channel_cost
from tfopt.core.channel_cost import kept_count  # noqa: F401
from tfopt.keras2 import channels


class Terms:
    """A model's nodes and cost terms, computed once."""

    def __init__(self, model):
        self.nodes = channels.nodes(model)
        layers = {layer.name: layer for layer in model.layers}

        def input_shape(node):  # the outer layer's (a wrapper's inner is not called)
            shape = layers[node.name].input_shape
            return shape[0] if isinstance(shape, list) else shape

        self.terms = channel_cost.cost_terms(
            self.nodes, lambda node: layers[node.name].weights, input_shape
        )


def cost_terms(model):
    return Terms(model)


def cost(model, kept=None, terms=None):
    """(parameters, multiply-accumulates per example) of the flat functional
    `model`, or of its shrunk copy when `kept` says which output channels
    each layer keeps. `terms` are `cost_terms(model)`, when the caller has
    them."""
    terms = terms or Terms(model)
    return channel_cost.cost(terms.nodes, terms.terms, kept)


def removed_share(model, groups, prunable, measure, keep, terms=None):
    """The fraction of `model`'s `measure` that keeping `keep` removes."""
    terms = terms or Terms(model)
    return channel_cost.removed_share(
        terms.nodes, terms.terms, groups, prunable, measure, keep
    )
