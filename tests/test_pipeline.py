"""`tfopt.pipeline.run` driven by a `Config` directly (no flags)."""

import json
import logging
import zipfile

import pytest

import tfopt
from tfopt import models
from tfopt.job import measure, pipeline
from tfopt.job.config import Config, ConfigError

QUICK = {
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 32,
    "teacher_epochs": 2,
    "learning_rate": 5e-3,
    "alpha": 0.5,
    "deterministic": False,
}


def _without_latency(rows):
    return [
        {k: v for k, v in row.items() if k != "latency_ms_per_example"} for row in rows
    ]


@pytest.mark.slow
def test_a_run_reports_the_same_figures_when_its_stages_are_loaded(tmp_path, caplog):
    # tf_keras, one flag away from the default (Keras 3, tested below).
    config = Config(
        model_dir=str(tmp_path),
        keras="2",
        teacher="train",
        prune=True,
        qat=True,
        export=("tflite_int8",),
        **QUICK,
    )
    with caplog.at_level(logging.INFO, logger="tfopt"):
        first = pipeline.run(config)
    banners = [r.getMessage() for r in caplog.records if r.getMessage()[:1] == "["]
    assert banners == [
        "[1/4] train teacher teacher_cnn, 2 epochs",
        "[2/4] distill + prune student_cnn ← teacher_cnn, 2 epochs",
        "[3/4] quantization-aware training, 1 epochs",
        "[4/4] evaluate and export tflite_int8",
    ]
    assert [row["artifact"] for row in first.rows] == [
        "teacher",
        "distilled+pruned",
        "qat",
        "tflite_int8",
    ]
    assert first.markdown == (tmp_path / "report.md").read_text()
    assert "| teacher | " in first.markdown
    # Every stage is now loaded from disk; sizes once differed (.h5 layouts
    # of a model kept in memory and of the same model reloaded).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfopt"):
        again = pipeline.run(config)
    assert "finished earlier" in caplog.text
    assert _without_latency(again.rows) == _without_latency(first.rows)


def test_a_bad_config_is_refused_before_any_file(tmp_path):
    with pytest.raises(
        ConfigError, match=(r"^`target_sparsity=0.0` must be in \(0, 1\) with `prune`")
    ):
        pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                prune=True,
                target_sparsity=0.0,
                **QUICK,
            )
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # trains two stages
@pytest.mark.parametrize("keras, importance", [("2", "bn_gamma"), ("3", "taylor")])
def test_channel_pruning_runs_prune_shrink_qat_export_and_times_the_result(
    tmp_path, caplog, keras, importance
):
    config = Config(
        model_dir=str(tmp_path),
        keras=keras,
        prune=True,
        prune_structure="channels",
        prune_importance=importance,
        prune_measure="macs",
        target_sparsity=0.5,
        prune_round_to=4,
        recover=True,  # the unpruned model teaches its channel-pruned copy
        qat=True,
        export=("tflite_int8",),
        model="resnet_tiny",
        **QUICK,
    )
    with caplog.at_level(logging.INFO, logger="tfopt"):
        result = pipeline.run(config)
    banners = [r.getMessage() for r in caplog.records if r.getMessage()[:1] == "["]
    assert banners == [
        "[1/5] train resnet_tiny, 2 epochs",
        "[2/5] prune channels: 50% of the MACs of resnet_tiny, 2 epochs, distilled "
        "from the unpruned model",
        "[3/5] shrink: remove the pruned channels",
        "[4/5] quantization-aware training, 1 epochs",
        "[5/5] evaluate and export tflite_int8",
    ]
    rows = {row["artifact"]: row for row in result.rows}
    assert list(rows) == ["baseline", "pruned", "shrunk", "qat", "tflite_int8"]
    assert rows["pruned"]["macs"] == rows["baseline"]["macs"]  # masked, not removed
    assert rows["shrunk"]["macs"] <= 0.5 * rows["baseline"]["macs"]
    assert rows["shrunk"]["params"] < rows["baseline"]["params"]
    # The shrunk model computes what the masked one does.
    assert rows["shrunk"]["accuracy"] == pytest.approx(
        rows["pruned"]["accuracy"], abs=1e-6
    )
    assert rows["tflite_int8"]["macs"] == rows["shrunk"]["macs"]
    saved = json.loads((tmp_path / "report.json").read_text())
    speed = {row["model"]: row for row in saved["speed"]}
    assert list(speed) == ["dense", "shrunk"]
    assert speed["shrunk"]["macs"] == rows["shrunk"]["macs"]
    assert set(speed["dense"]["int8_ms"]) == {"1", "2"}
    assert "## Speed (TFLite, batch 1" in result.markdown
    assert (tmp_path / "export" / "speed" / "shrunk_int8.tflite").exists()


