import json
import time

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.support import cluster, helpers
from tfopt import distribute

WORKERS_2 = {
    "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
    "task": {"type": "worker", "index": 0},
}


@pytest.fixture
def tf_config(monkeypatch):
    def set_config(config):
        raw = config if isinstance(config, str) else json.dumps(config)
        monkeypatch.setenv("TF_CONFIG", raw)

    monkeypatch.delenv("TF_CONFIG", raising=False)
    for var in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    return set_config


def test_default_is_tensorflows_default_and_trains():
    strategy = tfopt.get_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    weights, loss = helpers.train_tiny(strategy)
    assert np.isfinite(loss)


def test_one_device_uses_cpu0_here_and_trains():
    strategy = tfopt.get_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    [device] = strategy.extended.worker_devices
    assert device.endswith("/device:CPU:0")
    _, loss = helpers.train_tiny(strategy)
    assert np.isfinite(loss)


def test_mirrored_falls_back_to_logical_cpus_and_matches_default(mirrored):
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert [d.split("/")[-1] for d in mirrored.extended.worker_devices] == [
        "device:CPU:0",
        "device:CPU:1",
    ]
    if not tf.config.list_physical_devices("GPU"):
        # Without a GPU, plain "mirrored" is this very strategy.
        assert tfopt.get_strategy("mirrored") is mirrored
    single, _ = helpers.train_tiny(tfopt.get_strategy("default"))
    double, _ = helpers.train_tiny(mirrored)
    for a, b in zip(single, double, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_one_strategy_per_configuration(mirrored):
    for names in (["/cpu:0", "/cpu:1"], ["CPU:0", "/device:CPU:1"]):
        assert tfopt.get_strategy("mirrored", devices=names) is mirrored
    assert tfopt.get_strategy("one_device") is tfopt.get_strategy("one_device")


def _all_reduce_job():
    # A fresh process: extra MirroredStrategies in the test process would
    # break later TFMOT pruning tests (see DESIGN.md).
    config = tfopt.configure_devices(logical_cpus=2, mixed_precision="float32")
    out = {"logical": config.logical_devices}
    for all_reduce in ("hierarchical_copy", "reduction_to_one"):
        strategy = tfopt.get_strategy(
            "mirrored", all_reduce=all_reduce, devices=["/cpu:0", "/cpu:1"]
        )
        total = strategy.reduce(
            "SUM", strategy.run(lambda: tf.constant(1.0)), axis=None
        )
        out[all_reduce] = (
            strategy.num_replicas_in_sync,
            float(total),
            helpers.train_tiny(strategy)[1],
        )
    explicit = tfopt.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    one = tfopt.get_strategy("one_device", devices=["/cpu:1"])
    out["devices"] = (
        explicit.extended.worker_devices,
        one.extended.worker_devices,
        helpers.train_tiny(one)[1],
    )
    return out


@pytest.mark.slow
def test_all_reduce_and_explicit_devices_in_a_fresh_process():
    [out] = cluster.run_processes(_all_reduce_job, [{}])
    assert len(out["logical"]) == 2
    for all_reduce in ("hierarchical_copy", "reduction_to_one"):
        replicas, total, loss = out[all_reduce]
        assert (replicas, total) == (2, 2.0) and np.isfinite(loss)
    mirrored_devices, one_device, loss = out["devices"]
    assert [d[-5:] for d in mirrored_devices] == ["CPU:0", "CPU:1"]
    assert [d[-5:] for d in one_device] == ["CPU:1"] and np.isfinite(loss)


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_identical_weights():
    results = cluster.run_workers(helpers.multi_worker_job)
    assert [r["multi_worker"] for r in results] == [True, True]
    assert [r["replicas"] for r in results] == [2, 2]
    for a, b in zip(results[0]["weights"], results[1]["weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    # The same global batch on one replica gives the same model.
    single, _ = helpers.train_tiny(tfopt.get_strategy("default"))
    for a, b in zip(single, results[0]["weights"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _slurm_job():
    strategy = tfopt.get_strategy("multi_worker", communication="ring")
    resolver = strategy.cluster_resolver
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return (
        type(resolver).__name__,
        resolver.cluster_spec().as_dict(),
        helpers.train_tiny(strategy)[1],
    )


@pytest.mark.slow
def test_multi_worker_under_slurm_uses_the_slurm_resolver():
    env = {
        "SLURM_PROCID": "0",
        "SLURM_STEP_NUM_TASKS": "1",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_TASKS_PER_NODE": "1",
    }
    [(resolver, spec, loss)] = cluster.run_processes(_slurm_job, [env])
    assert resolver == "SlurmClusterResolver"
    assert spec == {"worker": ["localhost:8888"]}
    assert np.isfinite(loss)


def _parameter_server_job(order):
    config = distribute.tf_config()
    if config["task"]["type"] != "chief":
        distribute.run_server()  # serves until the test kills it
    if order == "devices_first":
        tfopt.configure_devices(logical_cpus=1)
        tf.constant(1.0) + 1.0  # the runtime has started: still fine here
        strategy = tfopt.get_strategy("auto")
    else:
        strategy = tfopt.get_strategy("auto")
        tfopt.configure_devices(logical_cpus=1)
    x, y = helpers.tiny_regression()
    with strategy.scope():
        model = tfopt.keras.Sequential(
            [tfopt.keras.Input((6,)), tfopt.keras.layers.Dense(1)]
        )
        model.compile(optimizer="sgd", loss="mse")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)
    history = model.fit(dataset, epochs=2, steps_per_epoch=4, verbose=0)
    return (
        isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy),
        history.history["loss"],
    )


@pytest.mark.slow
@pytest.mark.parametrize("order", ["devices_first", "strategy_first"])
def test_parameter_server_cluster_trains_on_loopback(order):
    envs = cluster.cluster_envs({"chief": 1, "worker": 1, "ps": 1})
    [(is_ps, losses)] = cluster.run_processes(
        _parameter_server_job, envs, order, wait=[0]
    )
    assert is_ps
    assert len(losses) == 2 and all(np.isfinite(losses))


def _closed_port_address():
    return f"grpc://127.0.0.1:{cluster.free_ports(1)[0]}"


@pytest.mark.parametrize("name", ["tpu", "auto"])
def test_unreachable_tpu_fails_fast_naming_the_address(name):
    address = _closed_port_address()
    start = time.monotonic()
    with pytest.raises(
        ConnectionError,
        match=(
            rf"^Could not reach the TPU at tpu='{address}' \(.*\)\. Check that "
            r"the TPU is running and its address and port \(usually 8470\) are "
            r"right"
        ),
    ):
        tfopt.get_strategy(name, tpu=address)
    assert time.monotonic() - start < 60


def _silent_tpu_job():
    # A port that accepts TCP connections but never speaks gRPC: what a hung
    # or wrong TPU looks like. In a process of its own, since connecting
    # rewires TensorFlow's context for good.
    import socket
    import threading

    from tfopt.core import cluster as _cluster

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    threading.Thread(
        target=lambda: [accepted.append(server.accept()) for _ in range(16)],
        daemon=True,
    ).start()
    _cluster._TPU_INIT_TIMEOUT_S = 3
    address = f"grpc://127.0.0.1:{server.getsockname()[1]}"
    start = time.monotonic()
    try:
        tfopt.get_strategy("tpu", tpu=address)
    except ConnectionError as err:
        return address, str(err), time.monotonic() - start
    return address, "no error", time.monotonic() - start


@pytest.mark.slow  # waits out the time limit
def test_a_tpu_that_never_answers_fails_at_the_time_limit():
    [(address, message, seconds)] = cluster.run_processes(
        _silent_tpu_job, [{}], timeout=120
    )
    assert message.startswith(
        (
            f"The TPU at tpu='{address}' did not answer within 3 s. Check that it is "
            "running, healthy and runs the same TensorFlow version",
            f"Could not connect to the TPU at tpu='{address}'",
        )
    ), message
    assert seconds < 30


def test_local_tpu_on_a_machine_without_one_says_so():
    start = time.monotonic()
    with pytest.raises(
        ConnectionError,
        match=(
            r"^Could not connect to the TPU at tpu='local' \(.*\)\. this machine "
            r"has no TPU: run on a Cloud TPU VM with tensorflow-tpu and libtpu"
        ),
    ):
        tfopt.get_strategy("tpu")
    assert time.monotonic() - start < 60


@pytest.mark.parametrize(
    "config, expected",
    [
        (None, "default"),
        (WORKERS_2, "multi_worker"),
        (
            {
                "cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
                "task": {"type": "chief", "index": 0},
            },
            "parameter_server",
        ),
        (
            {"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}},
            "default",
        ),
    ],
)
def test_auto_follows_tf_config(tf_config, config, expected):
    if config is not None:
        tf_config(config)
    assert distribute.resolve_name("auto")[0] == expected


def test_auto_prefers_tpu_and_reads_slurm(tf_config, monkeypatch):
    tf_config(WORKERS_2)
    assert distribute.resolve_name("auto", tpu="local") == (
        "tpu",
        "tpu='local' was given",
    )
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert distribute.resolve_name("auto") == ("multi_worker", "SLURM step has 4 tasks")


def test_auto_without_cluster_builds_the_default_strategy(tf_config):
    assert tfopt.get_strategy() is tf.distribute.get_strategy()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"name": "mirror"},
            ValueError,
            r"^`name` must be one of \['auto', 'default', 'one_device', "
            r"'mirrored', 'multi_worker', 'tpu', 'parameter_server'\]. "
            r"Received: name='mirror'$",
        ),
        (
            {"name": False},
            TypeError,
            r"A YAML value of off/no/false reads as False: quote it. "
            r"Received: name=False$",
        ),
        ({"name": None}, TypeError, r"Received: name=None$"),
        (
            {"name": "mirrored", "num_gpus": -1},
            ValueError,
            r"^`num_gpus` must be in \[0, \d+\], the GPUs present. "
            r"Received: num_gpus=-1$",
        ),
        (
            {"name": "mirrored", "num_gpus": 10_000},
            ValueError,
            r"Received: num_gpus=10000$",
        ),
        ({"name": "mirrored", "num_gpus": 1.0}, TypeError, r"Received: num_gpus=1.0$"),
        (
            {"name": "mirrored", "all_reduce": "ring"},
            ValueError,
            r"^`all_reduce` must be one of \['nccl', 'hierarchical_copy', "
            r"'reduction_to_one'\] or None. Received: all_reduce='ring'$",
        ),
        (
            {"name": "mirrored", "all_reduce": "nccl", "devices": ["/cpu:0", "/cpu:1"]},
            ValueError,
            r"^`all_reduce` must not be 'nccl' without GPUs",
        ),
        (
            {"name": "multi_worker", "communication": "mpi"},
            ValueError,
            r"^`communication` must be one of \['auto', 'ring', 'nccl'\] or "
            r"None. Received: communication='mpi'$",
        ),
        (
            {"name": "default", "all_reduce": "nccl"},
            ValueError,
            r"^`all_reduce` only applies to \['mirrored'\], not to "
            r"name='default'. Received: all_reduce='nccl'$",
        ),
        (
            {"name": "mirrored", "tpu": "local"},
            ValueError,
            r"^`tpu` only applies to \['tpu'\]",
        ),
        ({"name": "tpu", "tpu": ""}, TypeError, r"Received: tpu=''$"),
        (
            {"name": "mirrored", "devices": "/cpu:0"},
            TypeError,
            r"Received: devices='/cpu:0'$",
        ),
        (
            {"name": "one_device", "devices": ["/cpu:0", "/cpu:1"]},
            ValueError,
            r"^`devices` must name exactly one device for 'one_device'",
        ),
        (
            {"name": "mirrored", "devices": ["/cpu:0"], "num_gpus": 0},
            ValueError,
            r"^`devices` and `num_gpus` are exclusive",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.get_strategy(**kwargs)


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            "{not json",
            r"^TF_CONFIG must be JSON \(.*\). "
            r"Received: TF_CONFIG='\{not json'$",
        ),
        ('{"task": {"type": "worker"}}', r'^TF_CONFIG must have a "cluster"'),
        ('{"cluster": {"worker": ["h:1"]}}', r'^TF_CONFIG must have a "task"'),
        (
            '{"cluster": {"worker": []}, "task": {"type": "worker"}}',
            r"^TF_CONFIG cluster job 'worker' must be a non-empty list",
        ),
        (
            '{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief"}}',
            r"^TF_CONFIG task type must be one of the cluster's jobs "
            r"\['worker'\]. Received: type='chief'$",
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, '
            '"task": {"type": "worker", "index": 2}}',
            r"^TF_CONFIG task index must be an int in \[0, 2\) for job "
            r"'worker'. Received: index=2$",
        ),
    ],
)
@pytest.mark.parametrize("name", ["auto", "multi_worker", "parameter_server"])
def test_malformed_tf_config_is_refused_before_tensorflow(
    tf_config, raw, message, name
):
    tf_config(raw)
    with pytest.raises(ValueError, match=message):
        tfopt.get_strategy(name)


