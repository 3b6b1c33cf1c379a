"""Quantization-aware training of Keras 3 models, side by side with
`tfopt.keras2.quantization` (tf_keras, over TFMOT): tfopt's own, from
Keras 3's pieces (`tfopt.keras3.quantizers`).

`quantize` copies a Sequential or functional model through
`keras.models.clone_model` (nested models quantized inside), and gives each
tensor what TFLite's int8 kernels will do to it:

- Conv1D/Conv2D/DepthwiseConv2D/Dense become `QuantizedLayer`s: per-channel
  int8 kernels, a BatchNormalization that only they feed folded in, a
  ReLU/ReLU6 that only they feed fused; a BatchNormalization over an image
  that follows no such layer becomes a 1x1 depthwise convolution (one int8
  op, as the converter can run it);
- every other op with an int8 kernel of its own output scale (merges,
  activations, global average pooling, `Rescaling`, arithmetic of the
  functional API, ...) gets a learned `QuantizeRange` after it; sigmoid,
  softmax and tanh the fixed range of TFLite's kernel; swish is split into
  its sigmoid (fixed range) and product, as the file computes it;
- ops TFLite runs in the scale of their input (pooling by max or average,
  padding, reshaping, dropout, concatenation's inputs) get nothing;
- a model's float inputs get one range each (integer inputs, an
  `Embedding`'s token ids, stay integers);
- layers TFLite has no int8 kernel for stay float with a range after them,
  and are named with the reason in `tfopt_float_reasons`.
"""

import warnings

import keras
import numpy as np

from tfopt.core import checks
from tfopt.core import selection as _selection
from tfopt.keras3 import fit, graph, int8, pruning, quantizers
from tfopt.keras3.quantizers import (
    FIXED_RANGES,
    FUSED,
    QuantizedLayer,
    QuantizeRange,
)


