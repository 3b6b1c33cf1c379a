import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tfopt import _keras


def test_tfopt_keras_is_tf_keras():
    import tf_keras

    assert tfopt.keras is tf_keras
    assert tfopt.keras.__name__ == "tf_keras"
    assert tfopt.keras.__version__.startswith("2.")


def test_importing_tfopt_first_routes_tf_keras_to_tf_keras():
    # tfopt is imported before TensorFlow resolves tf.keras (conftest).
    assert tf.keras.Model is tfopt.keras.Model
    from tensorflow.keras import layers

    assert layers.Dense is tfopt.keras.layers.Dense


def _run(code):
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True,
        text=True, env=env, timeout=120, check=True,
    )


def test_tf_keras_resolved_to_keras3_before_import_warns():
    # TF_USE_LEGACY_KERAS is unset in the child, as on a user's machine.
    result = _run(
        "import tensorflow as tf\n"
        "tf.keras.layers\n"
        "import tfopt\n"
    )
    assert "RuntimeWarning: `tf.keras` already resolved to Keras 3." in (
        result.stderr
    )


def test_keras3_model_is_rejected_with_both_fixes(keras3):
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)],
                              name="k3net")
    with pytest.raises(TypeError) as info:
        _keras.check_model(model)
    message = str(info.value)
    assert message.startswith(
        "`model` must be a tf_keras object, not a Keras 3 Sequential 'k3net'"
    )
    assert "`from tfopt import keras`" in message
    assert "TF_USE_LEGACY_KERAS=1 before importing TensorFlow" in message


@pytest.mark.parametrize("kind", ["layer", "optimizer"])
def test_keras3_layer_and_optimizer_are_rejected(keras3, kind):
    obj = keras3.layers.Dense(3) if kind == "layer" else keras3.optimizers.SGD()
    with pytest.raises(TypeError, match=r"^`thing` must be a tf_keras object, "
                       r"not a Keras 3 (Dense|SGD)"):
        _keras.check_keras2(obj, "thing")


def test_tf_keras_objects_pass_the_guard():
    model = tfopt.keras.Sequential([tfopt.keras.Input((4,)),
                                    tfopt.keras.layers.Dense(2)])
    assert _keras.check_model(model) is model
    _keras.check_keras2(model.layers[0], "layer")
    _keras.check_keras2(tfopt.keras.optimizers.SGD(), "optimizer")
    _keras.check_keras2(np.zeros(2), "array")


@pytest.mark.parametrize("bad", [None, "model.keras", np.zeros(3),
                                 tfopt.keras.layers.Dense(2)])
def test_non_models_are_rejected_showing_the_type(bad):
    expected = f"{type(bad).__module__}.{type(bad).__qualname__}"
    with pytest.raises(TypeError, match=re.escape(expected)) as info:
        _keras.check_model(bad, "student")
    assert str(info.value).startswith("`student` must be a tf_keras Model")
