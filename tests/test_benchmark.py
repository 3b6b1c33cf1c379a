import gzip
import json
import math

import pytest

from scripts import benchmark


def test_median_ratio():
    assert benchmark.median_ratio([1.0, 9.0, 2.0], [1.0, 1.0, 4.0]) == 2.0
    assert benchmark.median_ratio([3.0], [2.0]) == 1.5


def test_gzip_size_of_a_file_and_a_directory(tmp_path):
    data = b"tfopt " * 1000
    (tmp_path / "a").write_bytes(data)
    expected = len(gzip.compress(data, compresslevel=9))
    assert benchmark.gzip_size(str(tmp_path / "a")) == expected
    (tmp_path / "b").write_bytes(data)
    assert benchmark.gzip_size(str(tmp_path)) == 2 * expected


def test_interleaved_alternates_after_a_warm_up():
    calls = []
    times = benchmark.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def _finite(value):
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


# `recovery` is the main job run eight times (tests/test_pipeline.py runs it);
# its numbers are checked below from a recorded result instead. `recipe` has
# its own test.
QUICK_SUITES = tuple(s for s in benchmark.SUITES if s not in ("recovery", "recipe"))


@pytest.mark.slow
def test_quick_run_has_every_section_with_finite_numbers(tmp_path):
    output = tmp_path / "benchmark.json"
    results = benchmark.collect(QUICK_SUITES, quick=True, output=str(output))
    saved = json.loads(output.read_text())
    for suite in QUICK_SUITES:
        assert saved[suite], suite
    for speed in (
        saved["speed"]["student_cnn"],
        saved["keras3"]["speed"]["student_cnn"],
    ):
        assert set(speed) == {"mac_cut_target", "dense", "channels", "magnitude_80"}
        assert speed["channels"]["mac_cut"] >= 1.5
        assert speed["magnitude_80"]["macs"] == speed["dense"]["macs"]
    assert _finite(saved)
    assert set(saved["compression"]) == {
        "baseline",
        "pruned_80",
        "pruned_90",
        "pruned_2_4",
        "qat",
    }
    assert saved["compression"]["pruned_80"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    metrics = [row[0] for row in saved["checks"]]
    assert "overhead/tfmot_mnist/tfopt_prune_vs_tfmot" in metrics
    assert "parity/qat_max_abs_diff" in metrics
    assert "keras3/tfmot_mnist/prune_vs_float" in metrics
    assert "keras3/student_cnn/int8_vs_float_accuracy" in metrics
    assert saved["keras3"]["int8"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert {"inputs/images_vs_memory", "inputs/tfrecord_vs_memory"} <= set(metrics)
    # Every variant trained the same model on the same number of examples.
    steps = saved["inputs"]["steps_per_epoch"]
    assert max(steps.values()) - min(steps.values()) <= 2
    table = benchmark.markdown(results)
    assert table.startswith("| metric | measured | target | met |")


def test_speed_and_recovery_targets_are_checked():
    def timed(ms):
        return {"float32_ms": {"1": ms, "2": ms}, "int8_ms": {"1": ms, "2": ms}}

    speedup = {"float32": {"1": 1.6, "2": 1.4}, "int8": {"1": 1.35, "2": 1.2}}
    speed = {
        "mobilenet_v2_96": {
            "mac_cut_target": 1.75,
            "dense": timed(1.0),
            "channels": {**timed(0.6), "speedup": speedup},
            "magnitude_80": {**timed(1.0), "speedup": speedup},
        }
    }
    results = {
        "speed": speed,
        "keras3": {"speed": speed},
        "recovery": {
            "channels_1.5x_macs": {
                "student_cnn": {
                    "with_recovery": {"drop": 0.004},
                    "without_recovery": {"drop": 0.02},
                }
            },
            "unstructured_80_int8": {"with_recovery": {"mean_drop": 0.02}},
        },
    }
    checks = {row[0]: row[1:] for row in benchmark._checks(results)}
    assert checks == {
        "speed/mobilenet_v2_96/channels_float32_1_thread_speedup": (1.6, 1.5, True),
        "speed/mobilenet_v2_96/channels_float32_2_thread_speedup": (1.4, 1.5, False),
        "speed/mobilenet_v2_96/channels_int8_1_thread_speedup": (1.35, 1.3, True),
        "speed/mobilenet_v2_96/channels_int8_2_thread_speedup": (1.2, 1.3, False),
        **{
            f"keras3/speed/mobilenet_v2_96/channels_{kind}_{t}_thread_speedup": value
            for kind, t, value in (
                ("float32", 1, (1.6, 1.5, True)),
                ("float32", 2, (1.4, 1.5, False)),
                ("int8", 1, (1.35, 1.3, True)),
                ("int8", 2, (1.2, 1.3, False)),
            )
        },
        "recovery/student_cnn/channels_1.5x_macs_drop": (0.004, 0.01, True),
        "recovery/student_cnn/unstructured_80_int8_mean_drop": (0.02, 0.01, False),
    }


@pytest.mark.slow  # the main job three times, two library recipes
def test_the_recipe_suite_in_quick_mode(tmp_path):
    output = tmp_path / "benchmark.json"
    benchmark.collect(("recipe",), quick=True, output=str(output))
    saved = json.loads(output.read_text())["recipe"]
    assert _finite(saved)
    library = saved["library"]
    assert set(library) == {
        "epochs",
        "readme_int8",
        "tutorial_int8",
        "readme_minus_tutorial",
        "per_seed_difference",
        "wall_time_ratio",
    }
    # Quick mode: the digits, one epoch each; above chance (0.1) is enough.
    assert 0.2 < library["readme_int8"]["mean"] <= 1.0
    assert library["wall_time_ratio"] > 0
    job = saved["job"]["tfmot_mnist_80_int8"]
    assert job["vs_control"]["mean"] == pytest.approx(
        job["int8"]["mean"] - job["dense_control"]["mean"]
    )
    assert job["gzip_ratio"]["mean"] > 2  # the digits' 8x8 model: a small file
    assert job["flags"] == {"target_sparsity": 0.8, "epochs": 1}
    metrics = {row[0] for row in json.loads(output.read_text())["checks"]}
    assert metrics == {
        "recipe/tfmot_mnist_80_int8/int8_vs_dense_control",
        "recipe/tfmot_mnist_80_int8/gzip_ratio",
        "recipe/tfmot_mnist/readme_minus_tutorial_int8",
        "recipe/tfmot_mnist/readme_wall_time_vs_tutorial",
    }


def test_recipe_targets_are_checked():
    def summary(mean):
        return {"values": [mean], "mean": mean, "spread": 0.0}

    results = {
        "recipe": {
            "job": {
                "tfmot_mnist_80_int8": {
                    "vs_control": summary(-0.009),
                    "gzip_ratio": summary(9.8),
                },
                "resnet_tiny_channels_1.5x_int8_10_epochs": {
                    "vs_control": summary(-0.02),
                    "mac_cut": summary(1.6),
                },
                # Report only: its Δ has no target, its MAC cut has.
                "resnet_tiny_channels_1.5x_int8": {
                    "vs_control": summary(-0.03),
                    "mac_cut": summary(1.4),
                },
            },
            "library": {"readme_minus_tutorial": 0.012, "wall_time_ratio": 1.25},
        }
    }
    checks = {row[0]: row[1:] for row in benchmark._checks(results)}
    assert checks == {
        "recipe/tfmot_mnist_80_int8/int8_vs_dense_control": (-0.009, -0.01, True),
        "recipe/tfmot_mnist_80_int8/gzip_ratio": (9.8, 10.0, False),
        "recipe/resnet_tiny_channels_1.5x_int8_10_epochs/int8_vs_dense_control": (
            -0.02,
            -0.01,
            False,
        ),
        "recipe/resnet_tiny_channels_1.5x_int8_10_epochs/mac_cut": (1.6, 1.5, True),
        "recipe/resnet_tiny_channels_1.5x_int8/mac_cut": (1.4, 1.5, False),
        "recipe/tfmot_mnist/readme_minus_tutorial_int8": (0.012, 0.01, True),
        "recipe/tfmot_mnist/readme_wall_time_vs_tutorial": (1.25, 1.2, False),
    }
