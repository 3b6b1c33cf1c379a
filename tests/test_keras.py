import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tfopt.keras2 import binding


def test_tfopt_keras_is_tf_keras():
    import tf_keras

    assert tfopt.keras is tf_keras
    assert tfopt.keras.__name__ == "tf_keras"
    assert tfopt.keras.__version__.startswith("2.")


def test_tfopt_keras_before_tf_keras_routes_tf_keras_to_tf_keras():
    # conftest reads tfopt.keras before anything resolves tf.keras.
    assert tf.keras.Model is tfopt.keras.Model
    # `from tensorflow.keras import` follows what TensorFlow read at its own
    # import, before tfopt set anything: Keras 3 (tfopt sets nothing at import).
    from tensorflow.keras import layers

    assert layers.Dense.__module__.startswith("keras.")


def _run(code, env=None):
    env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )


@pytest.mark.slow
def test_importing_tfopt_changes_nothing_in_tf_keras():
    result = _run(
        "import os, tfopt\n"
        "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
        "import tensorflow as tf\n"
        "print(tf.keras.version())\n"
    )
    assert result.stdout.strip().startswith("3.")


@pytest.mark.slow
def test_a_keras3_program_never_loads_tf_keras_or_tfmot():
    # Every Keras 3 path of the API, in a process that has only Keras 3.
    result = _run(
        "import os, sys, tempfile, keras, tfopt\n"
        "train, val, test, info = tfopt.data.load('digits', batch_size=64)\n"
        "def net(width):\n"
        "    return keras.Sequential([keras.Input(info.input_shape),\n"
        "        keras.layers.Flatten(),\n"
        "        keras.layers.Dense(width, activation='relu'),\n"
        "        keras.layers.Dense(10)])\n"
        "loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)\n"
        "teacher = net(32)\n"
        "teacher.compile('adam', loss)\n"
        "teacher.fit(train, epochs=1, verbose=0)\n"
        "student = tfopt.prune(net(16), 0.5)\n"
        "distiller = tfopt.Distiller(student=student, teacher=teacher)\n"
        "distiller.compile('adam', loss)\n"
        "distiller.fit(train, epochs=1, verbose=0, callbacks=[\n"
        "    tfopt.PruningCallback(), tfopt.DistillationSchedule(alpha=[0.5])])\n"
        "small = tfopt.strip(student)\n"
        "print(round(tfopt.sparsity_report(small).sparsity, 2))\n"
        "path = os.path.join(tempfile.mkdtemp(), 'm.tflite')\n"
        "tfopt.export_tflite(small, path, quantization='int8',\n"
        "                    representative_data=train)\n"
        "print(tfopt.evaluate_tflite(path, test).examples)\n"
        "tfopt.export.tflite_ops(path)\n"
        "saved = os.path.join(tempfile.mkdtemp(), 'student.keras')\n"
        "student.save(saved)\n"
        "tfopt.load_model(saved)\n"
        "tfopt.get_strategy('default')\n"
        "print(sorted(m for m in ('tf_keras', 'tensorflow_model_optimization')\n"
        "             if m in sys.modules))\n"
        "import tensorflow as tf\n"
        "print(tf.keras.Model is keras.Model)\n"
    )
    assert result.stdout.split()[-4:] == ["0.5", "359", "[]", "True"]


@pytest.mark.slow
def test_a_keras3_program_keeps_tf_keras_keras3_when_it_also_uses_tf_keras():
    # TFMOT's import sets TF_USE_LEGACY_KERAS; a program that already used
    # `tf.keras` keeps it as Keras 3, and TFMOT still prunes tf_keras models.
    result = _run(
        "import numpy as np, keras, tensorflow as tf, tfopt\n"
        "tf.keras.Model\n"
        "from tfopt import keras as tk\n"
        "model = tk.Sequential([tk.Input((4,)), tk.layers.Dense(8)])\n"
        "pruned = tfopt.prune(model, 0.5, end=1.0)\n"
        "pruned.compile('sgd', 'mse')\n"
        "pruned.fit(np.ones((8, 4)), np.ones((8, 8)), verbose=0,\n"
        "           callbacks=[tfopt.PruningCallback()])\n"
        "print(round(tfopt.sparsity_report(pruned).sparsity, 2))\n"
        "import tensorflow as tf\n"
        "print(tf.keras.Model is keras.Model)\n"
    )
    assert result.stdout.split()[-2:] == ["0.5", "True"]


def test_keras3_model_is_rejected_with_both_fixes(keras3):
    model = keras3.Sequential(
        [keras3.Input((4,)), keras3.layers.Dense(2)], name="k3net"
    )
    with pytest.raises(TypeError) as info:
        binding.check_model(model)
    message = str(info.value)
    assert message.startswith(
        "`model` must be a tf_keras object, not a Keras 3 Sequential 'k3net'"
    )
    assert "`from tfopt import keras`" in message
    assert "build every model of this call with Keras 3" in message


@pytest.mark.parametrize("kind", ["layer", "optimizer"])
def test_keras3_layer_and_optimizer_are_rejected(keras3, kind):
    obj = keras3.layers.Dense(3) if kind == "layer" else keras3.optimizers.SGD()
    with pytest.raises(
        TypeError,
        match=r"^`thing` must be a tf_keras object, "
        r"not a Keras 3 (Dense|SGD)",
    ):
        binding.check_keras2(obj, "thing")


def test_tf_keras_objects_pass_the_guard():
    model = tfopt.keras.Sequential(
        [tfopt.keras.Input((4,)), tfopt.keras.layers.Dense(2)]
    )
    assert binding.check_model(model) is model
    binding.check_keras2(model.layers[0], "layer")
    binding.check_keras2(tfopt.keras.optimizers.SGD(), "optimizer")
    binding.check_keras2(np.zeros(2), "array")


@pytest.mark.parametrize(
    "bad", [None, "model.keras", np.zeros(3), tfopt.keras.layers.Dense(2)]
)
def test_non_models_are_rejected_showing_the_type(bad):
    expected = f"{type(bad).__module__}.{type(bad).__qualname__}"
    with pytest.raises(TypeError, match=re.escape(expected)) as info:
        binding.check_model(bad, "student")
    assert str(info.value).startswith("`student` must be a tf_keras Model")
