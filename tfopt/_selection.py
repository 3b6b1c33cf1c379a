"""Which layers `tfopt.prune` wraps, and the checks on what it is given."""

import re

from tfopt import _checks, _tfmot
from tfopt._keras import keras


def flat_layers(model):
    """Every layer of `model`, nested models flattened, inputs left out."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def _matches(layer, spec):
    if isinstance(spec, type):
        return isinstance(layer, spec)
    return layer.name == spec or re.fullmatch(spec, layer.name) is not None


def check_specs(specs, arg):
    if specs is None:
        return
    if not isinstance(specs, (list, tuple)) or not all(
        isinstance(s, str)
        or (isinstance(s, type) and issubclass(s, keras.layers.Layer))
        for s in specs
    ):
        raise TypeError(
            f"`{arg}` must be a list of layer names, regular expressions or "
            f"tf_keras layer classes, or None. Received: {arg}={specs!r}"
        )
    for spec in specs:
        if isinstance(spec, str):
            try:
                re.compile(spec)
            except re.error as err:
                raise ValueError(
                    f"`{arg}` holds {spec!r}, which is neither a layer name nor "
                    f"a valid regular expression ({err}). Received: {arg}={specs!r}"
                ) from err


def _pick(all_layers, specs, arg):
    picked = []
    for spec in specs:
        hits = [layer for layer in all_layers if _matches(layer, spec)]
        if not hits:
            names = [layer.name for layer in all_layers]
            raise ValueError(
                f"`{arg}` names {getattr(spec, '__name__', spec)!r}, which matches "
                f"no layer of the model. Its layers: {names}. Received: {arg}={specs!r}"
            )
        picked += hits
    return picked


def select(model, layers, exclude):
    all_layers = list(flat_layers(model))
    prunable = [layer for layer in all_layers if _tfmot.prunable_weights(layer)]
    if layers is None:
        selected = prunable
    else:
        selected = [layer for layer in _pick(all_layers, layers, "layers")
                    if layer in prunable]
        named = [s for s in layers if isinstance(s, str)]
        for layer in all_layers:
            if layer.name in named and layer not in prunable:
                raise ValueError(
                    f"`layers` names {layer.name!r} ({type(layer).__name__}), which "
                    "has no weights TFMOT can prune. Received: "
                    f"layers={layers!r}"
                )
    dropped = _pick(all_layers, exclude, "exclude") if exclude else []
    selected = [layer for layer in dict.fromkeys(selected) if layer not in dropped]
    if not selected:
        raise ValueError(
            "`layers`/`exclude` leave no layer to prune. Prunable layers: "
            f"{[layer.name for layer in prunable]}. Received: layers={layers!r}, "
            f"exclude={exclude!r}"
        )
    return selected


def chosen_layers(model, layers, exclude):
    """The layers of flat `model` that `layers`/`exclude` pick (all by default)."""
    candidates = list(flat_layers(model))
    picked = candidates if layers is None else _pick(candidates, layers, "layers")
    dropped = _pick(candidates, exclude, "exclude") if exclude else []
    return [layer for layer in dict.fromkeys(picked) if layer not in dropped]


def fits_structure(layer, m_by_n, block_size):
    weights = _tfmot.prunable_weights(layer)
    if m_by_n:
        return all(w.shape.rank in (2, 4) and w.shape[-2] % m_by_n[1] == 0
                   for w in weights)
    if block_size:
        return all(w.shape.rank == 2 for w in weights)
    return True


def check_ceiling(selected, target_sparsity, block_size):
    # TFMOT keeps at least one weight (or block) of every pruned tensor, so a
    # small tensor cannot reach a target close to 1: refuse it up front.
    cells = block_size[0] * block_size[1] if block_size else 1
    for layer in selected:
        for weight in _tfmot.prunable_weights(layer):
            count = max(weight.shape.num_elements() // cells, 1)
            if target_sparsity > (count - 1) / count:
                raise ValueError(
                    "`target_sparsity` must leave at least one weight in every "
                    f"pruned tensor: {layer.name}/{weight.name.split('/')[-1]} "
                    f"has {count} {'blocks' if cells > 1 else 'weights'}, so it "
                    f"can be at most {(count - 1) / count:.4f} sparse. Exclude "
                    "that layer or lower the target. "
                    f"Received: target_sparsity={target_sparsity!r}"
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
            "it with the functional API.")
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
    return any(type(layer).__name__.startswith("Quantize")
               for layer in flat_layers(model))


def check_prunable_model(model):
    """Raises unless `model` can be pruned: a built graph model that holds no
    pruning or quantization wrappers."""
    check_graph_model(model, "pruning")
    if any(isinstance(layer, _tfmot.PruneLowMagnitudeBase)
           for layer in flat_layers(model)):
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


def check_steps(begin, end):
    for arg, value in (("begin", begin), ("end", end)):
        if _checks.is_int(value):
            if value < 0:
                raise ValueError(
                    f"`{arg}` must be >= 0 as a step. Received: {arg}={value!r}")
        elif isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{arg}` must be in [0, 1] as a fraction of the run. "
                    f"Received: {arg}={value!r}")
        else:
            raise TypeError(
                f"`{arg}` must be a float (fraction of the run) or an int "
                f"(optimizer step). Received: {arg}={value!r}")
    if type(begin) is not type(end):
        raise ValueError(
            "`begin` and `end` must both be fractions (floats) or both steps "
            f"(ints); write 0.0, not 0, for a fraction. Received: begin={begin!r}, "
            f"end={end!r}")
    if begin >= end:
        raise ValueError(
            f"`begin` must be before `end`. Received: begin={begin!r}, end={end!r}")
