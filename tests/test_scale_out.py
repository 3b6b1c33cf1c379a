"""tfopt across processes, as users run it: scripts/train.py as two workers on
127.0.0.1 (every stage, then killed and resumed), the README's device
pattern in both call orders, and logged metrics that do not depend on how
the global batch is split."""

import json
import re
import signal
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import cluster, helpers, parity

# The teacher is tfmot_mnist, which has no BatchNorm or Dropout: those run
# per replica, so with them no two replica counts train the same model.
# tf_keras here (Keras 3, the default, below: K3_ARGS).
ARGS = [
    "--keras=2",
    "--dataset=digits",
    "--teacher=train",
    "--teacher_model=tfmot_mnist",
    "--prune",
    "--qat",
    "--epochs=3",
    "--teacher_epochs=1",
    "--qat_epochs=1",
    "--batch_size=32",
    "--export=tflite_int8",
]
TIMEOUT = 240


def _digests(output):
    return dict(re.findall(r"stage (\w+): \d+ epochs in .* \(weights (\w+)\)", output))


def _rows(model_dir):
    report = json.loads((model_dir / "report.json").read_text())
    return report, {row["artifact"]: row for row in report["rows"]}


def _slurm_step(tasks):
    """What srun sets for a step of `tasks` tasks on this one node."""
    return [
        {
            "SLURM_PROCID": str(i),
            "SLURM_STEP_NUM_TASKS": str(tasks),
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": str(tasks),
        }
        for i in range(tasks)
    ]


def _ports_free(*ports):
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _two_workers(tmp_path, name, attempt=0, slurm=False):
    logs = tmp_path / f"{name}-logs-{attempt}"
    logs.mkdir(parents=True)
    envs = _slurm_step(2) if slurm else cluster.cluster_envs({"worker": 2})
    procs = cluster.start_script(
        "train", [f"--model_dir={tmp_path / name}", *ARGS], envs, logs
    )
    return procs, logs


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted 2-worker run: a SLURM step where its ports (8888 and
    8889, TensorFlow's SLURM resolver's) are free, as the kill test uses
    TF_CONFIG, so both are covered; else TF_CONFIG."""
    tmp_path = tmp_path_factory.mktemp("whole")
    procs, logs = _two_workers(tmp_path, "run", slurm=_ports_free(8888, 8889))
    codes, outputs = cluster.wait_all(procs, logs, TIMEOUT)
    assert codes == [0, 0], outputs
    return tmp_path / "run", outputs


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same flags and global batch in one process."""
    tmp_path = tmp_path_factory.mktemp("single")
    [proc] = cluster.start_script(
        "train",
        [f"--model_dir={tmp_path / 'run'}", "--strategy=default", *ARGS],
        [{}],
        tmp_path,
    )
    codes, outputs = cluster.wait_all([proc], tmp_path, TIMEOUT)
    assert codes == [0], outputs
    return tmp_path / "run"