def test_parameter_server_needs_a_cluster_and_a_coordinator(tf_config):
    with pytest.raises(
        ValueError,
        match=(
            r"^`name`='parameter_server' needs TF_CONFIG with 'chief', 'worker' "
            r"and 'ps' jobs. Received: TF_CONFIG=None$"
        ),
    ):
        tfopt.get_strategy("parameter_server")
    tf_config(
        {
            "cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
            "task": {"type": "ps", "index": 0},
        }
    )
    with pytest.raises(
        ValueError,
        match=(r"a 'ps' task serves instead: call tfopt.distribute.run_server\(\)"),
    ):
        tfopt.get_strategy("parameter_server")


def test_run_server_needs_a_worker_or_ps_task(tf_config):
    with pytest.raises(
        ValueError,
        match=(
            r"^run_server needs TF_CONFIG with a 'worker' or 'ps' task. "
            r"Received: TF_CONFIG=None$"
        ),
    ):
        distribute.run_server()


def test_batch_and_learning_rate_helpers(mirrored):
    assert distribute.global_batch_size(16, mirrored) == 32
    assert distribute.scale_learning_rate(0.1, mirrored) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"Received: per_replica=0$"):
        distribute.global_batch_size(0, mirrored)
    with pytest.raises(TypeError, match=r"Received: per_replica=1.5$"):
        distribute.global_batch_size(1.5, mirrored)
    with pytest.raises(ValueError, match=r"Received: learning_rate=0$"):
        distribute.scale_learning_rate(0, mirrored)
    with pytest.raises(TypeError, match=r"Received: strategy='mirrored'$"):
        distribute.scale_learning_rate(0.1, "mirrored")


