"""scripts/train.py end to end, in-process (absl flagsaver) on digits, plus
kill-and-resume and flag errors in real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from absl.testing import flagsaver

from scripts import train
from tests.support.cluster import ROOT

FLAGS = flags.FLAGS
QUICK = {
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 32,
    "teacher_epochs": 3,
    "learning_rate": 5e-3,
    "alpha": 0.5,
    "deterministic": False,
}


@pytest.fixture(autouse=True, scope="module")
def parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS(["train.py"])


def _train(model_dir, **overrides):
    with flagsaver.flagsaver(model_dir=str(model_dir), **{**QUICK, **overrides}):
        train.main(["train.py"])
    with open(os.path.join(model_dir, "report.json")) as file:
        return {row["artifact"]: row for row in json.load(file)["rows"]}


def _files_written(model_dir):
    for name in ("report.json", "report.md", "report.png", "config.json"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert os.listdir(os.path.join(model_dir, "logs"))
    assert os.listdir(os.path.join(model_dir, "checkpoints"))


@pytest.mark.slow
def test_pruning_only(tmp_path):
    rows = _train(tmp_path, prune=True, target_sparsity=0.7)
    _files_written(tmp_path)
    assert list(rows) == ["baseline", "pruned", "tflite", "tflite_int8"]
    assert rows["pruned"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert rows["pruned"]["nonzero_params"] < 0.4 * rows["pruned"]["params"]
    assert rows["baseline"]["accuracy"] > 0.8
    assert abs(rows["tflite_int8"]["accuracy"] - rows["pruned"]["accuracy"]) <= 0.02
    assert rows["tflite_int8"]["gzip_ratio"] > 3


@pytest.mark.slow
def test_qat_only(tmp_path):
    rows = _train(tmp_path, qat=True, export=["tflite_int8", "saved_model"])
    assert list(rows) == ["baseline", "qat", "tflite_int8", "saved_model"]
    assert abs(rows["tflite_int8"]["accuracy"] - rows["qat"]["accuracy"]) <= 0.02
    assert rows["saved_model"]["accuracy"] == pytest.approx(rows["qat"]["accuracy"])
    assert rows["tflite_int8"]["size_bytes"] < rows["baseline"]["size_bytes"]


@pytest.mark.slow
def test_distillation_only(tmp_path):
    rows = _train(tmp_path, teacher="train", export=["tflite_float16"])
    # The reference row of a distilled run is the teacher, named so.
    assert list(rows) == ["teacher", "distilled", "tflite_float16"]
    assert rows["teacher"]["params"] > 8 * rows["distilled"]["params"]
    assert rows["distilled"]["accuracy"] > 0.5
    drop = rows["distilled"]["accuracy"] - rows["tflite_float16"]["accuracy"]
    assert abs(drop) <= 0.02


@pytest.mark.slow  # every stage under a 2-replica strategy: 20 s
def test_all_combined_under_mirrored(tmp_path):
    rows = _train(
        tmp_path, teacher="train", prune=True, qat=True, strategy="mirrored", epochs=3
    )
    assert list(rows) == ["teacher", "distilled+pruned", "qat", "tflite", "tflite_int8"]
    assert rows["distilled+pruned"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert rows["qat"]["sparsity"] == pytest.approx(0.8, abs=0.01)  # PQAT
    assert abs(rows["tflite_int8"]["accuracy"] - rows["qat"]["accuracy"]) <= 0.02
    table = (tmp_path / "report.md").read_text()
    assert "| distilled+pruned |" in table and "gzip ratio" in table
    # Re-running the finished command redoes nothing and reports the same.
    start = time.monotonic()
    again = _train(
        tmp_path, teacher="train", prune=True, qat=True, strategy="mirrored", epochs=3
    )
    assert again["qat"]["accuracy"] == rows["qat"]["accuracy"]
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy": "tpu"}, r"^error: --strategy=tpu needs --tpu"),
        (
            {"teacher": "/no/such/teacher.keras"},
            r"^error: --teacher=/no/such/teacher.keras does not exist",
        ),
        (
            {"strategy": "mirrored", "batch_size": 33, "prune": True},
            r"^error: --batch_size=33 must divide evenly over the 2 replicas",
        ),
    ],
)
def test_bad_settings_exit_before_training(tmp_path, overrides, message):
    with pytest.raises(SystemExit, match=message):
        _train(tmp_path / "run", **overrides)
    assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
        tmp_path / "run" / "checkpoints"
    )


def test_a_refused_batch_size_leaves_no_run_behind(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --batch_size=33 must divide"):
        _train(tmp_path / "run", strategy="mirrored", batch_size=33)
    assert not (tmp_path / "run").exists()
    with pytest.raises(
        SystemExit,
        match=(
            r"^error: --batch_size=4000 must be at most the 1295 training examples "
            r"of --dataset=digits.$"
        ),
    ):
        _train(tmp_path / "run", batch_size=4000, prune=True)
    assert not (tmp_path / "run").exists()


PS_CLUSTER = {
    "cluster": {
        "chief": ["127.0.0.1:1"],
        "worker": ["127.0.0.1:2"],
        "ps": ["127.0.0.1:3"],
    }
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "tf_config, overrides, message",
    [
        (
            {**PS_CLUSTER, "task": {"type": "chief", "index": 0}},
            {},
            r"^error: scripts/train.py does not run parameter-server training .*"
            r"run it with --strategy=multi_worker and a TF_CONFIG of 'worker' "
            r"tasks only. The library supports parameter servers",
        ),
        (
            {**PS_CLUSTER, "task": {"type": "ps", "index": 0}},
            {"strategy": "multi_worker"},
            r"^error: scripts/train.py does not run parameter-server training",
        ),
        (
            None,
            {"strategy": "parameter_server"},
            r"^error: scripts/train.py does not run parameter-server training",
        ),
        (
            None,
            {"strategy": "multi_worker"},
            r"^error: `name`='multi_worker' needs a cluster: set TF_CONFIG on every "
            r"worker, or run the job as a SLURM step \(srun\)",
        ),
        ("", {}, r"^error: TF_CONFIG is set but empty. Unset it"),
        (
            None,
            {"tpu": "local"},
            r"^error: Could not connect to the TPU at "
            r"tpu='local' \(.*\)\. this machine has no TPU",
        ),
        # Keras 3 models meet the TPU boundary as tf_keras ones do.
        (
            None,
            {"tpu": "local", "keras": "3"},
            r"^error: Could not connect to "
            r"the TPU at tpu='local' \(.*\)\. this machine has no TPU",
        ),
        (
            {
                "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                "task": {"type": "worker", "index": 1},
            },
            {"strategy": "mirrored"},
            r"^error: --strategy=mirrored trains in this process alone, but "
            r"TF_CONFIG names 2 workers, which would all write --model_dir: use "
            r"--strategy=multi_worker \(or auto\), or run without the cluster.$",
        ),
    ],
)
def test_cluster_misconfiguration_exits_before_any_work(
    tmp_path, monkeypatch, tf_config, overrides, message
):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv(
            "TF_CONFIG",
            tf_config if isinstance(tf_config, str) else json.dumps(tf_config),
        )
    with pytest.raises(SystemExit, match=message):
        _train(tmp_path / "run", **overrides)
    assert not (tmp_path / "run").exists()


def test_model_dir_guards(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(SystemExit, match=r"^error: --model_dir=.*file is a file"):
        _train(a_file, prune=True)
    assert a_file.read_text() == "mine"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"other": "run"}))
    with pytest.raises(
        SystemExit,
        match=(
            r"^error: --model_dir=.*run holds a run with other flags; use a new "
            r"directory, or --overwrite to replace it.$"
        ),
    ):
        _train(run_dir, prune=True)
    assert json.loads((run_dir / "config.json").read_text()) == {"other": "run"}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(
            SystemExit,
            match=(
                r"^error: --model_dir=.*mine holds files but no tfopt run \(no "
                r"config.json\); give a new or empty directory.$"
            ),
        ):
            _train(mine, prune=True, overwrite=overwrite)
    assert (mine / "notes.txt").read_text() == "keep"


def _script(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--strategy=mirror",
            "value should be one of <auto|default|one_device|"
            "mirrored|multi_worker|tpu|parameter_server>",
        ),
        (
            "--export=onnx",
            "--export takes a comma list of saved_model, tflite, "
            "tflite_int8, tflite_float16",
        ),
    ],
)
def test_unknown_flag_values_list_the_valid_ones(tmp_path, flag, message):
    proc = _script(f"--model_dir={tmp_path}", flag)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert message in out


def _quick_script(*args):
    """scripts/train.py run to completion; (return code, output)."""
    proc = _script(*args)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_flags_are_checked_before_tensorflow_is_imported(tmp_path):
    # A typo once took 12-17 s to be reported: TensorFlow was imported first.
    probe = (
        "import sys; import scripts.train; "
        "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.split() == ["False", "False"], out.stderr
    code, out = _quick_script(f"--model_dir={tmp_path / 'run'}", "--epocs=3")
    assert code == 1 and "Unknown command line flag 'epocs'" in out
    assert not (tmp_path / "run").exists()


def test_an_error_is_printed_once(tmp_path):
    code, out = _quick_script(
        f"--model_dir={tmp_path / 'run'}", "--prune", "--target_sparsity=0"
    )
    assert code == 1
    # Once an absl "E..." log line and the same text again.
    assert out.strip().splitlines() == [
        "error: --target_sparsity=0.0 must be in (0, 1) with --prune: the "
        "fraction of weights pruned."
    ]
    assert not (tmp_path / "run").exists()


def test_help_lists_the_main_flags():
    _, out = _quick_script("--help")  # absl exits with 1 after the usage
    for flag in (
        "--model_dir",
        "--prune",
        "--target_sparsity",
        "--qat",
        "--teacher",
        "--strategy",
        "--export",
    ):
        assert flag in out, flag


@pytest.mark.slow
def test_the_main_job_prints_stage_lines_and_no_tensorflow_noise(tmp_path):
    # `make demo` once printed 81 lines: TensorFlow's C++ banner twice,
    # cuInit's error on a CPU machine, INFO lines of SavedModel and the
    # converter, and two lines per epoch without saying which stage ran.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            f"--model_dir={tmp_path}",
            "--dataset=digits",
            "--teacher=train",
            "--teacher_epochs=2",
            "--epochs=3",
            "--prune",
            "--qat",
            "--batch_size=32",
            "--export=tflite,tflite_int8",
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = (out.stdout + out.stderr).splitlines()
    banners = [line for line in lines if line.startswith("[")]
    assert banners == [
        "[1/4] train teacher teacher_cnn, 2 epochs",
        "[2/4] distill + prune student_cnn ← teacher_cnn, 3 epochs",
        "[3/4] quantization-aware training, 1 epochs",
        "[4/4] evaluate and export tflite, tflite_int8",
    ]
    assert sum("      epoch " in line for line in lines) == 2 + 3 + 1
    noise = [
        line
        for line in lines
        if line[:5] in ("I0000", "W0000", "E0000")
        or line.startswith(("WARNING: All log", "I1", "W1", "E1"))
    ]
    assert noise == []
    assert len(lines) <= 35, "\n".join(lines)
    assert "| teacher | " in out.stdout


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_report(tmp_path):
    args = [
        "--dataset=digits",
        "--prune",
        "--epochs=3",
        "--batch_size=32",
        "--export=tflite_int8",
        "--target_sparsity=0.6",
    ]
    whole = _script(f"--model_dir={tmp_path / 'whole'}", *args)
    victim = _script(f"--model_dir={tmp_path / 'resumed'}", *args)
    index = tmp_path / "resumed" / "checkpoints" / "pruned" / "checkpoint"
    deadline = time.monotonic() + 300
    while not index.exists() and victim.poll() is None:
        assert time.monotonic() < deadline, "no pruned-stage checkpoint appeared"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "resumed" / "report.json").exists()
    resumed = _script(f"--model_dir={tmp_path / 'resumed'}", *args)
    outputs = [p.communicate(timeout=300)[0] for p in (whole, resumed)]
    assert [whole.returncode, resumed.returncode] == [0, 0], outputs
    assert "[1/3] train student_cnn, 3 epochs: finished earlier" in outputs[1]
    assert "resuming after epoch" in outputs[1]
    reports = [
        json.loads((tmp_path / d / "report.json").read_text())["rows"]
        for d in ("whole", "resumed")
    ]
    # Every figure but the latency, sizes included: a stage trained in this
    # process and one loaded from disk are measured the same way (from
    # disk). They once differed by up to 11,000 B.
    for a, b in zip(*reports, strict=True):
        assert {k: v for k, v in a.items() if k != "latency_ms_per_example"} == {
            k: v for k, v in b.items() if k != "latency_ms_per_example"
        }


@pytest.fixture(scope="module")
def saved_model_file(tmp_path_factory, digits):
    import tfopt

    keras = tfopt.keras
    keras.utils.set_random_seed(0)
    model = tfopt.models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2)
    model.compile(
        optimizer="adam",
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(digits.train, epochs=3, verbose=0)
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_export_script_exports_and_verifies(saved_model_file, tmp_path, capsys):
    from scripts import export as export_script

    with flagsaver.flagsaver(
        input=str(saved_model_file),
        output_dir=str(tmp_path),
        dataset="digits",
        export=["tflite", "tflite_int8", "saved_model"],
    ):
        export_script.main(["export.py"])
        table = capsys.readouterr().out
        assert "| tflite_int8 |" in table and "| saved_model |" in table
        assert (tmp_path / "model_int8.tflite").stat().st_size < (
            tmp_path / "model_float32.tflite"
        ).stat().st_size
        with pytest.raises(SystemExit, match=r"^error: `path` already exists"):
            export_script.main(["export.py"])  # no --overwrite: refuse


def test_export_script_fails_when_an_export_loses_accuracy(
    saved_model_file, tmp_path, digits
):
    import tfopt
    from scripts import export as export_script

    model = tfopt.load_model(saved_model_file)
    with pytest.raises(
        RuntimeError,
        match=(r"^exports lost more than --max_accuracy_drop=-1.0: tflite "),
    ):
        export_script.export_and_verify(
            model,
            digits,
            ["tflite"],
            str(tmp_path),
            overwrite=False,
            max_drop=-1.0,
            batch_size=32,
        )


def test_export_script_needs_an_existing_input(tmp_path):
    from scripts import export as export_script

    with flagsaver.flagsaver(
        input=str(tmp_path / "nope.keras"), output_dir=str(tmp_path)
    ):
        with pytest.raises(
            SystemExit,
            match=r"^error: --input=.*nope.keras does "
            r"not exist",
        ):
            export_script.main(["export.py"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"dataset": "imagenet"},
            r"^error: --dataset=imagenet must be one of "
            r"digits, mnist5k, mnist, fashion_mnist, cifar10, "
            r"tfds:NAME, images:DIR, tfrecord:GLOB or module.path:function.$",
        ),
        (
            {"sparsity_m_by_n": "4:2", "prune": True},
            r"^error: --sparsity_m_by_n=4:2 must look like 2:4 \(m zeros in every n "
            r"weights, 0 < m < n\).$",
        ),
        (
            {"pruning_begin": 0.9, "pruning_end": 0.5},
            r"^error: --pruning_begin=0.9 must be below --pruning_end=0.5.$",
        ),
        # Once passed, trained the whole baseline stage, then died.
        (
            {"prune": True, "target_sparsity": 0.0},
            r"^error: --target_sparsity=0.0 must be in \(0, 1\) with --prune",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_before_any_file(
    tmp_path, overrides, message
):
    with pytest.raises(SystemExit, match=message):
        _train(tmp_path / "run", **overrides)
    assert not (tmp_path / "run").exists()


def test_export_flag_lists_the_formats():
    with pytest.raises(
        flags.IllegalFlagValueError, match=r"--export takes a comma list of saved_model"
    ):
        with flagsaver.flagsaver(export=["onnx"]):
            pass


def test_model_dir_is_required():
    with flagsaver.flagsaver(model_dir=None, **QUICK):
        with pytest.raises(SystemExit, match=r"^error: --model_dir is required"):
            train.main(["train.py"])
    with pytest.raises(Exception, match="Unexpected arguments: extra"):
        train.main(["train.py", "extra"])


@pytest.mark.slow
def test_gpu_check_refuses_at_once_without_a_gpu(tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: `make gpu-check` runs the real thing")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", f"--output={tmp_path / 'gpu.json'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        "error: TensorFlow sees no GPU here, so there is nothing to check. Run this "
        "on a CUDA machine after `pip install 'tensorflow[and-cuda]==2.21.*'` "
        "(make gpu-check does that)."
    )
    assert not (tmp_path / "gpu.json").exists()
