"""The main job's training recipe: the learning rate of each stage, the
dense control and its Δ column, and a resumed stage keeping its schedule's
position."""

import json
import logging
import types

import numpy as np
import pytest

import tfopt
from tfopt.job import pipeline, report, rundir, stages
from tfopt.job.config import Config, ConfigError
from tfopt.keras3.pruning import PruningMask

TINY = {
    "dataset": "digits",
    "model": "tfmot_mnist",
    "epochs": 1,
    "batch_size": 64,
    "export": ("tflite_int8",),
}


def _run(config, steps=10):
    """What `stages.rate` reads of a run: its config and steps per epoch."""
    return types.SimpleNamespace(config=config, steps=steps)


def _rates(schedule, steps):
    return [float(schedule(step)) for step in steps]


@pytest.mark.parametrize(
    "flags, epochs",
    [
        ({"prune": True, "qat": True, "epochs": 4}, 4 + 4 + 1),
        ({"prune": True, "epochs": 3}, 3 + 3),
        ({"qat": True, "epochs": 2, "qat_epochs": 2}, 2 + 2),
        ({"teacher": "train", "prune": True, "qat": True, "epochs": 3}, 3 + 1),
        ({"model": "user.keras", "prune": True, "qat": True}, 6 + 1),
        ({"model": "user.keras", "epochs": 2, "qat": True}, 2 + 1),
        ({"model": "user.keras", "qat": True}, 1),
    ],
)
def test_the_dense_control_trains_as_long_as_the_run_trains_the_model(
    flags, epochs, tmp_path
):
    config = Config(model_dir=str(tmp_path), **{"dataset": "digits", **flags})
    assert config.control_epochs == epochs