@pytest.mark.gpu
def test_auto_uses_the_gpus():
    gpus = len(tf.config.list_physical_devices("GPU"))
    name = distribute.resolve_name("auto")[0]
    assert name == ("mirrored" if gpus > 1 else "one_device")
    strategy = tfopt.get_strategy("auto")
    assert strategy.num_replicas_in_sync == gpus
    assert "GPU" in strategy.extended.worker_devices[0]


def test_auto_logs_its_choice_and_reason(tf_config, caplog):
    with caplog.at_level("INFO", logger="absl"):
        tfopt.get_strategy("auto")
    assert "get_strategy('auto') chose 'default': no TPU, cluster or GPU found." in (
        caplog.text
    )


def test_tpu_name_that_cannot_be_resolved_says_what_to_check():
    start = time.monotonic()
    with pytest.raises(
        ConnectionError,
        match=(
            r"^Could not connect to the TPU at tpu='no-such-tpu' \(.*\)\. check "
            r"the TPU's name, zone and project"
        ),
    ):
        tfopt.get_strategy("tpu", tpu="no-such-tpu")
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("raw", ["", "  "])
@pytest.mark.parametrize("name", distribute.NAMES)
def test_an_empty_tf_config_means_the_same_to_every_strategy(tf_config, raw, name):
    tf_config(raw)
    with pytest.raises(
        ValueError,
        match=(
            r"^TF_CONFIG is set but empty. Unset it \(`unset TF_CONFIG`\) to train "
            r"on this machine alone, or set it to the cluster's JSON. "
            rf"Received: TF_CONFIG='{raw}'$"
        ),
    ):
        tfopt.get_strategy(name)


