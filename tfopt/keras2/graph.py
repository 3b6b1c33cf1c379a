"""Inline nested functional models into one flat functional model.

TFMOT's `quantize_apply` refuses a model that contains another model
("Quantizing a keras Model inside another keras Model is not supported").
Flattening rewrites the outer model's config so that each nested model's
layers take its place, wired to the tensors the nested model was called on,
then rebuilds the model from that config and copies every weight over.
"""

import contextlib

from tf_keras.src.saving import serialization_lib

from tfopt.keras2.binding import keras


@contextlib.contextmanager
def lambdas_allowed():
    """Lets in-memory cloning re-create `Lambda` layers from their config.

    Safe mode guards against running code from untrusted files; a model that
    is already in this process runs its lambdas anyway, so cloning it (as
    `clone_model`, TFMOT's `quantize_apply` and `from_config` do) is safe.
    tf_keras only offers a global switch publicly, hence the private scope.
    """
    with serialization_lib.SafeModeScope(False):
        yield


def _custom_classes(model):
    """The classes of `model`'s layers that are not tf_keras's own layers
    (the user's, and those of tf_keras.applications such as ConvNeXt's
    LayerScale), nested models included, by the name their configs use."""
    found = {}
    for layer in model.layers:
        cls = type(layer)
        if not cls.__module__.startswith(
            ("tf_keras.src.layers.", "tf_keras.src.engine.")
        ):
            found[cls.__name__] = cls
        if isinstance(layer, keras.Model):
            found.update(_custom_classes(layer))
    return found


@contextlib.contextmanager
def rebuilding(model):
    """Lets in-memory cloning of `model` re-create its layers from their
    configs: its Lambdas (see `lambdas_allowed`) and its custom layer classes,
    registered or not (they are in this process, so their names resolve to
    them; without this an unregistered one fails to deserialize)."""
    with lambdas_allowed(), keras.utils.custom_object_scope(_custom_classes(model)):
        yield


def is_ref(item):
    return (
        isinstance(item, list)
        and len(item) in (3, 4)
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and isinstance(item[2], int)
        and (len(item) == 3 or isinstance(item[3], dict))
    )


def _map_refs(data, fn):
    """Applies `fn` to every tensor reference [layer, node, index(, kwargs)]."""
    if is_ref(data):
        new = list(fn(data[:3]))
        return new + [_map_refs(data[3], fn)] if len(data) == 4 else new
    if isinstance(data, list):
        return [_map_refs(item, fn) for item in data]
    if isinstance(data, dict):
        return {key: _map_refs(value, fn) for key, value in data.items()}
    return data


def _refs(data):
    found = []
    _map_refs(data, lambda ref: found.append(ref) or ref)
    return found


def _functional_config(model):
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    return model.get_config(), {layer.name: layer for layer in model.layers}


def _inline(model, taken):
    """Flat (entries, origin, inputs, outputs) of `model`'s graph.

    `taken` holds the layer names already used; clashing inner names get
    the nested model's name as a prefix.
    """
    config, by_name = _functional_config(model)
    entries, origin, redirect, renamed = [], {}, {}, {}

    def redirected(ref):
        if tuple(ref) in redirect:
            return redirect[tuple(ref)]
        return [renamed.get(ref[0], ref[0]), *ref[1:]]

    # A model's own layers keep their names unless an enclosing model took
    # them; layers of models nested deeper yield to both.
    for entry in config["layers"]:
        if not isinstance(by_name[entry["name"]], keras.Model):
            name = entry["name"]
            renamed[name] = f"{model.name}_{name}" if name in taken else name
    taken.update(renamed.values())
    for entry in config["layers"]:
        layer = by_name[entry["name"]]
        if not isinstance(layer, keras.Model):
            name = renamed[entry["name"]]
            entries.append(
                {
                    **entry,
                    "name": name,
                    "config": {**entry["config"], "name": name},
                    "inbound_nodes": _map_refs(entry["inbound_nodes"], redirected),
                }
            )
            origin[name] = layer
            continue
        if len(entry["inbound_nodes"]) != 1:
            raise ValueError(
                f"Nested model {layer.name!r} is called {len(entry['inbound_nodes'])} "
                "times; only models called once can be flattened."
            )
        sources = [redirected(ref) for ref in _refs(entry["inbound_nodes"][0])]
        inner, inner_origin, inner_inputs, inner_outputs = _inline(layer, taken)
        feed = {tuple(ref): src for ref, src in zip(inner_inputs, sources, strict=True)}
        for item in inner:
            if item["class_name"] == "InputLayer" and (
                [item["name"], 0, 0] in inner_inputs
            ):
                continue  # replaced by the outer tensors it was fed
            item["inbound_nodes"] = _map_refs(
                item["inbound_nodes"], lambda ref, feed=feed: feed.get(tuple(ref), ref)
            )
            entries.append(item)
            origin[item["name"]] = inner_origin[item["name"]]
        # A nested functional model's first node is its own construction, so
        # the outer graph refers to its call as node 1.
        for index, out in enumerate(inner_outputs):
            redirect[(entry["name"], 1, index)] = feed.get(tuple(out), out)
    inputs = [redirected(ref) for ref in config["input_layers"]]
    outputs = [redirected(ref) for ref in config["output_layers"]]
    return entries, origin, inputs, outputs


def inbound(config):
    """Layer name -> the names of the layers it reads, in order, from a
    functional `config` (refs of the config, not `layer.inbound_nodes`:
    TFMOT's clones share the layers they do not wrap)."""
    return {
        entry["config"]["name"]: [ref[0] for ref in _refs(entry["inbound_nodes"])]
        for entry in config["layers"]
    }


def has_nested_models(model):
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def flatten(model):
    """A flat copy of functional `model`, nested models inlined, same weights."""
    entries, origin, inputs, outputs = _inline(model, set())
    config = {
        "name": model.name,
        "layers": entries,
        "input_layers": inputs,
        "output_layers": outputs,
    }
    with rebuilding(model):
        flat = keras.Model.from_config(config)
    for layer in flat.layers:
        if layer.weights:
            layer.set_weights(origin[layer.name].get_weights())
    return flat


def flat(model):
    """`model` itself when it is already one flat functional model, else a
    flat copy (`flatten`)."""
    if isinstance(model, keras.Sequential) or has_nested_models(model):
        return flatten(model)
    return model