def test_a_dense_control_needs_a_compression(tmp_path):
    (tmp_path / "user.keras").write_bytes(b"")
    message = (
        "`dense_control` needs `prune`, `qat` or `teacher`: without them the "
        "run's own training is the dense model."
    )
    for flags in ({}, {"model": str(tmp_path / "user.keras"), "epochs": 2}):
        with pytest.raises(ConfigError) as err:
            Config(model_dir=str(tmp_path / "run"), dense_control=True, **flags).check()
        assert str(err.value) == message


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            {"lr_schedule": "constant", "warmup": 0.3},
            "`warmup=0.3` needs `lr_schedule=cosine`: a constant rate has no warm-up.",
        ),
        ({"qat_learning_rate": 1e-4}, "`qat_learning_rate=0.0001` needs `qat`."),
        (
            {"finetune_learning_rate": 1e-3, "prune": True, "teacher": "train"},
            "`finetune_learning_rate=0.001` needs a stage that starts from "
            "trained weights: a saved `model`, or `prune` without `teacher`.",
        ),
        (
            {"finetune_learning_rate": 1e-3},
            "`finetune_learning_rate=0.001` needs a stage that starts from "
            "trained weights: a saved `model`, or `prune` without `teacher`.",
        ),
    ],
)
def test_a_rate_setting_no_stage_reads_is_refused(flags, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        Config(model_dir=str(tmp_path), **flags).check()
    assert str(err.value) == message


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            {"finetune_learning_rate": -0.1},
            "`finetune_learning_rate=-0.1` must be at least 0.0.",
        ),
        ({"finetune_learning_rate": 0.0}, "`finetune_learning_rate=0.0` must be > 0."),
        (
            {"finetune_learning_rate": "fast"},
            "`finetune_learning_rate='fast'` must be a number.",
        ),
        ({"qat_learning_rate": 0, "qat": True}, "`qat_learning_rate=0` must be > 0."),
        ({"warmup": -0.1}, "`warmup=-0.1` must be at least 0.0."),
        ({"warmup": 0.6}, "`warmup=0.6` must be at most 0.5."),
        (
            {"lr_schedule": "step"},
            "`lr_schedule=step` must be one of cosine, constant.",
        ),
        ({"dense_control": "yes"}, "`dense_control='yes'` must be a bool."),
    ],
)
def test_bad_values_of_the_new_settings_are_refused(flags, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        Config(model_dir=str(tmp_path), prune=True, **flags).check()
    assert str(err.value) == message


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_warmup_limits_are_accepted(warmup, tmp_path):
    Config(model_dir=str(tmp_path), warmup=warmup).check()


@pytest.mark.parametrize("keras", ["2", "3"])
def test_each_stage_gets_the_documented_learning_rate(keras, tmp_path):
    config = Config(model_dir=str(tmp_path), keras=keras, learning_rate=3e-3)
    run = _run(config, steps=10)
    # From scratch: a linear warm-up over the first 10% to the peak, then a
    # cosine decay to 0 at the stage's last step.
    scratch = stages.rate(run, "scratch", 10)
    assert _rates(scratch, [0, 5, 10, 55, 100]) == pytest.approx(
        [0.0, 1.5e-3, 3e-3, 1.5e-3, 0.0], abs=1e-9
    )
    # From trained weights (pruning, fine-tuning): the same peak, no warm-up.
    assert _rates(stages.rate(run, "trained", 4), [0, 20, 40]) == pytest.approx(
        [3e-3, 1.5e-3, 0.0], abs=1e-9
    )
    assert _rates(stages.rate(run, "qat", 1), [0, 10]) == pytest.approx(
        [3e-4, 0.0], abs=1e-9
    )
    teacher = Config(model_dir="x", keras=keras, teacher_learning_rate=1e-3)
    assert float(stages.rate(_run(teacher), "teacher", 1)(1)) == pytest.approx(1e-3)
    overridden = Config(
        model_dir="x", keras=keras, finetune_learning_rate=2e-3, qat_learning_rate=1e-5
    )
    assert float(stages.rate(_run(overridden), "trained", 1)(0)) == pytest.approx(2e-3)
    assert float(stages.rate(_run(overridden), "qat", 1)(0)) == pytest.approx(1e-5)
    constant = Config(model_dir="x", keras=keras, lr_schedule="constant")
    assert stages.rate(_run(constant), "scratch", 3) == 6e-3
    assert stages.rate(_run(constant), "qat", 3) == pytest.approx(6e-4)
    # The defaults: up to 6e-3 over 10% of the stage, then a cosine to 0.
    default = stages.rate(_run(Config(model_dir="x", keras=keras)), "scratch", 2)
    assert _rates(default, [0, 1, 2, 11, 20]) == pytest.approx(
        [0.0, 3e-3, 6e-3, 3e-3, 0.0], abs=1e-9
    )


@pytest.mark.parametrize(
    "flags, end",
    [
        ({}, 0.75),
        ({"prune_structure": "channels"}, 0.25),
        ({"prune_structure": "channels", "pruning_end": 0.5}, 0.5),
        ({"pruning_end": 0.6}, 0.6),
        # Channels of a model distilled from scratch: ranked later.
        ({"prune_structure": "channels", "teacher": "train"}, 0.75),
        (
            {"prune_structure": "channels", "teacher": "t.keras", "model": "s.keras"},
            0.25,
        ),
    ],
)
def test_the_pruning_ramp_ends_by_structure_unless_set(flags, end, tmp_path):
    config = Config(model_dir=str(tmp_path), prune=True, target_sparsity=0.5, **flags)
    assert config.ramp_end == end
    # config.json and the report hold the value the run uses.
    assert config.settings()["pruning_end"] == end
    if config.teacher:
        return
    config.check()
    # The pruned model's schedule is the one the report and resume read.
    model = tfopt.models.build("student_cnn", (8, 8), 10)
    masks = [
        c
        for layer in pipeline._prune(config, model).layers
        for c in (getattr(layer, "kernel_constraint", None),)
        if isinstance(c, PruningMask)
    ]
    assert masks and {m.schedule.end for m in masks} == {end}


@pytest.mark.parametrize(
    "flags, end",
    [
        ({"prune_structure": "channels", "pruning_begin": 0.5}, 0.25),
        ({"pruning_begin": 0.8}, 0.75),
    ],
)
def test_a_ramp_that_would_end_before_it_begins_names_the_default(flags, end, tmp_path):
    config = Config(model_dir=str(tmp_path), prune=True, **flags)
    with pytest.raises(ConfigError) as err:
        config.check()
    begin = flags["pruning_begin"]
    assert str(err.value) == (
        f"`pruning_begin={begin}` must be below `pruning_end={end}` (its default)."
    )


def test_the_dense_control_row_and_its_delta_column(tmp_path, caplog):
    config = Config(
        model_dir=str(tmp_path), prune=True, qat=True, dense_control=True, **TINY
    )
    with caplog.at_level(logging.INFO, logger="tfopt"):
        result = pipeline.run(config)
    banners = [r.getMessage() for r in caplog.records if r.getMessage()[:1] == "["]
    assert banners[2] == (
        "[3/5] dense control: train tfmot_mnist uncompressed, 3 epochs "
        "(the run's training of it)"
    )
    rows = {row["artifact"]: row for row in result.rows}
    assert list(rows) == ["baseline", "dense_control", "pruned", "qat", "tflite_int8"]
    control = rows["dense_control"]["accuracy"]
    for row in rows.values():
        assert row["control_delta"] == pytest.approx(row["accuracy"] - control)
    # The control is dense and trained three epochs to the baseline's one.
    assert rows["dense_control"]["nonzero_params"] == rows["baseline"]["params"]
    assert control > rows["baseline"]["accuracy"]
    header = result.markdown.splitlines()[2]
    assert header.startswith("| artifact | accuracy | Δ accuracy | Δ vs control |")
    line = next(x for x in result.markdown.splitlines() if "| tflite_int8 |" in x)
    assert line.split(" | ")[3] == f"{rows['tflite_int8']['control_delta']:+.4f}"
    saved = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert saved[1]["artifact"] == "dense_control"
    assert "control_delta" in saved[-1]


def test_a_report_without_a_control_has_no_control_column():
    rows = [
        {
            "artifact": name,
            "accuracy": accuracy,
            "accuracy_delta": accuracy - 0.9,
            "params": 10,
            "macs": 20,
            "nonzero_params": 10,
            "size_bytes": 100,
            "gzip_bytes": 90,
            "gzip_ratio": 1.0,
            "latency_ms_per_example": None,
        }
        for name, accuracy in (("baseline", 0.9), ("pruned", 0.88))
    ]
    assert "Δ vs control" not in report.markdown(rows)
    rows[0]["control_delta"], rows[1]["control_delta"] = -0.05, -0.07
    table = report.markdown(rows).splitlines()
    assert table[0].startswith("| artifact | accuracy | Δ accuracy | Δ vs control |")
    assert table[3].startswith("| pruned | 0.8800 | -0.0200 | -0.0700 | 10 |")


class _Preempted(Exception):
    pass


@pytest.mark.slow  # four runs
@pytest.mark.parametrize("keras", ["2", "3"])
def test_a_resumed_stage_keeps_its_learning_rate_schedule(keras, tmp_path, monkeypatch):
    """Killed after the first of three epochs and run again, a stage ends
    with the weights of an uninterrupted one: its cosine schedule goes on
    from the restored step count instead of starting over (tested to fail
    when the step count is reset on resuming)."""
    config = dict(TINY, epochs=3, keras=keras)
    whole = pipeline.run(Config(model_dir=str(tmp_path / "whole"), **config))

    save = stages._EpochCheckpoint.on_epoch_end

    def preempt(self, index, logs=None):
        save(self, index, logs)
        raise _Preempted(f"killed after epoch {index + 1}")

    monkeypatch.setattr(stages._EpochCheckpoint, "on_epoch_end", preempt)
    with pytest.raises(_Preempted):
        pipeline.run(Config(model_dir=str(tmp_path / "cut"), **config))
    monkeypatch.undo()
    resumed = pipeline.run(Config(model_dir=str(tmp_path / "cut"), **config))
    assert [r["accuracy"] for r in resumed.rows] == [r["accuracy"] for r in whole.rows]
    a, b = (
        tfopt.load_model(str(tmp_path / run / "checkpoints" / "baseline.keras"))
        for run in ("whole", "cut")
    )
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_readme_recipe_runs_as_written(tmp_path):
    """The README's recommended recipe, executed from the README on a
    trained model: 80% sparse after QAT, and an integer int8 file."""
    import pathlib
    import re

    import keras

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    after = text[text.index("**The recommended recipe**") :]
    code = re.search(r"```python\n(.*?)```", after, re.S)[1]
    train, _, test, info = tfopt.data.load("mnist5k", batch_size=64)
    keras.utils.set_random_seed(0)
    model = tfopt.models.build("tfmot_mnist", info.input_shape, info.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=3, verbose=0)
    dense = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    scope = {"keras": keras, "tfopt": tfopt, "model": model, "train": train}
    exec(code, scope)  # noqa: S102 - the README's own code
    qat = scope["qat"]
    path = str(tmp_path / "model.tflite")
    tfopt.export_tflite(qat, path, quantization="int8")
    assert tfopt.sparsity_report(tfopt.strip(scope["pruned"])).sparsity == (
        pytest.approx(0.8, abs=0.01)
    )
    int8 = tfopt.evaluate_tflite(path, test).accuracy
    assert int8 > dense - 0.05, (int8, dense)


def test_the_example_recipe_refuses_data_of_unknown_length():
    import tensorflow as tf

    from scripts import benchmark_recipe

    recipe = benchmark_recipe._example()
    train = tfopt.data.load("digits", batch_size=64).train
    with pytest.raises(ValueError) as err:
        recipe._cosine(1e-2, 2, train.repeat())
    assert str(err.value) == "`train` has no known length (-1)."
    with pytest.raises(ValueError, match=r"no known length \(-2\)\.$"):
        recipe._cosine(1e-2, 2, train.filter(lambda x, y: tf.reduce_any(y > 0)))


def test_a_weight_pruning_run_resumes_across_channel_defaults(tmp_path):
    """A run directory's config.json from before a channel default changed
    (here `prune_importance=l2`) still resumes a weight-pruning run; a
    channel-pruning run with other channel settings is refused."""
    chief = types.SimpleNamespace(is_chief=True)
    for structure, refused in (("weights", False), ("channels", True)):
        config = Config(
            model_dir=str(tmp_path / structure),
            prune=True,
            prune_structure=structure,
            target_sparsity=0.5,
        )
        rundir.claim(config)
        saved = tmp_path / structure / "config.json"
        older = dict(json.loads(saved.read_text()), prune_importance="l2")
        saved.write_text(json.dumps(older))
        if refused:
            with pytest.raises(ConfigError, match="holds a run with other flags"):
                rundir.check(config, chief)
        else:
            rundir.check(config, chief)


@pytest.mark.parametrize("structure, end", [("weights", 0.75), ("channels", 0.25)])
def test_a_tf_keras_pruned_model_gets_the_ramp_end(structure, end, tmp_path):
    config = Config(
        model_dir=str(tmp_path),
        keras="2",
        prune=True,
        prune_structure=structure,
        target_sparsity=0.5,
    )
    model = tfopt.models.build("student_cnn", (8, 8), 10, keras_version=2)
    pruned = pipeline._prune(config, model)
    if structure == "channels":  # the schedule's settings, saved with the model
        ends = [pruned.tfopt_channel_pruning["schedule"]["end"]]
    else:  # TFMOT's wrappers
        ends = [
            layer.pruning_schedule.end
            for layer in pruned.layers
            if hasattr(layer, "pruning_schedule")
        ]
    assert ends and set(ends) == {end}