def test_multi_worker_without_a_cluster_is_refused(tf_config):
    with pytest.raises(
        ValueError,
        match=(
            r"^`name`='multi_worker' needs a cluster: set TF_CONFIG on every "
            r"worker, or run the job as a SLURM step \(srun\). For the devices of "
            r"this one machine use 'mirrored'. Received: TF_CONFIG and "
            r"SLURM_PROCID unset$"
        ),
    ):
        tfopt.get_strategy("multi_worker")


def _multi_worker_after_an_op_job():
    tf.constant(1.0) + 1.0  # starts TensorFlow's runtime
    try:
        tfopt.get_strategy("multi_worker")
    except RuntimeError as err:
        return str(err)
    return "no error"


@pytest.mark.slow
def test_multi_worker_after_the_runtime_started_says_what_to_move():
    # One task of a two-worker cluster: it must fail before waiting for its
    # peer.
    env = cluster.cluster_envs({"worker": 2})[:1]
    [message] = cluster.run_processes(_multi_worker_after_an_op_job, env, timeout=60)
    assert message.startswith(
        "get_strategy('multi_worker') must come before anything starts "
        "TensorFlow's runtime (a tensor, a data set, a model, "
        "tf.config.list_logical_devices): its collectives can only be "
        "configured at start-up. Call it at the top of the program, right "
        "after tfopt.configure_devices. ("
    ), message


