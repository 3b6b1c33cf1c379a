"""Shared fixtures and helpers. TensorFlow takes seconds to import and data
sets seconds to load, so everything expensive is built once per session.
Helpers the tests share live in `tests/support/` and are imported from there.
"""

import pytest

# tfopt comes before any TensorFlow import so that tf.keras is tf_keras.
import tfopt

# Two logical CPUs give every test a real 2-replica MirroredStrategy. This
# must run before TensorFlow's first op, i.e. here, at collection.
DEVICES = tfopt.configure_devices(logical_cpus=2)


def pytest_collection_modifyitems(config, items):
    import tensorflow as tf

    # The applications sweep (`models`, about 35 minutes) runs only when a -m
    # expression names it (`make test-models`), whatever else -m selects.
    if "models" not in (config.getoption("markexpr") or ""):
        kept = [item for item in items if "models" not in item.keywords]
        config.hook.pytest_deselected(
            items=[item for item in items if "models" in item.keywords]
        )
        items[:] = kept
    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="needs a GPU; TensorFlow sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mirrored():
    """The process's one 2-replica MirroredStrategy over logical CPUs (named,
    so that GPU machines run the same parity tests)."""
    strategy = tfopt.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="session")
def digits():
    return tfopt.data.load("digits", batch_size=32)


@pytest.fixture(scope="session")
def mnist5k():
    return tfopt.data.load("mnist5k", batch_size=64)


@pytest.fixture(scope="session")
def keras3():
    """The real Keras 3 package, the one users reach by mistake."""
    import keras

    assert keras.__version__.startswith("3.")
    return keras
