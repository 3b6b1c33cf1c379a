"""The settings of the main job: one `Config`, without TensorFlow.

Each field carries its default, help text and allowed values; the flags of
`scripts/train.py` are generated from them (`tfopt.job.flags`), and
`Config.check` refuses what cannot work before anything is imported,
written or trained. The tables of names are the library's (`core.vocab`,
`core.kerases`), so a flag never offers what the library refuses. Errors
name fields as `field`; a script shows them as `--field` (`for_flags`).
"""

import dataclasses
import json

from tfopt.core.kerases import Keras
from tfopt.core.vocab import (  # noqa: F401 (the job reads them here)
    ALL_REDUCE,
    DISTILLATION_LOSSES,
    EXPORTS,
    PRECISIONS,
    PRUNE_IMPORTANCES,
    PRUNE_MEASURES,
    PRUNE_STRUCTURES,
    STRATEGIES,
    ExportFormat,
)
from tfopt.job import checks, specs
from tfopt.job.errors import ClusterError  # noqa: F401 (its old home)
from tfopt.job.fields import NAMES, ConfigError, parse_m_by_n
from tfopt.job.fields import field as _field
from tfopt.job.specs import DATASETS, MODELS  # noqa: F401 (read here)

__all__ = ["ClusterError", "Config", "ConfigError", "ExportFormat", "EXPORTS"]

