"""What `--model`, `--teacher` and `--dataset` may name, parsed without
TensorFlow (so a script answers a malformed one at once).

A model is a reference name (`tfopt.models`), `applications:NAME` (a
`keras.applications` architecture), `module.path:function` (a builder the
user wrote, called as `function(input_shape, num_classes)`) or a path: a
`.keras`/`.h5` file or a SavedModel directory, on any TensorFlow file
system (`gs://...` included). A data set is a bundled or downloadable name,
`tfds:NAME`, `images:DIR`, `tfrecord:GLOB` or `module.path:function`.
"""

import os
import re
from typing import NamedTuple

from tfopt.job.fields import ConfigError

MODELS = ("tfmot_mnist", "teacher_cnn", "student_cnn", "resnet_tiny", "mobilenet_v2")
DATASETS = ("digits", "mnist5k", "mnist", "fashion_mnist", "cifar10")
MODEL_FORMS = (
    f"one of {', '.join(MODELS)}, applications:NAME, module.path:function, "
    "or a saved model (.keras, .h5 or a SavedModel directory)"
)
DATA_FORMS = (
    f"one of {', '.join(DATASETS)}, tfds:NAME, images:DIR, tfrecord:GLOB or "
    "module.path:function"
)
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


class Spec(NamedTuple):
    """A parsed `--model`/`--teacher`/`--dataset`: its kind and its value (a
    name, a `module:function`, a path or a glob)."""

    kind: str
    value: str

    @property
    def is_file(self):
        return self.kind == "file"


def _is_path(text):
    return "://" in text or "/" in text or text.endswith(MODEL_SUFFIXES)


def model(text, name="model"):
    """The `Spec` of a model: kind `reference`, `applications`, `function`
    or `file`. Raises `ConfigError` naming field `name`."""
    if text in MODELS:
        return Spec("reference", text)
    if text.startswith("applications:"):
        app = text[len("applications:") :]
        if not _IDENTIFIER.match(app):
            raise ConfigError(
                f"`{name}={text}` must name a keras.applications model, e.g. "
                "applications:MobileNetV2."
            )
        return Spec("applications", app)
    if _is_path(text):
        return Spec("file", text)
    if _FUNCTION.match(text):
        return Spec("function", text)
    if text and "." not in text and ":" not in text:
        # A bare name: a typo of a reference model or a local directory.
        return Spec("file", text)
    raise ConfigError(f"`{name}={text}` must be {MODEL_FORMS}.")


def dataset(text, name="dataset"):
    """The `Spec` of a data set: kind `named`, `tfds`, `images`, `tfrecord`
    or `function`. Raises `ConfigError` naming field `name`."""
    if text in DATASETS:
        return Spec("named", text)
    for kind in ("tfds", "images", "tfrecord"):
        if text.startswith(kind + ":"):
            rest = text[len(kind) + 1 :]
            if not rest:
                break
            return Spec(kind, rest)
    else:
        if _FUNCTION.match(text):
            return Spec("function", text)
    raise ConfigError(f"`{name}={text}` must be {DATA_FORMS}.")


def shape(text, name="input_shape"):
    """(height, width, channels) from 'H,W,C' (or 'H,W': one channel)."""
    parts = text.replace("x", ",").split(",")
    if len(parts) in (2, 3) and all(p.strip().isdigit() for p in parts):
        dims = tuple(int(p) for p in parts)
        if min(dims) > 0:
            return dims if len(dims) == 3 else (*dims, 1)
    raise ConfigError(
        f"`{name}={text}` must be height,width,channels of positive ints, e.g. 96,96,3."
    )


def _check_local(text, name):
    """A local path that does not exist (others are checked when the run
    starts, through tf.io.gfile)."""
    if "://" not in text and not os.path.exists(text):
        also = ", or 'train'" if name == "teacher" else ""
        raise ConfigError(
            f"`{name}={text}` does not exist; it must be {MODEL_FORMS}{also}."
        )


def check(config):
    """Raises `ConfigError` for a model, teacher or data set `config` names
    that cannot work (its form and the flags that go with it; what the
    files hold is checked when the run starts)."""
    model_ = model(config.model)
    data = dataset(config.dataset)
    for name in ("model", "teacher"):
        text = getattr(config, name)
        if text not in (None, "train") and model(text, name).is_file:
            _check_local(text, name)
    teacher_model = model(config.teacher_model, "teacher_model")
    if teacher_model.is_file:
        raise ConfigError(
            f"`teacher_model={config.teacher_model}` is a saved model: give it "
            "as `teacher` (a saved teacher is used as it is, not trained)."
        )
    if config.input_shape is not None:
        shape(config.input_shape)
        if model_.is_file:
            raise ConfigError(
                f"`input_shape={config.input_shape}` applies to a model built "
                f"here; `model={config.model}` is saved with its own input."
            )
    if config.weights is not None and model_.kind not in ("applications", "function"):
        raise ConfigError(
            f"`weights={config.weights}` loads into an applications:NAME or "
            f"module.path:function model; `model={config.model}` is not one."
        )
    if config.custom_objects is not None and not _FUNCTION.match(
        config.custom_objects + ":x"
    ):
        raise ConfigError(
            f"`custom_objects={config.custom_objects}` must be a module name, "
            "e.g. my_project.layers."
        )
    if config.train_split is not None and data.kind != "tfds":
        raise ConfigError(
            f"`train_split={config.train_split}` applies to `dataset=tfds:NAME`."
        )
    if config.preprocess == "applications" and not applications_family(config):
        raise ConfigError(
            "`preprocess=applications` needs `model=applications:NAME` (the "
            "family whose preprocess_input to use)."
        )


def applications_family(config):
    """The `keras.applications` model whose `preprocess_input` the data
    goes through with `preprocess=applications`: the model's, else the
    teacher's (None if neither is one)."""
    candidates = [config.model]
    if config.teacher == "train":
        candidates.append(config.teacher_model)
    elif config.teacher is not None:
        candidates.append(config.teacher)
    for text in candidates:
        spec = model(text)
        if spec.kind == "applications":
            return spec.value
    return None
