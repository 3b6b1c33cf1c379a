"""The README's quickstart must keep running."""

import os
import subprocess
import sys

import pytest

from tests.support.cluster import ROOT


@pytest.mark.slow
def test_quickstart_runs_and_reports_accuracy():
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(
        "mnist5k: 3600 training images, 20,410 parameters, test accuracy 0."
    )
    assert float(line.rsplit(" ", 1)[1]) > 0.7


@pytest.mark.slow
def test_keras3_example_runs_without_tf_keras():
    # As on a user's machine: this process set TF_USE_LEGACY_KERAS=1 (it uses
    # tf_keras), which would make TensorFlow load tf_keras itself.
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}
    result = subprocess.run(
        [sys.executable, "examples/keras3.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("sparsity 0.80, int8 test accuracy 0.")
    assert line.endswith("tf_keras/TFMOT loaded: none")
    assert float(line.split("accuracy ")[1].split(",")[0]) > 0.8
