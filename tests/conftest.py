"""Shared fixtures. TensorFlow takes seconds to import and data sets seconds
to load, so everything expensive is built once per session."""

import pytest

# tfopt comes before any TensorFlow import so that tf.keras is tf_keras.
import tfopt


def pytest_collection_modifyitems(config, items):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return
    skip = pytest.mark.skip(reason="needs a GPU; TensorFlow sees none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
