import pytest
import tensorflow as tf

import tfopt
from tests.support import cluster
from tfopt import devices, keras


@pytest.fixture
def no_growth_env(monkeypatch):
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)


def test_logical_cpus_appear_and_repeating_them_is_a_no_op():
    # conftest asked for two before TensorFlow's first op; asking again for
    # what is in effect returns the record instead of raising.
    config = tfopt.configure_devices(logical_cpus=2)
    cpus = [d for d in config.logical_devices if "CPU" in d]
    assert cpus == ["/device:CPU:0", "/device:CPU:1"]
    assert len(tf.config.list_logical_devices("CPU")) == 2
    assert config.physical_devices[0] == "/physical_device:CPU:0"
    assert config.mixed_precision == "float32"


def test_changing_devices_after_initialization_raises():
    with pytest.raises(
        RuntimeError,
        match=(
            r"^configure_devices must run before TensorFlow's first op \(before "
            r"building a model, a data set or a strategy\): TensorFlow has "
            r"already initialized its devices with another configuration \(.*"
            r"\)\. Move the call to the top of your program.$"
        ),
    ):
        tfopt.configure_devices(logical_cpus=3)
    assert len(tf.config.list_logical_devices("CPU")) == 2


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_policy_is_set_and_reported(policy):
    try:
        config = tfopt.configure_devices(mixed_precision=policy)
        assert config.mixed_precision == policy
        assert keras.mixed_precision.global_policy().name == policy
        assert keras.layers.Dense(2).compute_dtype == policy.split("_")[1]
        import keras as keras3

        assert keras3.mixed_precision.global_policy().name == policy  # both worlds
    finally:
        tfopt.configure_devices(mixed_precision="float32")
    assert tfopt.configure_devices().mixed_precision == "float32"


def test_without_gpus_gpu_settings_are_skipped(no_growth_env):
    config = tfopt.configure_devices(
        memory_growth=False, memory_limit_mb=512, visible_gpus=[0]
    )
    assert config.memory_growth is None and config.memory_limit_mb is None
    assert not any("GPU" in d for d in config.logical_devices)


def _fresh_process_job():
    # A process of its own: the test process's devices are fixed already.
    return tfopt.configure_devices(logical_cpus=3, mixed_precision="mixed_bfloat16")


@pytest.mark.slow
def test_a_fresh_process_gets_what_it_asks_for():
    [config] = cluster.run_processes(_fresh_process_job, [{}])
    assert [d for d in config.logical_devices if "CPU" in d] == [
        f"/device:CPU:{i}" for i in range(3)
    ]
    assert config.mixed_precision == "mixed_bfloat16"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"memory_growth": "yes"},
            TypeError,
            r"^`memory_growth` must be a bool or None. "
            r"Received: memory_growth='yes'$",
        ),
        (
            {"memory_limit_mb": 0},
            ValueError,
            r"^`memory_limit_mb` must be an int >= 1 or None. "
            r"Received: memory_limit_mb=0$",
        ),
        ({"memory_limit_mb": 1.5}, TypeError, r"Received: memory_limit_mb=1.5$"),
        (
            {"memory_growth": True, "memory_limit_mb": 1024},
            ValueError,
            r"^`memory_growth` and `memory_limit_mb` are exclusive: a hard "
            r"per-GPU limit allocates that memory up front. Pass one of them. "
            r"Received: memory_growth=True, memory_limit_mb=1024$",
        ),
        (
            {"logical_cpus": 0},
            ValueError,
            r"^`logical_cpus` must be an int >= 1 or None. Received: logical_cpus=0$",
        ),
        ({"logical_cpus": "2"}, TypeError, r"Received: logical_cpus='2'$"),
        (
            {"visible_gpus": 0},
            TypeError,
            r"^`visible_gpus` must be a list of GPU indices or None. "
            r"Received: visible_gpus=0$",
        ),
        (
            {"visible_gpus": [0, 0]},
            ValueError,
            r"^`visible_gpus` must hold distinct indices >= 0. "
            r"Received: visible_gpus=\[0, 0\]$",
        ),
        ({"visible_gpus": [-1]}, ValueError, r"Received: visible_gpus=\[-1\]$"),
        (
            {"mixed_precision": "fp16"},
            ValueError,
            r"^`mixed_precision` must be one of \['float32', 'mixed_float16', "
            r"'mixed_bfloat16'\] or None. Received: mixed_precision='fp16'$",
        ),
    ],
)
def test_bad_arguments_name_the_value(no_growth_env, kwargs, error, message):
    with pytest.raises(error, match=message):
        tfopt.configure_devices(**kwargs)


def test_growth_env_variable_is_respected(monkeypatch):
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")
    with pytest.raises(
        ValueError,
        match=(
            r"^`memory_growth` must agree with TF_FORCE_GPU_ALLOW_GROWTH=false set "
            r"in the environment, which TensorFlow obeys over the API. "
            r"Received: memory_growth=True$"
        ),
    ):
        tfopt.configure_devices(memory_growth=True)
    # Left to its default, memory_growth follows the variable.
    assert devices._env_growth() is False
    tfopt.configure_devices()


@pytest.mark.gpu
def test_memory_growth_is_set_on_every_gpu(no_growth_env):
    config = tfopt.configure_devices(memory_growth=True)
    assert config.memory_growth is True
    for gpu in tf.config.list_physical_devices("GPU"):
        assert tf.config.experimental.get_memory_growth(gpu)


@pytest.mark.gpu
def test_visible_gpu_index_out_of_range_lists_the_gpus(no_growth_env):
    count = len(tf.config.list_physical_devices("GPU"))
    with pytest.raises(
        ValueError,
        match=(
            rf"^`visible_gpus` must index the {count} GPUs present \(.*\). "
            rf"Received: visible_gpus=\[{count}\]$"
        ),
    ):
        tfopt.configure_devices(visible_gpus=[count])


def _runtime_left_unstarted_job():
    tfopt.configure_devices(logical_cpus=2)
    # Only possible while TensorFlow's runtime has not started, which a
    # MultiWorkerMirroredStrategy created next needs.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 3
    )
    return len(tf.config.list_logical_devices("CPU"))


@pytest.mark.slow
def test_configure_devices_leaves_the_runtime_unstarted():
    assert cluster.run_processes(_runtime_left_unstarted_job, [{}]) == [3]