class _Builder:
    """The state of one `quantize`: the plans, the names used, what stays float."""

    def __init__(self, chosen, preserve_sparsity):
        self.chosen = chosen
        self.sparse = preserve_sparsity
        self.names = set()
        self.after = {}  # id(new layer) -> what follows its call
        self.before = {}  # id(new layer) -> what precedes it (on its first input)
        self.copies = []  # (new layer, original layer, folded batch norm)
        self.floats = {}  # name -> why
        self.input_ranges = {}
        self.replacements = set()  # ids of layers that replace another kind
        self.shared = {}  # range owner name -> (group, site): graph.shared_ranges
        self.group_ranges = {}  # group -> its QuantizeRange

    def unique(self, name):
        candidate, count = name, 1
        while candidate in self.names:
            count += 1
            candidate = f"{name}_{count}"
        self.names.add(candidate)
        return candidate

    def range(self, tensor, name, fixed=None):
        if fixed is None and name in self.shared:
            group, site = self.shared[name]
            if group not in self.group_ranges:
                sites = sum(1 for g, _ in self.shared.values() if g == group)
                self.group_ranges[group] = QuantizeRange(
                    sites=sites, name=self.unique(f"{group}_shared_range")
                )
            return self.group_ranges[group](tensor, site=site)
        return QuantizeRange(fixed=fixed, name=self.unique(f"{name}_range"))(tensor)

    def activation(self, tensor, name, activation):
        """The ops and ranges of `activation` after `tensor`, as TFLite runs it."""
        if activation in (None, "linear"):
            return tensor
        if activation in ("swish", "silu"):
            gate = keras.layers.Activation(
                "sigmoid", name=self.unique(f"{name}_sigmoid")
            )
            gate = self.range(gate(tensor), f"{name}_sigmoid", FIXED_RANGES["sigmoid"])
            product = keras.layers.Multiply(name=self.unique(f"{name}_swish"))
            return self.range(product([tensor, gate]), name)
        if activation == "hard_sigmoid":
            # relu6(x + 3) / 6: TFLite has no kernel for the whole, so the
            # sum (its ReLU6 fused) gets a range of its own.
            shifted = keras.layers.ReLU(6.0, name=self.unique(f"{name}_relu6"))
            shifted = self.range(shifted(tensor + 3.0), f"{name}_relu6")
            return self.range(shifted * (1 / 6), name)
        layer = keras.layers.Activation(
            activation, name=self.unique(f"{name}_{activation}")
        )
        return self.range(layer(tensor), name, FIXED_RANGES.get(activation))

    def clone(self, layer, plans, absorbed):
        if isinstance(layer, keras.Model):
            return layer  # quantized inside by `call`
        kind, name = type(layer).__name__, layer.name
        if not isinstance(layer, keras.layers.Layer):
            # A stateless keras.ops operation of the functional API (x + 3.0):
            # the same object serves the copy.
            return self.classified(layer, layer, kind, name)
        self.names.add(name)
        if name in absorbed:
            return self.replacing(keras.layers.Identity(name=name))
        if name in plans:
            norm, relu = plans[name]
            config = {**layer.get_config(), "activation": "linear"}
            own = graph.activation_name(layer)
            source, depthwise = layer, None
            if kind == int8.SEPARABLE:
                config, source, depthwise = self.separable(layer, config)
            elif config.get("groups", 1) != 1:
                config, source = int8.as_depthwise_conv(layer, config)
            else:
                config = keras.layers.serialize(layer.__class__.from_config(config))
            new = QuantizedLayer(
                config,
                None if norm is None else keras.layers.serialize(norm),
                relu or "linear",
                self.sparse,
                name=name,
            )
            self.copies.append((new, source, norm))
            if depthwise is not None:
                self.before[id(new)] = lambda t: self.range(
                    depthwise(t), depthwise.name
                )
            self.replacing(new)
            self.after[id(new)] = lambda t: self.activation(
                self.range(t, name), name, None if own in FUSED else own
            )
            return new
        new = layer.__class__.from_config(layer.get_config())
        self.copies.append((new, layer, None))
        if name not in self.chosen:
            return new
        affine = ("BatchNormalization", "Rescaling", "Normalization", "LayerScale")
        image = kind in affine and len(layer.input.shape) == 4
        if kind == "BatchNormalization" and image:
            return self.as_depthwise(layer, np.float32(1), None, layer)
        if image:
            replaced = self.affine(layer, kind)
            if replaced is not None:
                self.after[id(replaced)] = lambda t: self.range(t, name)
                return replaced
        return self.classified(layer, new, kind, name)

    def classified(self, layer, new, kind, name):
        """`new` (the copy of `layer`), with what follows it by its kind."""
        if kind in int8.SAME_SCALE:
            return new
        if kind == "Activation":
            activation = graph.activation_name(layer)
            if activation in int8.INT8_ACTIVATIONS:
                identity = self.replacing(keras.layers.Identity(name=name))
                self.after[id(identity)] = lambda t: self.activation(
                    t, name, activation
                )
                return identity
        elif kind == "CustomScaleLayer" and type(layer).__module__.endswith(
            "applications.inception_resnet_v2"
        ):
            # InceptionResNetV2's scaled residual sum, `x + r * scale`: a MUL
            # and an ADD in the file, each with its range.
            scale = float(layer.scale)
            identity = self.replacing(keras.layers.Identity(name=name))
            self.after[id(identity)] = lambda t: self.range(
                keras.layers.Add(name=self.unique(f"{name}_add"))(
                    [t[0], self.range(t[1] * scale, f"{name}_scaled")]
                ),
                name,
            )
            return identity
        elif kind in int8.OWN_RANGE:
            fixed = FIXED_RANGES["softmax"] if kind == "Softmax" else None
            self.after[id(new)] = lambda t: self.range(t, name, fixed)
            return new
        self.floats[name] = int8.why_float(layer)
        self.after[id(new)] = lambda t: self.range(t, name)
        return new

    def separable(self, layer, config):
        """A SeparableConv2D's pointwise half (its config and weights), and
        its depthwise half, a QuantizedLayer to call (and range) before it."""
        depthwise, kernel, pointwise, weights = int8.separable_halves(layer, config)
        depthwise = QuantizedLayer(
            keras.layers.serialize(depthwise),
            None,
            "linear",
            False,
            name=self.unique(f"{layer.name}_depthwise"),
        )
        self.copies.append((depthwise, kernel, None))
        return keras.layers.serialize(pointwise), weights, depthwise

    def as_depthwise(self, layer, kernel, bias, norm=None):
        """`layer`, an affine map of an image's channels, as a 1x1 depthwise
        convolution of fixed `kernel` and `bias` (a BatchNormalization
        `norm` folded in): one int8 DEPTHWISE_CONV_2D, where TFLite would
        otherwise run a MUL and an ADD with no range between them."""
        channels = layer.input.shape[-1]
        depthwise = keras.layers.DepthwiseConv2D(
            1, use_bias=bias is not None, trainable=False
        )
        depthwise.build((None, 1, 1, channels))
        new = QuantizedLayer(
            keras.layers.serialize(depthwise),
            None if norm is None else keras.layers.serialize(norm),
            "linear",
            False,
            name=layer.name,
        )
        weights = [np.broadcast_to(kernel, (channels,)).reshape(1, 1, channels, 1)]
        if bias is not None:
            weights.append(np.broadcast_to(bias, (channels,)))
        self.copies = [c for c in self.copies if c[1] is not layer]
        self.copies.append((new, weights, norm))
        return self.replacing(new)

    def affine(self, layer, kind):
        """A Rescaling or Normalization over an image's channels as a 1x1
        depthwise convolution, or None where it is not one."""
        found = int8.affine_map(layer, kind)
        return None if found is None else self.as_depthwise(layer, *found)

    def replacing(self, layer):
        self.replacements.add(id(layer))
        return layer

    def inputs_of(self, args, model_inputs):
        def ranged(value):
            if isinstance(value, (list, tuple)):
                return type(value)(ranged(v) for v in value)
            key = id(value)
            if key not in model_inputs or "int" in str(value.dtype):
                return value
            if key not in self.input_ranges:
                self.input_ranges[key] = self.range(value, model_inputs[key])
            return self.input_ranges[key]

        return tuple(ranged(a) for a in args)

    def rebuild(self, model, top):
        """A quantized copy of `model` (functional, or Sequential made so);
        the `top` model ranges its float inputs, a nested one leaves that
        to the graph it is called in."""
        if isinstance(model, keras.Sequential):
            model = keras.Model(model.inputs, model.outputs, name=model.name)
        layers = graph.Graph(model)
        plans, absorbed = int8.plans(model, layers, self.chosen)
        kinds = {op.name: type(op).__name__ for op in model.operations}
        self.shared.update(
            graph.shared_ranges(
                layers,
                joins=lambda name: kinds.get(name) == "Concatenate",
                through=lambda name: (
                    name in absorbed
                    or (
                        kinds.get(name) in int8.SAME_SCALE
                        and kinds[name] != "InputLayer"
                    )
                ),
            )
        )
        names = graph.output_names(model.get_config()["input_layers"])
        inputs = [
            keras.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
            for t, name in zip(model.inputs, names, strict=True)
        ]
        entry = {id(t): n for t, n in zip(inputs, names, strict=True)} if top else {}

        def call(layer, *args, **kwargs):
            args = self.inputs_of(args, entry)
            if isinstance(layer, keras.Model):
                # A nested model stays one, quantized inside (Keras 3 builds
                # no model from a graph's inner tensors, so it cannot be
                # inlined through clone_model).
                return self.rebuild(layer, False)(*args, **kwargs)
            if id(layer) in self.replacements:
                # The replaced layer's call arguments (a batch norm's
                # `mask=None`) mean nothing to its replacement.
                kwargs = {k: v for k, v in kwargs.items() if v is not None}
            before = self.before.get(id(layer))
            if before is not None:
                args = (before(args[0]), *args[1:])
            outputs = layer(*args, **kwargs)
            after = self.after.get(id(layer))
            return outputs if after is None else after(outputs)

        return keras.models.clone_model(
            model,
            # In the structure of `model.input`: one tensor, or a list.
            input_tensors=inputs
            if isinstance(model.input, (list, tuple))
            else inputs[0],
            clone_function=lambda layer: self.clone(layer, plans, absorbed),
            call_function=call,
        )

    def copy_weights(self):
        for new, old, norm in self.copies:
            if isinstance(new, QuantizedLayer):
                # `old`: the layer replaced, or the fixed weights of `as_depthwise`
                new.layer.set_weights(
                    old if isinstance(old, list) else old.get_weights()
                )
                if norm is not None:
                    new.batch_norm.set_weights(norm.get_weights())
                if new.sparse:
                    new.mask.assign(keras.ops.cast(new.layer.kernel != 0, "float32"))
            elif old.weights:
                new.set_weights(old.get_weights())


