import numpy as np
import pytest

import tfopt
from tfopt import keras, models
from tfopt.job import measure


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_model_builds_functional_with_logits_and_trains_a_step(name, digits):
    model = models.build(
        name, digits.info.input_shape, digits.info.num_classes, keras_version=2
    )
    assert model.name == name
    assert isinstance(model, keras.Model)
    assert not isinstance(model, keras.Sequential)
    assert model.layers[0].__class__.__name__ == "InputLayer"  # functional
    assert model.output_shape == (None, 10)
    assert model.layers[-1].get_config()["activation"] == "linear"
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = next(iter(digits.train))
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before, model.get_weights(), strict=True)
    )


def test_tfmot_mnist_is_the_tfmot_example_architecture():
    model = models.build("tfmot_mnist", (28, 28), 10, keras_version=2)
    assert abs(model.count_params() - 20_400) <= 0.01 * 20_400
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Reshape",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
    ]
    conv = model.layers[2].get_config()
    assert (conv["filters"], conv["kernel_size"], conv["activation"]) == (
        12,
        (3, 3),
        "relu",
    )
    # (28, 28) and (28, 28, 1) inputs build the same network.
    same = models.build("tfmot_mnist", (28, 28, 1), 10, keras_version=2)
    assert same.count_params() == model.count_params()


def test_student_is_about_ten_times_smaller_than_teacher():
    teacher = models.build("teacher_cnn", (28, 28, 1), 10, keras_version=2)
    student = models.build("student_cnn", (28, 28, 1), 10, keras_version=2)
    assert 8 <= teacher.count_params() / student.count_params() <= 16
    assert any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in teacher.layers
    )


def test_resnet_tiny_has_the_hard_cases():
    model = models.build("resnet_tiny", (28, 28, 1), 10, keras_version=2)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Add", "BatchNormalization", "DepthwiseConv2D"} <= kinds


@pytest.mark.slow
def test_mobilenet_v2_is_the_application_resized_to_its_smallest_input():
    model = models.build("mobilenet_v2", (28, 28, 1), 10, keras_version=2)
    assert model.get_layer("resize").output_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 10)
    assert 400_000 <= model.count_params() <= 450_000
    # One flat functional model: channel pruning and QAT see every layer.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert {
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    } == {0.9}
    assert models.build("mobilenet_v2", (40, 40, 3), 5, keras_version=2).get_layer(
        "Conv1"
    ).input_shape == (None, 40, 40, 3)


def test_rgb_input_is_accepted():
    model = models.build("student_cnn", (32, 32, 3), 10, keras_version=2)
    assert model.input_shape == (None, 32, 32, 3)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (
            ("vgg16", (28, 28, 1), 10),
            ValueError,
            r"^`name` must be one of \['tfmot_mnist', 'teacher_cnn', "
            r"'student_cnn', 'resnet_tiny', 'mobilenet_v2'\]. Received: "
            r"name='vgg16'$",
        ),
        ((None, (28, 28, 1), 10), TypeError, r"Received: name=None$"),
        (
            ("tfmot_mnist", 28, 10),
            TypeError,
            r"`input_shape` must be a tuple of ints such as \(28, 28, 1\). "
            r"Received: input_shape=28$",
        ),
        (
            ("tfmot_mnist", (28.0, 28.0), 10),
            TypeError,
            r"Received: input_shape=\(28.0, 28.0\)$",
        ),
        (("tfmot_mnist", (28,), 10), ValueError, r"Received: input_shape=\(28,\)$"),
        (
            ("tfmot_mnist", (28, 0, 1), 10),
            ValueError,
            r"Received: input_shape=\(28, 0, 1\)$",
        ),
        (
            ("tfmot_mnist", (28, 28, 1), 1),
            ValueError,
            r"^`num_classes` must be an int >= 2. Received: num_classes=1$",
        ),
        (
            ("tfmot_mnist", (28, 28, 1), "10"),
            TypeError,
            r"^`num_classes` must be an int. Received: num_classes='10'$",
        ),
    ],
)
def test_bad_arguments_name_the_value(args, error, message):
    with pytest.raises(error, match=message):
        models.build(*args, keras_version=2)


def test_build_is_reachable_from_the_package():
    assert tfopt.models.build is models.build


@pytest.mark.parametrize("name", sorted(models.BUILDERS))
def test_every_model_builds_in_keras3_with_the_same_parameters(name):
    import keras as keras3

    shape = (28, 28, 1)
    k3 = models.build(name, shape, 10, keras_version=3)
    assert isinstance(k3, keras3.Model) and k3.name == name
    k2 = models.build(name, shape, 10, keras_version=2)
    assert k3.count_params() == k2.count_params()
    # The report counts MACs of both Kerases alike.
    assert measure.macs(k3) == measure.macs(k2) > 0
    norms = [
        layer
        for layer in k3.layers
        if isinstance(layer, keras3.layers.BatchNormalization)
    ]
    # Keras 3 keeps each replica's statistics apart unless synchronized.
    assert all(layer.synchronized for layer in norms)


def test_an_unknown_keras_version_is_refused():
    with pytest.raises(ValueError, match=r"^`keras_version` must be one of \[2, 3\]"):
        models.build("tfmot_mnist", (28, 28, 1), 10, keras_version=1)


def test_keras3_is_the_default_and_tf_keras_one_argument_away():
    import keras as keras3

    from tfopt.core.kerases import Keras
    from tfopt.job.config import Config

    assert isinstance(models.build("student_cnn", (8, 8), 10), keras3.Model)
    tf_keras_model = models.build("student_cnn", (8, 8), 10, keras_version=2)
    assert isinstance(tf_keras_model, keras.Model)
    assert not isinstance(tf_keras_model, keras3.Model)
    # Unset: a saved model's own Keras, else Keras 3.
    assert Config().keras is None
    assert Config().keras_api is Keras.KERAS3
