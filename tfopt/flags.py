"""absl flags for tfopt's scripts, grouped by concern.

Choices come from the library's own tables (strategy names, data sets,
models, precisions...), so a flag can never offer what the library refuses.
Validators are pure. Only `scripts/` and this module touch absl flags.
"""

from absl import flags

from tfopt import data, devices, distillation, distribute, export, models

EXPORTS = export.EXPORTS
FLAGS = flags.FLAGS


def _defined(name):
    return name in FLAGS


def define_device_flags():
    if _defined("memory_growth"):
        return
    flags.DEFINE_bool("memory_growth", None,
                      "Allocate GPU memory on demand (default: yes, unless "
                      "--memory_limit_mb).")
    flags.DEFINE_integer("memory_limit_mb", None, "Hard memory limit per GPU, MiB.",
                         lower_bound=1)
    flags.DEFINE_integer("logical_cpus", None,
                         "Split the CPU into N logical devices (mirrored on a CPU).",
                         lower_bound=1)
    flags.DEFINE_enum("mixed_precision", None, list(devices.PRECISIONS),
                      "Keras precision policy.")


def define_distribution_flags():
    if _defined("strategy"):
        return
    flags.DEFINE_enum("strategy", "auto", list(distribute.NAMES),
                      "tf.distribute strategy (see tfopt.get_strategy).")
    flags.DEFINE_alias("distribution_strategy", "strategy")
    flags.DEFINE_string("tpu", None, "TPU address: local, a name or grpc://host:port.")
    flags.DEFINE_integer("num_gpus", None, "GPUs for the mirrored strategy.",
                         lower_bound=0)
    flags.DEFINE_enum("all_reduce", None, list(distribute.ALL_REDUCE),
                      "Cross-device reduction of the mirrored strategy.")


def _dataset_ok(name):
    return name in data.NAMES or (name.startswith("tfds:") and len(name) > 5)


def define_data_flags():
    if _defined("dataset"):
        return
    flags.DEFINE_string("dataset", "mnist5k",
                        f"Data set: one of {', '.join(data.NAMES)}.")
    flags.register_validator(
        "dataset", _dataset_ok,
        message=f"--dataset must be one of {', '.join(data.NAMES)}.")
    flags.DEFINE_integer("batch_size", 64, "Global batch size (all replicas).",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of the splits, shuffles and weights.",
                         lower_bound=0)


def define_training_flags():
    if _defined("model"):
        return
    flags.DEFINE_enum("model", "student_cnn", list(models.BUILDERS),
                      "The model to compress (the student when distilling).")
    flags.DEFINE_integer("epochs", 3, "Epochs of the main training stage.",
                         lower_bound=1)
    flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.", lower_bound=0)
    flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, exports and "
                        "the report go.")
    flags.DEFINE_bool("overwrite", False, "Replace a --model_dir made with "
                      "other flags.")
    flags.DEFINE_bool("deterministic", True, "Deterministic TensorFlow ops, so a "
                      "resumed run ends with the same numbers.")


def define_pruning_flags():
    if _defined("prune"):
        return
    flags.DEFINE_bool("prune", False, "Prune the model while it trains.")
    flags.DEFINE_float("target_sparsity", 0.8, "Sparsity reached by the end.",
                       lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_float("pruning_begin", 0.0, "Start, as a fraction of the stage.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("pruning_end", 0.75, "End, as a fraction of the stage.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_string("sparsity_m_by_n", None, "Structured sparsity, e.g. 2:4.")
    flags.register_validator(
        "sparsity_m_by_n", lambda v: v is None or _m_by_n(v) is not None,
        message="--sparsity_m_by_n must look like 2:4 (m < n).")
    flags.register_multi_flags_validator(
        ["pruning_begin", "pruning_end"],
        lambda v: v["pruning_begin"] < v["pruning_end"],
        message="--pruning_begin must be below --pruning_end.")


def _m_by_n(text):
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    m, n = map(int, parts)
    return (m, n) if 0 < m < n else None


def define_qat_flags():
    if _defined("qat"):
        return
    flags.DEFINE_bool("qat", False, "Quantization-aware fine-tuning after training.")
    flags.DEFINE_integer("qat_epochs", 1, "Epochs of QAT fine-tuning.", lower_bound=1)


def define_distillation_flags():
    if _defined("teacher"):
        return
    flags.DEFINE_string("teacher", None, "A saved teacher model, or 'train' to "
                        "train --teacher_model first; unset: no distillation.")
    flags.DEFINE_enum("teacher_model", "teacher_cnn", list(models.BUILDERS),
                      "The teacher to train with --teacher=train.")
    flags.DEFINE_integer("teacher_epochs", 3, "Epochs to train the teacher.",
                         lower_bound=1)
    flags.DEFINE_float("temperature", 4.0, "Distillation temperature.",
                       lower_bound=1e-6)
    flags.DEFINE_float("alpha", 0.1, "Weight of the hard-label loss.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_enum("distillation_loss", "kl", list(distillation.DISTILLATION_LOSSES),
                      "Soft loss between teacher and student logits.")
    flags.DEFINE_bool("cache_teacher", True, "Reuse teacher logits across epochs "
                      "(valid without data augmentation).")


def define_export_flags():
    if _defined("export"):
        return
    flags.DEFINE_list("export", ["tflite", "tflite_int8"],
                      f"Artifacts to export: any of {', '.join(EXPORTS)}.")
    flags.register_validator(
        "export", lambda values: set(values) <= set(EXPORTS),
        message=f"--export takes a comma list of {', '.join(EXPORTS)}.")


def define_all():
    """Every flag of `scripts/train.py`."""
    for define in (define_device_flags, define_distribution_flags,
                   define_data_flags, define_training_flags, define_pruning_flags,
                   define_qat_flags, define_distillation_flags, define_export_flags):
        define()


def m_by_n(text):
    """(m, n) from a --sparsity_m_by_n value such as '2:4', or None."""
    return None if text is None else _m_by_n(text)