@pytest.mark.slow
def test_train_py_on_two_workers_matches_one_process(whole, single):
    model_dir, outputs = whole
    # Both workers trained the same weights, stage by stage.
    digests = [_digests(out) for out in outputs]
    assert set(digests[0]) == {"teacher", "distilled", "qat"}
    assert digests[0] == digests[1]
    # The chief wrote the run; worker 1 wrote only to its own directory, and
    # deleted it.
    assert "# tfopt report" in outputs[0] and "# tfopt report" not in outputs[1]
    assert "worker 1 done; the chief wrote the report to" in outputs[1]
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "checkpoints",
        "config.json",
        "export",
        "logs",
        "report.json",
        "report.md",
        "report.png",
    ]
    report, rows = _rows(model_dir)
    env = report["environment"]
    assert (env["strategy"], env["replicas"], env["workers"], env["task"]) == (
        "multi_worker",
        2,
        2,
        "worker 0",
    )
    assert set(env["stage_seconds"]) >= {"teacher", "distilled", "qat", "total"}
    assert env["command"].startswith("scripts/train.py --model_dir=")
    assert env["versions"]["tfopt"] == tfopt.__version__

    _, single_rows = _rows(single)
    # The all-reduce adds the two half-batch gradients in another order than
    # one device sums the batch: weights agree to ~1e-7, which can flip the
    # argmax of a borderline test example, so accuracies may differ by one
    # example (measured: equal).
    test_size = report["dataset"]["test_size"]
    assert rows.keys() == single_rows.keys()
    for name, row in rows.items():
        assert abs(row["accuracy"] - single_rows[name]["accuracy"]) <= (
            1 / test_size + 1e-9
        ), name
        assert row["nonzero_params"] == single_rows[name]["nonzero_params"], name
    # Adam divides each update by the gradient's running RMS: where a
    # gradient is near zero, a ~1e-7 rounding difference changes a whole
    # step of the learning rate (at most 6e-3, the cosine's peak). Measured
    # over the ~200 steps of the three stages at a constant 3e-3: at most
    # 3.2e-4, on weights of about 0.2.
    two = tfopt.load_model(model_dir / "checkpoints" / "qat.keras")
    one = tfopt.load_model(single / "checkpoints" / "qat.keras")
    for a, b in zip(two.get_weights(), one.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_a_lost_worker_stops_the_other_and_both_resume(whole, tmp_path, victim):
    procs, logs = _two_workers(tmp_path, "run")
    index = tmp_path / "run" / "checkpoints" / "distilled" / "checkpoint"
    deadline = time.monotonic() + TIMEOUT
    while not index.exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, (
            "no distilled-stage checkpoint appeared"
        )
        time.sleep(0.1)
    # Worker 0 is the chief, which also hosts the coordination service.
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    codes, outputs = cluster.wait_all(procs, logs, 120)
    assert time.monotonic() - killed < 90
    survivor = 1 - victim
    assert codes[survivor] == 1
    assert re.search(
        rf"error: lost worker task {victim} at 127\.0\.0\.1:\d+ of this 2-worker "
        rf"cluster \(\w+Error\); this is worker {survivor}\. Re-run the same "
        "command on every worker to resume",
        outputs[survivor],
    ), outputs[survivor][-3000:]
    assert not (tmp_path / "run" / "report.json").exists()

    procs, logs = _two_workers(tmp_path, "run", attempt=1)
    codes, outputs = cluster.wait_all(procs, logs, TIMEOUT)
    assert codes == [0, 0], outputs
    assert "[1/4] train teacher tfmot_mnist, 1 epochs: finished earlier" in outputs[0]
    assert "resuming after epoch" in outputs[0]
    assert not (tmp_path / "run" / "workertemp_1").exists()
    _, resumed = _rows(tmp_path / "run")
    _, uninterrupted = _rows(whole[0])
    assert resumed.keys() == uninterrupted.keys()
    for name, row in resumed.items():
        for key in ("accuracy", "params", "nonzero_params"):
            assert row[key] == uninterrupted[name][key], (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other_flags", "chief_refuses", "batch"])
def test_all_workers_stop_together_when_one_cannot_run(tmp_path, case):
    model_dir = tmp_path / "run"
    extra, args = None, []
    if case == "other_flags":
        extra = {1: ["--seed=1"]}
    elif case == "batch":
        args = ["--batch_size=4000"]
    else:
        (model_dir / "workertemp_1").mkdir(parents=True)
        (model_dir / "workertemp_1" / "notes.txt").write_text("keep")
        (model_dir / "config.json").write_text('{"other": "run"}')
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = cluster.start_script(
        "train",
        [f"--model_dir={model_dir}", *ARGS, *args],
        cluster.cluster_envs({"worker": 2}),
        logs,
        extra,
    )
    start = time.monotonic()
    codes, outputs = cluster.wait_all(procs, logs, 120)
    assert codes == [1, 1], outputs
    assert time.monotonic() - start < 60
    if case == "other_flags":
        for output in outputs:
            assert (
                "error: the workers were started with different flags; start "
                "every worker with the same command."
            ) in output
    elif case == "batch":
        for output in outputs:
            assert "error: --batch_size=4000 must be at most the 1295" in output
    else:
        assert "holds a run with other flags" in outputs[0]
        assert (
            "error: a worker refused the run (its log says why, usually the "
            "chief's about --model_dir)"
        ) in outputs[1]
        assert (model_dir / "config.json").read_text() == '{"other": "run"}'
        assert (model_dir / "workertemp_1" / "notes.txt").read_text() == "keep"
    # Nothing was written unless every worker could run.
    assert case == "chief_refuses" or not model_dir.exists()


K3_ARGS = [
    "--keras=3",
    "--dataset=digits",
    "--teacher=train",
    "--teacher_model=tfmot_mnist",
    "--prune",
    "--sparsity_m_by_n=2:4",
    "--epochs=2",
    "--teacher_epochs=1",
    "--batch_size=32",
    "--export=tflite,tflite_int8",
]


def _keras3_two_workers_and_one(tmp_path, args):
    """scripts/train.py with `args` as two workers (into tmp_path/two) and
    as one process (tmp_path/one), both succeeding; the workers' outputs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    # As on a user's machine: this test process set TF_USE_LEGACY_KERAS=1
    # (it uses tf_keras), which would make TensorFlow load tf_keras itself.
    plain = {"TF_USE_LEGACY_KERAS": "0"}
    procs = cluster.start_script(
        "train",
        [f"--model_dir={tmp_path / 'two'}", *args],
        [{**env, **plain} for env in cluster.cluster_envs({"worker": 2})],
        logs,
    )
    codes, outputs = cluster.wait_all(procs, logs, TIMEOUT)
    assert codes == [0, 0], outputs
    [proc] = cluster.start_script(
        "train",
        [f"--model_dir={tmp_path / 'one'}", "--strategy=default", *args],
        [plain],
        tmp_path,
    )
    codes, single = cluster.wait_all([proc], tmp_path, TIMEOUT)
    assert codes == [0], single
    return outputs


@pytest.mark.slow
def test_keras3_train_py_on_two_workers_matches_one_process(tmp_path):
    outputs = _keras3_two_workers_and_one(tmp_path, K3_ARGS)
    digests = [_digests(out) for out in outputs]
    assert set(digests[0]) == {"teacher", "distilled"}
    assert digests[0] == digests[1]
    assert "worker 1 done; the chief wrote the report to" in outputs[1]
    report, rows = _rows(tmp_path / "two")
    assert (report["environment"]["workers"], list(rows)) == (
        2,
        ["teacher", "distilled+pruned", "tflite", "tflite_int8"],
    )
    # A Keras 3 run loads neither tf_keras nor TFMOT.
    assert {"tf_keras", "tfmot"}.isdisjoint(report["environment"]["versions"])
    _, one = _rows(tmp_path / "one")
    test_size = report["dataset"]["test_size"]
    for name, row in rows.items():
        assert abs(row["accuracy"] - one[name]["accuracy"]) <= 2 / test_size, name
        assert row["nonzero_params"] == one[name]["nonzero_params"], name


def readme_pattern(order):
    """The README's start-up, in `order`; then what changing it says."""
    if order == "devices_first":
        tfopt.configure_devices(logical_cpus=1)
        strategy = tfopt.get_strategy("auto")
    else:
        strategy = tfopt.get_strategy("auto")
        tfopt.configure_devices(logical_cpus=1)
    weights, _ = helpers.train_tiny(strategy)
    try:
        tfopt.configure_devices(logical_cpus=2)
        late = None
    except RuntimeError as err:
        late = str(err)
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return multi, strategy.num_replicas_in_sync, weights, late


@pytest.mark.slow
@pytest.mark.parametrize("order", ["devices_first", "strategy_first"])
def test_readme_device_pattern_works_in_either_order(order):
    results = cluster.run_workers(readme_pattern, order)
    for multi, replicas, _, late in results:
        assert (multi, replicas) == (True, 2)
        assert late.startswith(
            "configure_devices must run before TensorFlow's "
            "first op (before building a model, a data set or "
            "a strategy)"
        )
    for a, b in zip(results[0][2], results[1][2], strict=True):
        np.testing.assert_array_equal(a, b)


def _close(a, b):
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-12)


@pytest.mark.slow
def test_logged_metrics_equal_on_one_process_two_replicas_two_workers(mirrored):
    workers = cluster.run_workers(parity.multi_worker_job)
    single = parity.histories(tfopt.get_strategy("default"))
    replicas = parity.histories(mirrored)
    for name, logs in single.items():
        assert {"loss", "val_loss"} <= set(logs)
        for other in (replicas, workers[0], workers[1]):
            assert other[name].keys() == logs.keys(), name
            for key, values in logs.items():
                values = list(values.values()) if key == "evaluate" else values
                theirs = other[name][key]
                theirs = list(theirs.values()) if key == "evaluate" else theirs
                assert all(_close(a, b) for a, b in zip(values, theirs, strict=True)), (
                    name,
                    key,
                    values,
                    theirs,
                )
    assert {"student_loss", "distillation_loss", "val_student_loss"} <= set(
        single["distiller"]
    )
    assert "sparsity" in single["pruned"]
    assert single["channels"]["sparsity"][-1] == 0.5


def test_a_lost_task_is_named_with_its_address_or_as_a_peer():
    from tfopt import distribute
    from tfopt.job import lockstep

    me = distribute.WorkerInfo(
        "worker", 1, False, 2, {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    )
    err = tf.errors.UnavailableError(
        None,
        None,
        "Collective ops is aborted by: /job:worker/replica:0/task:1 "
        "and /job:worker/replica:0/task:0 is down",
    )
    assert lockstep.lost_task(err, me) == (
        "lost worker task 0 at 10.0.0.1:2222 of this 2-worker cluster "
        "(UnavailableError); this is worker 1. Re-run the same command on every "
        "worker to resume from the last finished epoch."
    )
    silent = tf.errors.CancelledError(None, None, "the step was cancelled")
    assert lockstep.lost_task(silent, me).startswith(
        "lost a peer of this 2-worker cluster (CancelledError); this is worker 1."
    )


@pytest.mark.slow
def test_keras3_channel_pruning_qat_job_on_two_workers_matches_one_process(tmp_path):
    args = [
        "--keras=3",
        "--dataset=digits",
        "--model=resnet_tiny",
        "--prune",
        "--prune_structure=channels",
        "--prune_measure=macs",
        "--target_sparsity=0.3",
        "--qat",
        "--qat_epochs=1",
        "--epochs=1",
        "--batch_size=32",
        "--export=tflite_int8",
    ]
    outputs = _keras3_two_workers_and_one(tmp_path, args)
    assert _digests(outputs[0]) == _digests(outputs[1])
    _, rows = _rows(tmp_path / "two")
    assert list(rows) == ["baseline", "pruned", "shrunk", "qat", "tflite_int8"]
    _, one = _rows(tmp_path / "one")
    # The same channels removed on two workers as on one process.
    assert rows["shrunk"]["macs"] == one["shrunk"]["macs"]
    assert rows["shrunk"]["params"] == one["shrunk"]["params"]
    assert rows["shrunk"]["macs"] <= 0.7 * rows["baseline"]["macs"]
    ops = tfopt.export.tflite_ops(
        str(tmp_path / "two" / "export" / "model_int8.tflite")
    )
    assert (ops.quantize, ops.dequantize, ops.float_ops) == (1, 1, ())


@pytest.mark.slow
def test_two_workers_each_read_their_own_tfrecord_files(tmp_path):
    from tests.support import userdata

    records = userdata.tfrecords(tmp_path / "records", *userdata.digits())
    args = [
        f"--dataset=tfrecord:{records}",
        "--prune",
        "--epochs=2",
        "--batch_size=32",
        "--export=tflite_int8",
    ]
    outputs = _keras3_two_workers_and_one(tmp_path, args)
    # File sharding: worker i reads every 2nd file from i, so the two read
    # every record once between them, and neither reads the other's.
    assert (
        "worker 0 of 2 reads 2 of 4 training files: train-0-of-4.tfrecord, "
        "train-2-of-4.tfrecord" in outputs[0]
    )
    assert (
        "worker 1 of 2 reads 2 of 4 training files: train-1-of-4.tfrecord, "
        "train-3-of-4.tfrecord" in outputs[1]
    )
    digests = [_digests(out) for out in outputs]
    assert set(digests[0]) == {"baseline", "pruned"}
    assert digests[0] == digests[1]  # the workers trained in step
    report, rows = _rows(tmp_path / "two")
    one_report, one = _rows(tmp_path / "one")
    # The same examples, split the same way, and counted once each.
    assert report["dataset"] == one_report["dataset"]
    assert list(rows) == ["baseline", "pruned", "tflite_int8"]
    # Not the same weights: a global batch holds other examples when two
    # workers each draw half of it from their own files (tf.distribute's
    # file sharding); the same training budget, so close accuracy.
    for name, row in rows.items():
        assert abs(row["accuracy"] - one[name]["accuracy"]) < 0.05, name
        assert row["nonzero_params"] == pytest.approx(
            one[name]["nonzero_params"], rel=0.01
        )