@pytest.mark.slow  # trains two stages, twice (the second run loads them)
def test_keras3_models_go_teacher_distill_prune_int8_report(tmp_path, caplog):
    config = Config(
        model_dir=str(tmp_path),
        keras="3",
        teacher="train",
        teacher_learning_rate=2e-3,
        prune=True,
        sparsity_m_by_n="2:4",
        export=("tflite", "tflite_int8"),
        **QUICK,
    )
    with caplog.at_level(logging.INFO, logger="tfopt"):
        first = pipeline.run(config)
    assert [row["artifact"] for row in first.rows] == [
        "teacher",
        "distilled+pruned",
        "tflite",
        "tflite_int8",
    ]
    teacher, student, tflite, int8 = first.rows
    assert student["sparsity"] == pytest.approx(0.5, abs=0.01)  # 2:4 on Keras 3
    assert abs(int8["accuracy"] - tflite["accuracy"]) <= 0.02
    assert tflite["accuracy"] == pytest.approx(student["accuracy"], abs=1e-6)
    assert student["macs"] == measure.macs(
        models.build("student_cnn", (8, 8), 10, keras_version=2)
    )
    assert (
        "keras"
        in json.loads((tmp_path / "report.json").read_text())["environment"]["versions"]
    )
    # The teacher trained at its own rate, the peak of its stage's schedule,
    # as its saved compile config says (a distilled student is saved without
    # the Distiller's optimizer; tests/test_recipe.py checks every stage's).
    with zipfile.ZipFile(tmp_path / "checkpoints" / "teacher.keras") as saved:
        compiled = json.loads(saved.read("config.json"))["compile_config"]
    schedule = compiled["optimizer"]["config"]["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    assert schedule["config"]["warmup_target"] == pytest.approx(2e-3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfopt"):
        again = pipeline.run(config)
    assert "finished earlier" in caplog.text
    assert _without_latency(again.rows) == _without_latency(first.rows)


def test_an_unreachable_mac_target_is_refused_before_training(tmp_path):
    # Once found only after the baseline had trained, as a 30-line traceback.
    config = Config(
        model_dir=str(tmp_path / "run"),
        model="student_cnn",
        prune=True,
        prune_structure="channels",
        prune_measure="macs",
        target_sparsity=0.9,
        **QUICK,
    )
    with pytest.raises(ConfigError) as caught:
        pipeline.run(config)
    assert str(caught.value) == (
        "`target_sparsity=0.9` must be at most 0.832 with `prune_measure=macs` "
        "and `prune_round_to=8`: removing every prunable channel of student_cnn "
        "cuts only that fraction of its macs."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_keras3_prune_qat_int8_and_saved_model(tmp_path):
    config = Config(
        model_dir=str(tmp_path),
        keras="3",
        model="student_cnn",
        prune=True,
        target_sparsity=0.5,
        qat=True,
        qat_epochs=1,
        export=("tflite_int8", "saved_model"),
        **QUICK,
    )
    result = pipeline.run(config)
    rows = {row["artifact"]: row for row in result.rows}
    assert list(rows) == ["baseline", "pruned", "qat", "tflite_int8", "saved_model"]
    # QAT kept the pruned zeros, and the int8 file computes what QAT did.
    assert rows["qat"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert abs(rows["tflite_int8"]["accuracy"] - rows["qat"]["accuracy"]) <= 0.02
    ops = tfopt.export.tflite_ops(str(tmp_path / "export" / "model_int8.tflite"))
    assert (ops.quantize, ops.dequantize, ops.float_ops) == (1, 1, ())
    assert (tmp_path / "export" / "saved_model" / "saved_model.pb").exists()
