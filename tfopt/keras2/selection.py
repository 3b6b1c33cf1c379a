"""Which layers `tfopt.prune` wraps, and the checks on what it is given."""

from tfopt.core import selection, sparsity
from tfopt.keras2 import tfmot
from tfopt.keras2.binding import keras


def flat_layers(model):
    """Every layer of `model`, nested models flattened, inputs left out."""
    return selection.flat_layers(model, keras)


def check_specs(specs, arg):
    selection.check_specs(specs, arg, keras.layers.Layer, "tf_keras")


def select(model, layers, exclude):
    all_layers = list(flat_layers(model))
    prunable = [layer for layer in all_layers if tfmot.prunable_weights(layer)]
    return selection.select(all_layers, prunable, layers, exclude, "TFMOT")


def chosen_layers(model, layers, exclude):
    """The layers of flat `model` that `layers`/`exclude` pick (all by default)."""
    candidates = list(flat_layers(model))
    picked = (
        candidates if layers is None else selection.pick(candidates, layers, "layers")
    )
    dropped = selection.pick(candidates, exclude, "exclude") if exclude else []
    return [layer for layer in dict.fromkeys(picked) if layer not in dropped]


def fits_structure(layer, m_by_n, block_size):
    weights = tfmot.prunable_weights(layer)
    if m_by_n:
        return all(
            w.shape.rank in (2, 4) and w.shape[-2] % m_by_n[1] == 0 for w in weights
        )
    if block_size:
        return all(sparsity.block_fits(w.shape, block_size) for w in weights)
    return True


def check_ceiling(selected, target_sparsity, block_size):
    # TFMOT keeps at least one weight (or block) of every pruned tensor, so a
    # small tensor cannot reach a target close to 1: refuse it up front.
    cells = block_size[0] * block_size[1] if block_size else 1
    for layer in selected:
        for weight in tfmot.prunable_weights(layer):
            count = max(weight.shape.num_elements() // cells, 1)
            sparsity.check_ceiling(
                f"{layer.name}/{weight.name.split('/')[-1]}",
                count,
                target_sparsity,
                "blocks" if cells > 1 else "weights",
            )


def copy_model(model):
    # clone_model shares nothing with the source, so the user's model is
    # never modified by training the pruned one.
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def check_graph_model(model, action="pruning", arg="model", hint=None):
    """Raises unless `model` is a built Sequential or functional model."""
    # TFMOT (and so tfopt) rewrites a model through its layer graph, which a
    # subclassed model does not expose; `_is_graph_network` is how TFMOT tells.
    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        hint = hint or (
            f"Either apply {action} to its layers (tfopt.keras layers inside it, "
            "each wrapped with the matching tfmot.*.keras layer API), or build "
            "it with the functional API."
        )
        raise TypeError(
            f"`{arg}` must be a Sequential or functional tf_keras model: a "
            f"subclassed model ({type(model).__name__}) hides its layer graph. "
            f"{hint} Received: {arg}={model!r}"
        )
    if not model.built:
        raise ValueError(
            f"`{arg}` must be built (give its first layer an input shape or "
            f"call it once) before {action}. Received: {arg}={model!r}"
        )


def is_quantized(model):
    return any(
        type(layer).__name__.startswith("Quantize") for layer in flat_layers(model)
    )


def check_prunable_model(model):
    """Raises unless `model` can be pruned: a built graph model that holds no
    pruning or quantization wrappers."""
    check_graph_model(model, "pruning")
    if any(
        isinstance(layer, tfmot.PruneLowMagnitudeBase) for layer in flat_layers(model)
    ):
        raise ValueError(
            "`model` is already pruned: train it with PruningCallback, or "
            f"tfopt.strip it first. Received: model={model.name!r}"
        )
    if is_quantized(model):
        raise ValueError(
            "`model` holds quantization wrappers: prune (and strip) before "
            "tfopt.quantize, whose preserve_sparsity=True keeps the zeros. "
            f"Received: model={model.name!r}"
        )
