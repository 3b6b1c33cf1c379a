"""A user's own code, named by the main job as `module.path:function`: a
model builder, a data set function and a custom layer."""

import keras
import numpy as np
import tensorflow as tf

from tests.support import userdata


def build(input_shape, num_classes):
    """A Keras 3 classifier with logits out."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes),
        ]
    )


def splits():
    """(train, validation, test): batched uint8 digits, as a user's loader
    would return them."""
    images, labels = userdata.digits()
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order].astype(np.int32)
    parts = (slice(0, 1200), slice(1200, 1400), slice(1400, None))
    return tuple(
        tf.data.Dataset.from_tensor_slices((images[p], labels[p])).batch(50)
        for p in parts
    )


def forever():
    """A loader that repeats its training set: the job must refuse it."""
    train, validation, test = splits()
    return train.repeat(), validation, test


def float_labels():
    """Labels as floats: the job wants class indices."""
    return tuple(d.map(lambda x, y: (x, tf.cast(y, tf.float32))) for d in splits())


def failing():
    raise RuntimeError("the user's loader failed")


def build_tf_keras(input_shape, num_classes):
    import tf_keras

    return tf_keras.Sequential(
        [
            tf_keras.Input(input_shape),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10),
        ]
    )


def not_splits():
    return "a string"


@keras.saving.register_keras_serializable(package="user_code")
class Scale(keras.layers.Layer):
    """A custom layer, registered when this module is imported."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
