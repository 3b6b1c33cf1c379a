"""Removing channels: `remove_channels` makes the smaller copy of a flat
functional model that a choice of kept channels describes, and `shrink`
(`tfopt.shrink`) removes the channels channel pruning zeroed, checking the
copy computes what the model does.
"""

from tfopt.core.channel_shrink import RESIZED, check_same, plan, random_batch, sliced
from tfopt.keras2 import channels, graph
from tfopt.keras2.binding import keras


def remove_channels(model, groups, keep):
    """A smaller copy of the flat functional `model` without the channels
    that `keep` (see `kept_channels`) removes; its weights are the kept
    slices of `model`'s."""
    kept = channels.kept_channels(model, groups, keep)
    config = model.get_config()
    sources = graph.inbound(config)
    for entry in config["layers"]:
        name = entry["config"]["name"]
        key = RESIZED.get(entry["class_name"])
        if key is not None:
            entry["config"][key] = len(kept[name])
        elif entry["class_name"] == "Reshape":
            target = list(entry["config"]["target_shape"])
            target[-1] = len(kept[name])
            entry["config"]["target_shape"] = tuple(target)
    with graph.rebuilding(model):
        small = keras.Model.from_config(config)
    for layer in model.layers:
        if not layer.weights:
            continue
        source = sources[layer.name][0] if sources[layer.name] else None
        kept_in = kept[source] if source is not None else []
        small.get_layer(layer.name).set_weights(
            sliced(channels.node(layer), kept_in, kept[layer.name])
        )
    return small


def shrink(model, *, atol=1e-4):
    """A physically smaller copy of `model` without its zeroed channels.

    A channel goes when every weight that makes it is exactly zero (the
    kernel and bias slices of its Conv/Dense producers, its depthwise slices,
    BatchNorm scale and offset), as channel pruning leaves it; each group
    keeps at least one channel. The copy is checked
    against `model` on random inputs.

    Args:
        model: A built functional or Sequential tf_keras model.
        atol: Largest difference allowed between the outputs of the copy and
            of `model`, relative to the largest output. Defaults to `1e-4`.

    Returns:
        The smaller functional model (or a same-size copy when nothing is
        zeroed).

    Raises:
        TypeError: If `model` is not a tf_keras Sequential/functional model.
        RuntimeError: If the copy's outputs differ by more than `atol` (a
            zeroed channel that still mattered, e.g. after a sigmoid).

    Example:

    >>> import tfopt
    >>> model = tfopt.models.build("student_cnn", (8, 8, 1), 10, keras_version=2)
    >>> tfopt.shrink(model).count_params() == model.count_params()  # no zeros
    True
    """
    from tfopt.keras2 import binding, selection

    binding.check_model(model)
    selection.check_graph_model(model, "shrinking")
    flat = graph.flat(model)
    groups, keep = plan(channels.nodes(flat), channels.ends(flat))
    small = remove_channels(flat, groups, keep)
    x = random_batch(flat.input_shape)
    expected = flat(x, training=False).numpy()
    check_same(expected, small(x, training=False).numpy(), atol)
    return small
