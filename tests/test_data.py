import time

import numpy as np
import pytest

import tfopt
from tfopt import data


def _arrays(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize(
    "fixture, shape, sizes",
    [
        ("digits", (8, 8, 1), (1295, 143, 359)),
        ("mnist5k", (28, 28, 1), (3600, 400, 1000)),
    ],
)
def test_bundled_sets_are_scaled_batched_and_stratified(request, fixture, shape, sizes):
    train, val, test, info = request.getfixturevalue(fixture)
    assert info.name == fixture
    assert info.input_shape == shape
    assert info.num_classes == 10
    assert (info.train_size, info.validation_size, info.test_size) == sizes
    for split, size in zip((train, val, test), sizes, strict=True):
        x, y = _arrays(split)
        assert x.shape == (size, *shape) and x.dtype == np.float32
        assert y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() == pytest.approx(1.0)
        # The mnist5k file is sorted by label: every split must see every
        # class in about the same proportion.
        counts = np.bincount(y, minlength=10)
        assert counts.min() >= 0.8 * counts.max(), counts
    x_batch, _ = next(iter(train))
    assert x_batch.shape[0] == 32 if fixture == "digits" else 64


def test_splits_are_disjoint(digits):
    rows = [{image.tobytes() for image in _arrays(split)[0]} for split in digits[:3]]
    # digits holds a few duplicate images; disjoint indices keep overlap tiny.
    assert len(rows[0] & rows[2]) <= 3 and len(rows[1] & rows[2]) <= 3


def test_same_seed_same_data_other_seed_other_split():
    first = data.load("digits", batch_size=64, seed=3)
    again = data.load("digits", batch_size=64, seed=3)
    other = data.load("digits", batch_size=64, seed=4)
    for a, b in zip(first[:3], again[:3], strict=True):
        np.testing.assert_array_equal(_arrays(a)[0], _arrays(b)[0])
    assert not np.array_equal(_arrays(first.test)[1], _arrays(other.test)[1])


def test_training_pipeline_reshuffles_each_epoch(digits):
    epoch1 = _arrays(digits.train)[1]
    epoch2 = _arrays(digits.train)[1]
    assert not np.array_equal(epoch1, epoch2)
    np.testing.assert_array_equal(np.sort(epoch1), np.sort(epoch2))


def test_no_validation_and_drop_remainder():
    train, val, test, info = data.load(
        "digits", batch_size=100, validation_fraction=0.0, drop_remainder=True
    )
    assert val is None and info.validation_size == 0
    assert info.train_size == 1438
    assert sum(1 for _ in train) == 14
    assert all(x.shape[0] == 100 for x, _ in test)


def test_a_batch_larger_than_the_data_with_drop_remainder_is_refused():
    with pytest.raises(
        ValueError,
        match=(
            r"^`batch_size` must be at most the 1295 training examples of "
            r"'digits' when drop_remainder=True, or training sees no batch. "
            r"Received: batch_size=5000$"
        ),
    ):
        data.load("digits", batch_size=5000, drop_remainder=True)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"name": "imagenet"},
            ValueError,
            r"`name` must be one of \['digits', 'mnist5k', 'mnist', "
            r"'fashion_mnist', 'cifar10', 'tfds:NAME'\]. Received: "
            r"name='imagenet'",
        ),
        ({"name": "tfds:"}, ValueError, r"Received: name='tfds:'"),
        ({"name": 3}, TypeError, r"`name` must be a str, .* Received: name=3"),
        (
            {"batch_size": 0},
            ValueError,
            r"`batch_size` must be an int >= 1. Received: batch_size=0",
        ),
        (
            {"batch_size": 32.0},
            TypeError,
            r"`batch_size` must be an int. Received: batch_size=32.0",
        ),
        ({"batch_size": True}, TypeError, r"Received: batch_size=True"),
        (
            {"validation_fraction": 1.0},
            ValueError,
            r"`validation_fraction` must be in \[0, 1\). "
            r"Received: validation_fraction=1.0",
        ),
        (
            {"validation_fraction": -0.1},
            ValueError,
            r"Received: validation_fraction=-0.1",
        ),
        (
            {"validation_fraction": "0.1"},
            TypeError,
            r"`validation_fraction` must be a float. "
            r"Received: validation_fraction='0.1'",
        ),
        ({"seed": -1}, ValueError, r"`seed` must be an int >= 0. Received: seed=-1"),
        ({"seed": None}, TypeError, r"Received: seed=None"),
        (
            {"drop_remainder": 1},
            TypeError,
            r"`drop_remainder` must be a bool. Received: drop_remainder=1",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs, error, message):
    args = {"name": "digits", "batch_size": 32, **kwargs}
    with pytest.raises(error, match=message):
        data.load(args.pop("name"), **args)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_downloads_fail_fast_and_name_the_bundled_sets(name, tmp_path, monkeypatch):
    # A fresh home has no cached copy, and a proxy on a closed loopback port
    # makes the network unreachable on any machine, online or not.
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    start = time.monotonic()
    with pytest.raises(
        ConnectionError,
        match=(
            rf"^Could not download the '{name}' data set through keras.datasets "
            r"\(.*\). This machine may be offline; the bundled data sets work "
            r"without a network: 'digits', 'mnist5k'.$"
        ),
    ):
        data.load(name, batch_size=32)
    assert time.monotonic() - start < 30


def test_tfds_missing_says_how_to_install(monkeypatch):
    # None in sys.modules makes `import tensorflow_datasets` fail as if the
    # package were absent.
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
    with pytest.raises(
        ImportError,
        match=(
            r"^`name`='tfds:mnist' needs tensorflow-datasets, which is not "
            r"installed. Install it with: pip install 'tfopt\[tfds\]'$"
        ),
    ):
        data.load("tfds:mnist", batch_size=32)


def test_load_is_reachable_from_the_package():
    assert tfopt.data.load is data.load


def test_bundled_sets_without_the_data_extra_say_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "sklearn.datasets", None)
    with pytest.raises(
        ImportError,
        match=(
            r"^This data set needs scikit-learn, which is not installed. Install "
            r"tfopt's data extra: pip install 'tfopt\[data\]'$"
        ),
    ):
        data.load("digits", batch_size=32)
