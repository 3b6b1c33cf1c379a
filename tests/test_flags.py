"""The flags of the scripts are `tfopt.config.Config`'s fields, and the
tables they offer are the library's own."""

import dataclasses

import pytest

from tfopt import distillation, distribute, export, models
from tfopt.job import config
from tfopt.job import flags as tfopt_flags
from tfopt.job.config import Config, ConfigError


def test_choices_are_the_library_tables():
    assert set(config.DATASETS) | {"tfds:NAME"} == set(
        __import__("tfopt.data", fromlist=["NAMES"]).NAMES
    )
    assert set(config.MODELS) == set(models.BUILDERS)
    assert set(config.STRATEGIES) == set(distribute.NAMES)
    assert set(config.ALL_REDUCE) == set(distribute.ALL_REDUCE)
    assert set(config.DISTILLATION_LOSSES) == set(distillation.DISTILLATION_LOSSES)
    assert set(config.EXPORTS) == set(export.EXPORTS)
    for form in config.EXPORTS.values():
        assert form.quantization in export.QUANTIZATIONS


def test_every_field_is_a_flag_with_its_default_and_help():
    tfopt_flags.define_all()
    flags = tfopt_flags.FLAGS
    for field in dataclasses.fields(Config):
        flag = flags[field.name]
        default = field.default
        assert flag.default == (
            list(default) if isinstance(default, tuple) else default
        ), field.name
        assert flag.help.endswith(field.metadata["help"])
    assert flags["distribution_strategy"].default == "auto"  # an alias


def test_flags_become_the_config_without_a_mapping():
    tfopt_flags.define_all()
    flags = tfopt_flags.FLAGS
    if not flags.is_parsed():
        flags(["test"])
    from absl.testing import flagsaver

    with flagsaver.flagsaver(
        model_dir="/tmp/x", prune=True, sparsity_m_by_n="2:4", export=["tflite_int8"]
    ):
        made = tfopt_flags.config_from_flags()
    assert made == Config(
        model_dir="/tmp/x", prune=True, sparsity_m_by_n="2:4", export=("tflite_int8",)
    )
    assert made.m_by_n == (2, 4)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "`model_dir` is required: where checkpoints and the report go."),
        ({"batch_size": 0}, "`batch_size=0` must be at least 1."),
        ({"batch_size": "64"}, "`batch_size='64'` must be an int."),
        (
            {"model": "vgg"},
            "`model=vgg` does not exist; it must be one of tfmot_mnist, "
            "teacher_cnn, student_cnn, resnet_tiny, mobilenet_v2, "
            "applications:NAME, module.path:function, or a saved model "
            "(.keras, .h5 or a SavedModel directory).",
        ),
        (
            {"export": ("onnx",)},
            "`export=onnx` must be one of saved_model, tflite, "
            "tflite_int8, tflite_float16.",
        ),
        (
            {"export": ()},
            "`export` must name at least one of saved_model, tflite, "
            "tflite_int8, tflite_float16.",
        ),
        ({"alpha": 1.5}, "`alpha=1.5` must be at most 1.0."),
        ({"temperature": 0.0}, "`temperature=0.0` must be > 0."),
        ({"learning_rate": 0.0}, "`learning_rate=0.0` must be > 0."),
        (
            {"teacher_learning_rate": -1e-3},
            "`teacher_learning_rate=-0.001` must be > 0.",
        ),
        (
            {"teacher_learning_rate": "fast"},
            "`teacher_learning_rate='fast'` must be a number.",
        ),
        (
            {"strategy": "tpu"},
            "`strategy=tpu` needs `tpu`: 'local' on a Cloud TPU "
            "VM, the TPU's name, or grpc://host:port.",
        ),
        ({"sparsity_m_by_n": "2:4"}, "`sparsity_m_by_n=2:4` needs `prune`."),
        (
            {"prune": True, "prune_measure": "macs"},
            "`prune_measure=macs` needs `prune` with `prune_structure=channels`.",
        ),
        (
            {"prune_round_to": 4},
            "`prune_round_to=4` needs `prune` with `prune_structure=channels`.",
        ),
        (
            {"prune": True, "prune_importance": "l2"},
            "`prune_importance=l2` needs `prune` with `prune_structure=channels`.",
        ),
        (
            {"prune": True, "prune_structure": "channels", "sparsity_m_by_n": "2:4"},
            "`sparsity_m_by_n=2:4` applies to `prune_structure=weights`.",
        ),
        (
            {"prune": True, "recover": False, "recover_alpha": 0.5},
            "`recover_alpha=0.5` needs `prune` with `recover` and no `teacher`.",
        ),
        ({"prune_structure": "channels"}, "`prune_structure=channels` needs `prune`."),
        (
            {"prune_structure": "filters"},
            "`prune_structure=filters` must be one of weights, channels.",
        ),
        (
            {"prune_importance": "random"},
            "`prune_importance=random` must be one of l2, bn_gamma, taylor.",
        ),
        ({"keras": "4"}, "`keras=4` must be one of 2, 3."),
    ],
)
def test_config_errors_name_the_fields(fields, message):
    values = {"model_dir": "/tmp/run", **fields}
    if not fields:
        values.pop("model_dir")
    with pytest.raises(ConfigError) as caught:
        Config(**values).check()
    assert str(caught.value) == message


def test_a_script_shows_fields_as_flags():
    error = ConfigError(
        "`pruning_begin=0.9` must be below `pruning_end=0.5`; see `prune`."
    )
    assert error.for_flags() == (
        "--pruning_begin=0.9 must be below --pruning_end=0.5; see --prune."
    )
