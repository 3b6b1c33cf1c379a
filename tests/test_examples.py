"""The README's quickstart must keep running."""

import copy
import dataclasses
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


def _own_model_commands():
    """The argument lists of the README's "Compress your own model" commands."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text.split("## Compress your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(block.replace("\\\n", " "))[2:] for block in blocks]


def test_the_readme_tpu_command_is_accepted_by_the_flags():
    from absl import flags

    from tfopt.job import flags as tfopt_flags
    from tfopt.job.config import Config

    tfopt_flags.define_all()
    _, tpu = _own_model_commands()
    # A copy of the job's flags, parsed apart from this process's own.
    values = flags.FlagValues()
    fields = dataclasses.fields(Config)
    for field in fields:
        values[field.name] = copy.deepcopy(tfopt_flags.FLAGS[field.name])
    values(["train.py", *tpu])
    config = Config(
        **{
            f.name: tuple(values[f.name].value)
            if f.metadata["kind"] == "list"
            else values[f.name].value
            for f in fields
        }
    ).check()
    assert (config.model_spec.kind, config.strategy) == ("file", "tpu")
    assert config.dataset.startswith("tfrecord:gs://")


@pytest.mark.slow
def test_the_readme_own_model_command_runs_as_written(tmp_path):
    import keras

    from tests.support import userdata

    own, _ = _own_model_commands()
    userdata.trained(keras).save(tmp_path / "my_model.keras")
    userdata.image_folder(tmp_path / "my_images", *userdata.digits())
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *own],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "0"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| given | " in result.stdout
    assert (tmp_path / "runs" / "my_model" / "export" / "model_int8.tflite").exists()