def test_worker_info_of_single_process_strategies(tf_config, mirrored):
    # A TF_CONFIG naming another task does not concern a strategy that
    # does not read it.
    tf_config({**WORKERS_2, "task": {"type": "worker", "index": 1}})
    for strategy in (tfopt.get_strategy("default"), mirrored):
        assert distribute.worker_info(strategy) == distribute.WorkerInfo(
            None, 0, True, 1, {}
        )
    with pytest.raises(
        TypeError,
        match=(
            r"^`strategy` must be a tf.distribute.Strategy. Received: "
            r"strategy='mirrored'$"
        ),
    ):
        distribute.worker_info("mirrored")


def _worker_info_job():
    return tuple(distribute.worker_info(tfopt.get_strategy("multi_worker")))


@pytest.mark.slow
def test_worker_info_names_the_chief_of_a_cluster():
    envs = cluster.cluster_envs({"worker": 2})
    hosts = json.loads(envs[0]["TF_CONFIG"])["cluster"]
    assert cluster.run_processes(_worker_info_job, envs) == [
        ("worker", 0, True, 2, hosts),
        ("worker", 1, False, 2, hosts),
    ]


def test_a_worker_waiting_for_its_peers_says_so(caplog):
    import threading

    from tfopt.core import cluster as _cluster

    joined = threading.Event()
    waiter = threading.Thread(
        target=_cluster._note_waiting,
        args=(joined, "TF_CONFIG task {'index': 1}", 0.05),
    )
    with caplog.at_level("WARNING"):
        waiter.start()
        time.sleep(0.2)
        joined.set()
        waiter.join(1)
    assert not waiter.is_alive()
    assert (
        "get_strategy('multi_worker'): TF_CONFIG task {'index': 1} still waits "
        "for the other workers after 0.05 s; start the same command on each "
        "of them."
    ) in caplog.text


def test_keras3_multi_worker_fix_takes_keras3_models_only(keras3):
    with pytest.raises(
        TypeError,
        match=r"^`model` must be a Keras 3 model. "
        r"Received: model=<tf_keras",
    ):
        tfopt.distribute.keras3_multi_worker(
            tfopt.models.build("tfmot_mnist", (8, 8), 10, keras_version=2)
        )
    model = keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)])
    # Outside a multi-worker strategy it changes nothing (two-worker runs:
    # tests/test_k3_distribute.py).
    assert tfopt.distribute.keras3_multi_worker(model) is model
    assert "train_step" not in vars(model)
