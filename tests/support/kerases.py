"""Both Kerases as test parameters, read from tfopt's capability table.

`each_keras(capability)` gives one parameter per Keras. Where the table says
a Keras lacks the capability, the test is expected to fail with tfopt's
refusal, `NotAvailable` (strictly: the day the capability lands, the test
passes, the strict xfail fails the suite, and the table must change with
it).
"""

import pytest

from tfopt import models
from tfopt.core.kerases import Keras, NotAvailable, refusal, supports


def each_keras(capability):
    params = []
    for keras in Keras:
        marks = []
        if not supports(keras, capability):
            marks.append(
                pytest.mark.xfail(
                    strict=True,
                    raises=NotAvailable,
                    reason=refusal(capability, keras, capability),
                )
            )
        params.append(pytest.param(keras, marks=marks, id=keras.name.lower()))
    return params


def api(keras):
    """The Keras module of `keras`: tf_keras as tfopt binds it, or Keras 3."""
    return models.keras_module(keras)


def compiled(model, keras, learning_rate=1e-3):
    k = api(keras)
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def build(keras, info, name="student_cnn", seed=0):
    api(keras).utils.set_random_seed(seed)
    return models.build(
        name, info.input_shape, info.num_classes, keras_version=keras.value
    )