KERAS_VERSIONS = tuple(str(keras.value) for keras in Keras)
PREPROCESSING = ("rescale", "none", "applications")
LR_SCHEDULES = ("cosine", "constant")
DEFAULT_EPOCHS = 3  # of the main stage, when `epochs` is unset


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of one run of the main job (`tfopt.job.pipeline.run`)."""

    model_dir: str | None = _field(
        None, "Where checkpoints, logs, exports and the report go (required).", "string"
    )
    dataset: str = _field("mnist5k", f"Data set: {specs.DATA_FORMS}.", "string")
    validation_split: float = _field(
        0.1,
        "Fraction of the training data held out for validation (data "
        "without a validation split).",
        "float",
        low=0.0,
        high=0.5,
    )
    test_split: float = _field(
        0.2,
        "Fraction held out for the test split (data without one: the "
        "bundled sets, images:DIR, tfrecord:GLOB).",
        "float",
        low=0.0,
        high=0.5,
    )
    train_split: str | None = _field(
        None,
        "With tfds:NAME, the split expression to train on, e.g. train[:90%] "
        "(validation is then held out of it).",
        "string",
    )
    preprocess: str = _field(
        "rescale",
        "How pixel values reach the model: rescale ([0, 1]), none (0-255) or "
        "applications (keras.applications' preprocess_input of an "
        "applications:NAME model).",
        "enum",
        choices=PREPROCESSING,
    )
    augment: bool = _field(
        False,
        "Random flips and shifts of the training images (turns off "
        "teacher-logit caching).",
        "bool",
    )
    batch_size: int = _field(64, "Global batch size (all replicas).", "integer", low=1)
    seed: int = _field(0, "Seed of the splits, shuffles and weights.", "integer", low=0)
    model: str = _field(
        "student_cnn",
        f"The model to compress (the student when distilling): {specs.MODEL_FORMS}. "
        "A saved model starts trained: no baseline training.",
        "string",
    )
    input_shape: str | None = _field(
        None, "Input H,W,C of a model built here; unset: the data's.", "string"
    )
    weights: str | None = _field(
        None,
        "Weights file for an applications:NAME or module:function model.",
        "string",
    )
    custom_objects: str | None = _field(
        None,
        "A module to import before loading saved models: the one that "
        "registers their custom layers.",
        "string",
    )
    keras: str | None = _field(
        None,
        "The Keras of the models: 2 (tf_keras, through TFMOT) or 3 (the keras "
        "package, TensorFlow's tf.keras); unset: a saved model's own, else 3.",
        "enum",
        choices=KERAS_VERSIONS,
    )
    epochs: int | None = _field(
        None,
        "Epochs of the main stage (default 3; a saved --model: 6, or with no "
        "--prune or --teacher, fine-tuning, default none).",
        "integer",
        low=1,
    )
    learning_rate: float = _field(
        6e-3,
        "Adam learning rate of a model trained from scratch (the peak of "
        "--lr_schedule=cosine).",
        "float",
        low=0.0,
    )
    finetune_learning_rate: float | None = _field(
        None,
        "Adam learning rate of a stage that starts from trained weights "
        "(pruning a trained baseline; any stage of a saved --model); unset: "
        "--learning_rate.",
        "float",
        low=0.0,
    )
    qat_learning_rate: float | None = _field(
        None,
        "Adam learning rate of quantization-aware training; unset: "
        "--learning_rate / 10.",
        "float",
        low=0.0,
    )
    lr_schedule: str = _field(
        "cosine",
        "The learning rate within each stage: cosine (from its peak down to "
        "0 at the stage's last step, after --warmup) or constant.",
        "enum",
        choices=LR_SCHEDULES,
    )
    warmup: float = _field(
        0.1,
        "With --lr_schedule=cosine, the fraction of a stage from scratch over "
        "which the rate rises from 0 (stages from trained weights start at "
        "their peak).",
        "float",
        low=0.0,
        high=0.5,
    )
    dense_control: bool = _field(
        False,
        "Also train the dense model for the run's total epochs of --model and "
        "report every artifact's accuracy against it (one more training run).",
        "bool",
    )
    teacher: str | None = _field(
        None,
        "The teacher: a saved model (used as it is), 'train' (train "
        "--teacher_model first) or a model to train (as --model); unset: no "
        "distillation.",
        "string",
    )
    teacher_model: str = _field(
        "teacher_cnn", "The teacher to train with --teacher=train.", "string"
    )
    teacher_epochs: int = _field(3, "Epochs to train the teacher.", "integer", low=1)
    teacher_learning_rate: float | None = _field(
        None,
        "Adam learning rate of a teacher trained here (as --learning_rate); "
        "unset: --learning_rate.",
        "float",
    )
    temperature: float = _field(4.0, "Distillation temperature.", "float", low=0.0)
    alpha: float = _field(
        0.1, "Weight of the hard-label loss.", "float", low=0.0, high=1.0
    )
    distillation_loss: str = _field(
        "kl",
        "Soft loss between teacher and student logits.",
        "enum",
        choices=DISTILLATION_LOSSES,
    )
    cache_teacher: bool = _field(
        True,
        "Reuse teacher logits across epochs (valid without data augmentation).",
        "bool",
    )
    prune: bool = _field(False, "Prune the model while it trains.", "bool")
    target_sparsity: float = _field(
        0.8, "Sparsity reached by the end, in (0, 1).", "float", low=0.0, high=0.99
    )
    pruning_begin: float = _field(
        0.0, "Start, as a fraction of the stage.", "float", low=0.0, high=1.0
    )
    pruning_end: float | None = _field(
        None,
        "End, as a fraction of the stage; unset: 0.25 for channels pruned "
        "from trained weights (the pruned model then trains most of the stage "
        "at its final width), else 0.75.",
        "float",
        low=0.0,
        high=1.0,
    )
    sparsity_m_by_n: str | None = _field(
        None, "Structured sparsity, e.g. 2:4.", "string"
    )
    prune_structure: str = _field(
        "weights",
        "What --prune removes: weights (smaller files) or channels "
        "(then shrunk: a smaller, faster model).",
        "enum",
        choices=PRUNE_STRUCTURES,
    )
    prune_measure: str = _field(
        "channels",
        "With --prune_structure=channels, what --target_sparsity is a "
        "share of: channels (of each group), params or macs (of the model).",
        "enum",
        choices=PRUNE_MEASURES,
    )
    prune_importance: str = _field(
        "bn_gamma",
        "With --prune_structure=channels, how channels are ranked: "
        "bn_gamma (BatchNorm scales; l2 where a group has none), l2 or taylor.",
        "enum",
        choices=PRUNE_IMPORTANCES,
    )
    prune_round_to: int = _field(
        8,
        "With --prune_structure=channels, kept channels per group are a "
        "multiple of this.",
        "integer",
        low=1,
    )
    recover: bool = _field(
        False,
        "With --prune and no --teacher, fine-tune the pruned model against "
        "the unpruned one as its teacher (self-distillation); off: plain "
        "fine-tuning, measured as good or better at an equal budget.",
        "bool",
    )
    recover_alpha: float = _field(
        0.9,
        "Weight of the hard-label loss when recovering: the unpruned model "
        "is only as good as its training, so the labels keep most of the weight.",
        "float",
        low=0.0,
        high=1.0,
    )
    qat: bool = _field(False, "Quantization-aware fine-tuning after training.", "bool")
    qat_epochs: int = _field(1, "Epochs of QAT fine-tuning.", "integer", low=1)
    export: tuple = _field(
        ("tflite", "tflite_int8"),
        f"Artifacts to export: any of {', '.join(EXPORTS)}.",
        "list",
        choices=tuple(EXPORTS),
    )
    strategy: str = _field(
        "auto",
        "tf.distribute strategy (see tfopt.get_strategy).",
        "enum",
        choices=STRATEGIES,
        alias="distribution_strategy",
    )
    tpu: str | None = _field(
        None, "TPU address: local, a name or grpc://host:port.", "string"
    )
    num_gpus: int | None = _field(
        None, "GPUs for the mirrored strategy.", "integer", low=0
    )
    all_reduce: str | None = _field(
        None,
        "Cross-device reduction of the mirrored strategy.",
        "enum",
        choices=ALL_REDUCE,
    )
    memory_growth: bool | None = _field(
        None,
        "Allocate GPU memory on demand (default: yes, unless --memory_limit_mb).",
        "bool",
    )
    memory_limit_mb: int | None = _field(
        None, "Hard memory limit per GPU, MiB.", "integer", low=1
    )
    logical_cpus: int | None = _field(
        None,
        "Split the CPU into N logical devices (mirrored on a CPU).",
        "integer",
        low=1,
    )
    mixed_precision: str | None = _field(
        None, "Keras precision policy.", "enum", choices=PRECISIONS
    )
    deterministic: bool = _field(
        True,
        "Deterministic TensorFlow ops, so a resumed run ends with the same numbers.",
        "bool",
    )
    overwrite: bool = _field(
        False, "Replace a --model_dir made with other flags.", "bool"
    )

    @property
    def m_by_n(self):
        """`sparsity_m_by_n` as (m, n), or None."""
        return parse_m_by_n(self.sparsity_m_by_n)

    @property
    def keras_api(self):
        """The `Keras` that `keras` names (Keras 3 when unset: a run resolves
        it from a saved model first, `tfopt.job.sources.resolve`)."""
        return Keras.from_version(self.keras or "3")

    @property
    def stage_epochs(self):
        """Epochs of the main stage: a saved model's is the run's only
        training, so it gets a built model's baseline and pruning epochs."""
        default = 2 * DEFAULT_EPOCHS if self.given else DEFAULT_EPOCHS
        return default if self.epochs is None else self.epochs

    @property
    def ramp_end(self):
        """When the pruning ramp ends, as a fraction of its stage. Channels
        of a model from scratch (distilled from a teacher) are ranked later:
        early on every BatchNorm scale is still about 1."""
        if self.pruning_end is not None:
            return self.pruning_end
        from_trained = self.given or not self.teacher
        return 0.25 if self.prunes_channels and from_trained else 0.75

    @property
    def control_epochs(self):
        """Epochs of the dense control: every epoch `model` trains in the
        run (baseline, main stage, QAT), in one stage."""
        main = self.stage_epochs if (self.prune or self.teacher) else 0
        first = 0 if self.given or self.teacher else self.stage_epochs
        if self.given and not main:
            main = self.epochs or 0
        return first + main + (self.qat_epochs if self.qat else 0)

    @property
    def model_spec(self):
        """`model` parsed (`tfopt.job.specs.Spec`)."""
        return specs.model(self.model)

    @property
    def teacher_spec(self):
        """`teacher` parsed, or None for none or 'train'."""
        return (
            None
            if self.teacher in (None, "train")
            else specs.model(self.teacher, "teacher")
        )

    @property
    def given(self):
        """Whether `model` is a saved, trained model (no baseline training)."""
        return self.model_spec.is_file

    @property
    def prunes_channels(self):
        """Whether the run prunes channels (and then shrinks the model)."""
        return self.prune and self.prune_structure == "channels"

    def settings(self):
        """What identifies the run's results (not where or whether to overwrite)."""
        values = dataclasses.asdict(self)
        for key in ("model_dir", "overwrite", "deterministic"):
            values.pop(key)
        values["pruning_end"] = self.ramp_end  # the value the run uses
        return json.loads(json.dumps(values))

    def check(self):
        """Raises `ConfigError` for a value that cannot work; needs no
        TensorFlow and reads no file (it only asks whether a local model
        path exists). (What a cluster, a TPU or `model_dir`'s contents
        allow is checked when the run starts, still before anything is
        written.)"""
        checks.check(self)
        return self


NAMES.update(f.name for f in dataclasses.fields(Config))