def quantize(model, layers, exclude, preserve_sparsity, skip_unsupported):
    """`tfopt.quantize` of a Keras 3 model (the front, `tfopt.quantization`,
    documents the arguments)."""
    pruning.check_graph_model(model, "quantization")
    _selection.check_specs(layers, "layers", keras.layers.Layer, "Keras 3")
    _selection.check_specs(exclude, "exclude", keras.layers.Layer, "Keras 3")
    checks.check_bool(preserve_sparsity, "preserve_sparsity")
    checks.check_bool(skip_unsupported, "skip_unsupported")
    if quantizers.quantization_aware(pruning.flat_layers(model)):
        raise ValueError(
            "`model` is already quantization-aware: fine-tune it, or export "
            f"it with tfopt.export_tflite. Received: model={model.name!r}"
        )
    if pruning.masked(model):
        hint = (
            ""
            if preserve_sparsity
            else " Pass preserve_sparsity=True to keep its zeros through QAT."
        )
        warnings.warn(
            "quantize: `model` is still pruned (PruningMask constraints); "
            f"stripping them (tfopt.strip) before QAT.{hint}",
            UserWarning,
            stacklevel=3,
        )
        model = pruning.strip(model)
    candidates = list(pruning.flat_layers(model))
    picked = (
        candidates if layers is None else _selection.pick(candidates, layers, "layers")
    )
    dropped = _selection.pick(candidates, exclude, "exclude") if exclude else []
    chosen = {layer.name for layer in picked if layer not in dropped}
    builder = _Builder(chosen, preserve_sparsity)
    qat = builder.rebuild(model, True)
    builder.copy_weights()
    reasons = builder.floats
    skipped = tuple(
        f"{layer.name} ({type(layer).__name__})"
        for layer in candidates
        if layer.name in reasons
    )
    if skipped and not skip_unsupported:
        raise ValueError(
            f"tfopt cannot quantize these layers: {list(skipped)}. Exclude them, "
            "or pass skip_unsupported=True to leave them in float. "
            "Received: skip_unsupported=False"
        )
    if skipped:
        why = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        warnings.warn(
            f"quantize: tfopt cannot quantize {list(skipped)}; they stay in float "
            f"({why}).",
            UserWarning,
            stacklevel=3,
        )
    qat.tfopt_skipped_layers = skipped
    qat.tfopt_float_reasons = reasons
    # Built in a multi-worker strategy's scope, it trains there only with
    # tfopt's fix of Keras 3.15's trainer (as a pruned model does).
    return fit.enable_multi_worker(qat)
