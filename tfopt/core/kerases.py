"""Which Keras: the one way tfopt's code names a Keras, and what each supports.

`Keras.of(obj)` tells a Keras 3 object (its class comes from the `keras`
package) from anything else, which goes the tf_keras way (wrong types
included, so the tf_keras checks word their errors). `CAPABILITIES` is the
one table of what each Keras can do; the public front, the main job's config
checks, the README's feature table and the contract tests all read it, and
`refusal` is the one wording of "not for this Keras yet".

Nothing here imports TensorFlow or a Keras (`tfopt.models.keras_module`
imports the one asked for), so a Keras 3 program never loads tf_keras or
TFMOT.
"""

import enum
from typing import NamedTuple


class Keras(enum.Enum):
    """A Keras tfopt works with; the value is the version number that
    configs (`keras_version`) and the main job's `--keras` flag use."""

    TF_KERAS = 2  # tf_keras, through TFMOT
    KERAS3 = 3  # the `keras` package, tfopt's own code

    @classmethod
    def of(cls, obj):
        """`KERAS3` for an object of a Keras 3 class, else `TF_KERAS`."""
        for klass in type(obj).__mro__:
            if klass.__module__.split(".", 1)[0] == "keras":
                return cls.KERAS3
        return cls.TF_KERAS

    @classmethod
    def from_version(cls, version):
        """The Keras of a version: 2, 3, "2", "3" or a release such as
        "3.15.0"; a saved config without one (None) is a tf_keras one."""
        if version is None:
            return cls.TF_KERAS
        major = str(version).split(".", 1)[0]
        return cls.KERAS3 if major == "3" else cls.TF_KERAS

    @property
    def label(self):
        return "Keras 3" if self is Keras.KERAS3 else "tf_keras"

    @property
    def package(self):
        """The tfopt package that implements this Keras."""
        return "tfopt.keras3" if self is Keras.KERAS3 else "tfopt.keras2"


BOTH = frozenset(Keras)
TF_KERAS_ONLY = frozenset({Keras.TF_KERAS})


class Capability(NamedTuple):
    """One thing tfopt does, and the Kerases it does it for."""

    name: str
    what: str  # what it is, as a noun phrase
    supported: frozenset
    instead: str = ""  # what a user of another Keras can do meanwhile


CAPABILITIES = {
    c.name: c
    for c in (
        Capability(
            "prune",
            "magnitude pruning (prune, strip, sparsity_report, PruningCallback)",
            BOTH,
        ),
        Capability("m_by_n", "m:n structured pruning", BOTH),
        Capability(
            "block_pruning",
            "block pruning (`block_size`)",
            BOTH,
        ),
        Capability("channel_pruning", "channel pruning (`structure='channels'`)", BOTH),
        Capability(
            "taylor",
            "Taylor channel importance (`importance='taylor'`, "
            "`PruningCallback(data=...)`)",
            BOTH,
        ),
        Capability("shrink", "removing pruned channels (shrink)", BOTH),
        Capability(
            "distill",
            "teacher-student distillation (Distiller, DistillationSchedule)",
            BOTH,
        ),
        Capability(
            "quantize",
            "quantization-aware training (quantize)",
            BOTH,
        ),
        Capability(
            "export_tflite", "TFLite export (float32, dynamic, float16, int8)", BOTH
        ),
        Capability("sparse_export", "sparse TFLite export (`sparse=True`)", BOTH),
        Capability(
            "export_saved_model",
            "SavedModel export (export_saved_model)",
            BOTH,
        ),
        Capability("load_model", "loading saved models (load_model)", BOTH),
        Capability("multi_worker", "training on several workers", BOTH),
    )
}


def supports(keras, capability):
    """Whether `keras` (a `Keras`) has `capability` (a `CAPABILITIES` name)."""
    return keras in CAPABILITIES[capability].supported


def missing(keras):
    """The capabilities `keras` lacks, in table order."""
    return [c for c in CAPABILITIES.values() if keras not in c.supported]


def refusal(capability, keras, subject, instead=None):
    """The one message for `subject` (what the user asked for, quoted as
    they wrote it) when `keras` lacks `capability`; `instead` replaces the
    table's advice (the main job names its flags)."""
    cap = CAPABILITIES[capability]
    instead = cap.instead if instead is None else instead
    others = " and ".join(k.label for k in Keras if k in cap.supported)
    text = (
        f"{subject} is not available for {keras.label} models yet "
        f"({cap.what} is {others} only)."
    )
    return f"{text} {instead}" if instead else text


class NotAvailable(TypeError, ValueError):
    """What a Keras lacks, asked of it: a `TypeError` where the model is the
    problem, a `ValueError` where an argument is, so callers catch it as
    either."""


def refuse(capability, keras, arg, value):
    """Raises `NotAvailable` for argument `arg=value`, which `keras` lacks."""
    subject = f"`{arg}`"
    raise NotAvailable(
        f"{refusal(capability, keras, subject)} Received: {arg}={value!r}"
    )


def require(capability, model, subject, arg="model"):
    """Raises `NotAvailable` (a `TypeError`) unless `model`'s Keras has
    `capability`; returns that Keras."""
    keras = Keras.of(model)
    if not supports(keras, capability):
        wanted = " or ".join(k.label for k in CAPABILITIES[capability].supported)
        raise NotAvailable(
            f"`{arg}` must be a {wanted} model: "
            f"{refusal(capability, keras, subject)} Received: {arg}={model!r}"
        )
    return keras
