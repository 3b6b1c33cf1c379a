"""A user's files, made for real in the tests: image folders (PNG and JPEG)
and TFRecords written from the bundled digits, and small trained models of
either Keras saved as `.keras`, `.h5` and SavedModel."""

import os

import numpy as np
import tensorflow as tf

from tfopt import data
from tfopt.job import files


def digits(count=None):
    """The digits as uint8 (n, 8, 8, 1) images (0-255) and int labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.minimum(bunch.images * 16, 255).astype(np.uint8)[..., None]
    return images[:count], bunch.target[:count].astype(np.int64)


def _encode(image, index):
    if index % 2:
        return tf.io.encode_png(image).numpy(), "png"
    return tf.io.encode_jpeg(image, quality=100).numpy(), "jpg"


def image_folder(root, images, labels):
    """Class subfolders of PNG and JPEG files under `root`; returns it."""
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        encoded, suffix = _encode(image, index)
        with open(os.path.join(folder, f"{index:05d}.{suffix}"), "wb") as file:
            file.write(encoded)
    return str(root)


def tfrecords(root, images, labels, shards=4, image_key=files.IMAGE_KEY):
    """`shards` TFRecord files `train-i-of-n.tfrecord` of PNG and JPEG
    records (`image_key`: another name, for a file the job must refuse);
    returns their glob."""
    os.makedirs(root, exist_ok=True)
    for shard in range(shards):
        path = os.path.join(root, f"train-{shard}-of-{shards}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for index in range(shard, len(labels), shards):
                record = files.example(_encode(images[index], index)[0], labels[index])
                if image_key != files.IMAGE_KEY:
                    features = record.features.feature
                    features[image_key].CopyFrom(features.pop(files.IMAGE_KEY))
                writer.write(record.SerializeToString())
    return os.path.join(str(root), "*.tfrecord")


def trained(keras, epochs=4, softmax=True):
    """A small classifier of `keras` trained on the digits, ending in a
    softmax as saved classifiers usually do."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=["accuracy"],
    )
    train, _, _, _ = data.load("digits", batch_size=32)
    model.fit(train, epochs=epochs, verbose=0)
    return model
