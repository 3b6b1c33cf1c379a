"""Layer choices (`layers=`/`exclude=` of `tfopt.prune` and `quantize`):
names, regular expressions (full match) or layer classes, for tf_keras and
Keras 3 layers alike. Nothing here imports TensorFlow or a Keras."""

import re


def flat_layers(model, keras):
    """Every layer of `model` (a model of the Keras module `keras`), nested
    models flattened, inputs left out."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer, keras)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def matches(layer, spec):
    if isinstance(spec, type):
        return isinstance(layer, spec)
    return layer.name == spec or re.fullmatch(spec, layer.name) is not None


def check_specs(specs, arg, layer_class, keras_name):
    """Raises unless `specs` is None or a list of names, valid regular
    expressions or subclasses of `layer_class` (the `keras_name` layer)."""
    if specs is None:
        return
    if not isinstance(specs, (list, tuple)) or not all(
        isinstance(s, str) or (isinstance(s, type) and issubclass(s, layer_class))
        for s in specs
    ):
        raise TypeError(
            f"`{arg}` must be a list of layer names, regular expressions or "
            f"{keras_name} layer classes, or None. Received: {arg}={specs!r}"
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


def pick(all_layers, specs, arg):
    """The layers of `all_layers` each spec matches; raises for a spec that
    matches none, listing the layers there are."""
    picked = []
    for spec in specs:
        hits = [layer for layer in all_layers if matches(layer, spec)]
        if not hits:
            names = [layer.name for layer in all_layers]
            raise ValueError(
                f"`{arg}` names {getattr(spec, '__name__', spec)!r}, which matches "
                f"no layer of the model. Its layers: {names}. Received: {arg}={specs!r}"
            )
        picked += hits
    return picked


def select(all_layers, prunable, layers, exclude, what):
    """The `prunable` layers (of `all_layers`) that `layers`/`exclude` pick;
    a layer named in `layers` that is not prunable is refused (`what` says
    why a layer would not be)."""
    if layers is None:
        selected = prunable
    else:
        selected = [
            layer for layer in pick(all_layers, layers, "layers") if layer in prunable
        ]
        named = [s for s in layers if isinstance(s, str)]
        for layer in all_layers:
            if layer.name in named and layer not in prunable:
                raise ValueError(
                    f"`layers` names {layer.name!r} ({type(layer).__name__}), which "
                    f"has no weights {what} can prune. Received: layers={layers!r}"
                )
    dropped = pick(all_layers, exclude, "exclude") if exclude else []
    selected = [layer for layer in dict.fromkeys(selected) if layer not in dropped]
    if not selected:
        raise ValueError(
            "`layers`/`exclude` leave no layer to prune. Prunable layers: "
            f"{[layer.name for layer in prunable]}. Received: layers={layers!r}, "
            f"exclude={exclude!r}"
        )
    return selected
