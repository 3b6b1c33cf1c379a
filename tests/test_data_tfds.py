"""tfds:NAME through the real tensorflow-datasets engine, on a builder that
prepares scikit-learn's digits locally (no download)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfopt import data

_DATA_DIR = {}


class TfoptTestDigits(tfds.core.GeneratorBasedBuilder):
    """The 8x8 digits as uint8 images, with a train and a test split."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, **kwargs):
        # tfds fixes its default data dir at import; keep test data in tmp.
        kwargs.setdefault("data_dir", _DATA_DIR["path"])
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.minimum(bunch.images * 16, 255).astype(np.uint8)[..., None]
        return {
            "train": self._generate_examples(images[:1500], bunch.target[:1500]),
            "test": self._generate_examples(images[1500:], bunch.target[1500:]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


class TfoptTestBroken(TfoptTestDigits):
    """A data set whose preparation fails, as a download does offline."""

    def _split_generators(self, dl_manager):
        raise OSError("no route to host")


class TfoptTestUnsupervised(TfoptTestDigits):
    """Images without supervised keys."""

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(8, 8, 1))}
            )
        )

    def _generate_examples(self, images, labels):
        for i, image in enumerate(images):
            yield i, {"image": image}


@pytest.fixture(scope="module")
def tfds_splits(tmp_path_factory):
    _DATA_DIR["path"] = str(tmp_path_factory.mktemp("tfds"))
    return data.load("tfds:tfopt_test_digits", batch_size=100, validation_fraction=0.2)


def test_tfds_data_set_loads_scaled_with_its_splits(tfds_splits):
    train, val, test, info = tfds_splits
    assert info == data.DatasetInfo(
        "tfds:tfopt_test_digits", (8, 8, 1), 10, 1200, 300, 297
    )
    sizes = []
    for split in (train, val, test):
        images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in split], strict=True)
        images, labels = np.concatenate(images), np.concatenate(labels)
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.min() >= 0 and images.max() == pytest.approx(1.0)
        sizes.append(len(labels))
    assert sizes == [1200, 300, 297]


def test_unknown_tfds_name_is_a_value_error():
    with pytest.raises(
        ValueError,
        match=(
            r"^`name` must name a tensorflow-datasets data set. "
            r"Received: name='tfds:no_such_set_xyz'"
        ),
    ):
        data.load("tfds:no_such_set_xyz", batch_size=8)


def test_a_failed_preparation_names_the_data_set_and_the_bundled_ones(tfds_splits):
    with pytest.raises(
        RuntimeError,
        match=(
            r"^tensorflow-datasets could not prepare 'tfopt_test_broken' "
            r"\(OSError: no route to host\)\. If this machine is offline, the bundled "
            r"data sets work without a network: 'digits', 'mnist5k'.$"
        ),
    ):
        data.load("tfds:tfopt_test_broken", batch_size=8)


def test_unsupervised_tfds_sets_are_refused(tfds_splits):
    with pytest.raises(
        ValueError,
        match=(
            r"^`name` must name a supervised tensorflow-datasets data set with a "
            r"'train' split. Received: name='tfds:tfopt_test_unsupervised'"
        ),
    ):
        data.load("tfds:tfopt_test_unsupervised", batch_size=8)


def test_a_split_expression_chooses_the_training_data(tfds_splits):
    train, val, test, info = data.load(
        "tfds:tfopt_test_digits",
        batch_size=100,
        validation_fraction=0.2,
        train_split="train[:50%]",
    )
    # Half of the 1,500 training examples; validation held out of them.
    assert (info.train_size, info.validation_size, info.test_size) == (600, 150, 297)
    assert sum(len(y) for _, y in train) == 600
    assert sum(len(y) for _, y in val) == 150
    # The other half is what train[50%:] trains on.
    *_, rest = data.load(
        "tfds:tfopt_test_digits", batch_size=100, train_split="train[50%:]"
    )
    assert rest.train_size + rest.validation_size == 750


def test_a_bad_split_expression_names_it(tfds_splits):
    with pytest.raises(
        ValueError,
        match=(
            r"^`train_split` must be a split expression of 'tfds:tfopt_test_digits' "
            r"\(splits \['test', 'train'\]\), e.g. 'train\[:90%\]'. "
            r"Received: train_split='validation'$"
        ),
    ):
        data.load("tfds:tfopt_test_digits", batch_size=100, train_split="validation")


def test_a_sum_of_splits_is_refused_as_train_split(tfds_splits):
    with pytest.raises(
        ValueError,
        match=(
            r"^`train_split` must be one split or a slice of one, e.g. "
            r"'train\[:90%\]'. Received: train_split='train\+test'$"
        ),
    ):
        data.load("tfds:tfopt_test_digits", batch_size=100, train_split="train+test")
