"""The main job on the user's data: an image folder, TFRecord files, a data
set function, tfds split expressions; paths on a non-local TensorFlow file
system (`ram://`); and every bad input answered in one line before anything
is written."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.support import userdata
from tfopt.job import files, pipeline
from tfopt.job.config import Config, ConfigError

QUICK = {
    "batch_size": 32,
    "epochs": 1,
    "learning_rate": 5e-3,
    "deterministic": False,
    "export": ("tflite_int8",),
}


@pytest.fixture(scope="module")
def digits():
    return userdata.digits()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits):
    return userdata.image_folder(tmp_path_factory.mktemp("images"), *digits)


@pytest.fixture(scope="module")
def records(tmp_path_factory, digits):
    return userdata.tfrecords(tmp_path_factory.mktemp("records"), *digits)


def _sizes(report_dir):
    import json

    dataset = json.loads((report_dir / "report.json").read_text())["dataset"]
    return dataset


def test_an_image_folder_is_split_per_class_and_trains(tmp_path, folder, digits):
    report = pipeline.run(
        Config(model_dir=str(tmp_path / "run"), dataset=f"images:{folder}", **QUICK)
    )
    info = _sizes(tmp_path / "run")
    total = len(digits[1])
    # test_split 0.2 and validation_split 0.1 of each class, held out.
    assert info["input_shape"] == [8, 8, 1] and info["num_classes"] == 10
    assert info["train_size"] + info["validation_size"] + info["test_size"] == total
    assert abs(info["test_size"] - 0.2 * total) <= 10
    assert abs(info["validation_size"] - 0.1 * 0.8 * total) <= 10
    assert report.rows[0]["accuracy"] > 0.5


def test_train_validation_and_test_folders_are_used_as_they_are(tmp_path, digits):
    images, labels = digits
    for split, part in (("train", slice(0, 1000)), ("val", slice(1000, 1300))):
        userdata.image_folder(tmp_path / "data" / split, images[part], labels[part])
    userdata.image_folder(tmp_path / "data" / "test", images[1300:], labels[1300:])
    pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            dataset=f"images:{tmp_path / 'data'}",
            **QUICK,
        )
    )
    info = _sizes(tmp_path / "run")
    assert (info["train_size"], info["validation_size"], info["test_size"]) == (
        1000,
        300,
        len(labels) - 1300,
    )


@pytest.mark.parametrize("keras_version", ["2", "3"])
def test_tfrecords_hold_out_validation_and_test_by_record(
    tmp_path, records, digits, keras_version
):
    # Streamed through distribute_datasets_from_function into either Keras.
    report = pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            dataset=f"tfrecord:{records}",
            keras=keras_version,
            **QUICK,
        )
    )
    info = _sizes(tmp_path / "run")
    total = len(digits[1])
    assert info["train_size"] + info["validation_size"] + info["test_size"] == total
    assert abs(info["test_size"] / total - 0.2) < 0.04
    assert info["num_classes"] == 10
    assert report.rows[0]["accuracy"] > 0.5


def test_a_data_set_function_of_the_user(tmp_path):
    pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            dataset="tests.support.user_code:splits",
            augment=True,
            **QUICK,
        )
    )
    info = _sizes(tmp_path / "run")
    assert (info["train_size"], info["validation_size"], info["test_size"]) == (
        1200,
        200,
        397,
    )


def test_images_are_resized_and_converted_for_the_model(tmp_path, folder):
    # An RGB 16x16 model of the user's, fed the gray 8x8 images.
    pipeline.run(
        Config(
            model_dir=str(tmp_path / "run"),
            dataset=f"images:{folder}",
            model="tests.support.user_code:build",
            input_shape="16,16,3",
            preprocess="none",
            **QUICK,
        )
    )
    model = keras.saving.load_model(tmp_path / "run" / "checkpoints" / "baseline.keras")
    assert model.input_shape == (None, 16, 16, 3)


def test_every_path_may_be_on_another_file_system(tmp_path, folder):
    # ram:// exists only inside TensorFlow: a local open() of any of these
    # paths would fail.
    model = userdata.trained(keras)
    model.save(tmp_path / "user.keras")
    tf.io.gfile.copy(str(tmp_path / "user.keras"), "ram://models/user.keras", True)
    files.copy_tree(folder, "ram://data/images")
    config = Config(
        model_dir="ram://runs/one",
        model="ram://models/user.keras",
        teacher="ram://models/user.keras",
        dataset="images:ram://data/images",
        prune=True,
        qat=True,
        **QUICK,
    )
    report = pipeline.run(config)
    assert [row["artifact"] for row in report.rows] == [
        "teacher",
        "given",
        "distilled+pruned",
        "qat",
        "tflite_int8",
    ]
    written = {
        name
        for directory, _, names in tf.io.gfile.walk("ram://runs/one")
        for name in names
    }
    assert {"config.json", "report.md", "report.json", "report.png"} <= written
    assert {"distilled.keras", "qat.keras", "model_int8.tflite"} <= written
    with tf.io.gfile.GFile("ram://runs/one/report.md") as file:
        assert file.read() == report.markdown
    # The same command again resumes from the ram:// stages.
    again = pipeline.run(config)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in report.rows]


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(content)
    return str(path)


def _bad_inputs(tmp_path, digits):
    """(config overrides, the exact message) of each bad input."""
    images, labels = digits
    not_a_model = _write(tmp_path / "model.keras", b"not a model")
    empty = userdata.image_folder(tmp_path / "empty", images[:20], labels[:20] % 2)
    os.makedirs(os.path.join(empty, "class_9"))
    unreadable = userdata.image_folder(tmp_path / "bad", images[:20], labels[:20] % 2)
    bad_image = _write(os.path.join(unreadable, "class_1", "broken.png"), b"oops")
    three = userdata.image_folder(tmp_path / "three", images[:60], labels[:60] % 3)
    flat = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    flat_path = str(tmp_path / "flat.keras")
    flat.save(flat_path)
    wrong = userdata.tfrecords(
        tmp_path / "wrong", images[:8], labels[:8], shards=1, image_key="jpeg"
    )
    model = userdata.trained(keras, epochs=1)
    saved = str(tmp_path / "ten.keras")
    model.save(saved)
    one_class = userdata.image_folder(tmp_path / "one", images[:20], labels[:20] * 0)
    split_dirs = tmp_path / "splits"
    userdata.image_folder(split_dirs / "train", images[:40], labels[:40] % 2)
    userdata.image_folder(split_dirs / "test", images[:40], labels[:40] % 3)
    empty_records = tmp_path / "norecords"
    empty_records.mkdir()
    tf.io.TFRecordWriter(str(empty_records / "train-0.tfrecord")).close()
    not_saved = tmp_path / "not_saved"
    not_saved.mkdir()
    return [
        (
            {"dataset": f"images:{one_class}"},
            f"`dataset=images:{one_class}`: {one_class} must hold a folder per "
            "class (at least 2); it holds 1.",
        ),
        (
            {"dataset": f"images:{split_dirs}"},
            f"`dataset=images:{split_dirs}`: {split_dirs}/test must hold the "
            f"same class folders as {split_dirs}/train (class_0, class_1).",
        ),
        (
            {"dataset": f"tfrecord:{empty_records}/*.tfrecord"},
            f"`dataset=tfrecord:{empty_records}/*.tfrecord`: "
            f"{empty_records}/train-0.tfrecord holds no records.",
        ),
        (
            {"model": f"{not_saved}/"},
            f"`model={not_saved}/` is a directory but not a SavedModel (no "
            "saved_model.pb).",
        ),
        (
            {"model": "tests.support.user_code:build_tf_keras"},
            "`model=tests.support.user_code:build_tf_keras` returned a tf_keras "
            "model; set `keras=2` (or build a Keras 3 one).",
        ),
        (
            {"dataset": "tests.support.user_code:failing"},
            "the run cannot start: RuntimeError: the user's loader failed",
        ),
        (
            {"dataset": "tests.support.user_code:float_labels"},
            "`dataset=tests.support.user_code:float_labels`: its train labels "
            "must be integer class indices; they are float32 of shape ().",
        ),
        (
            {"test_split": 0.0},
            "`test_split=0.0` leaves `dataset=digits` no test examples.",
        ),
        (
            {"model": not_a_model},
            f"`model={not_a_model}` is not a Keras model file (.keras, .h5 or a "
            "SavedModel directory).",
        ),
        (
            {"model": saved, "dataset": f"images:{three}"},
            f"`model={saved}` outputs 10 classes, but `dataset` has 3.",
        ),
        (
            {"model": flat_path},
            f"`model={flat_path}` takes inputs of shape (None, 64); the job "
            "feeds images (height, width, channels).",
        ),
        (
            {"model": saved, "keras": "2"},
            f"`model={saved}` was saved by Keras 3; drop `keras=2` or set `keras=3`.",
        ),
        (
            {"dataset": f"images:{empty}"},
            f"`dataset=images:{empty}`: class folder {empty}/class_9 holds no "
            "images (.jpg, .jpeg, .png, .bmp, .gif).",
        ),
        (
            {"dataset": f"images:{unreadable}"},
            f"`dataset=images:{unreadable}`: {bad_image} is not a readable image "
            "(not JPEG, PNG, BMP or GIF data).",
        ),
        (
            {"dataset": f"images:{tmp_path / 'nowhere'}"},
            f"`dataset=images:{tmp_path / 'nowhere'}`: {tmp_path / 'nowhere'} is "
            "not a directory.",
        ),
        (
            {"dataset": f"tfrecord:{wrong}"},
            f"`dataset=tfrecord:{wrong}`: the records of "
            f"{tmp_path / 'wrong' / 'train-0-of-1.tfrecord'} must hold "
            "image/encoded (JPEG or PNG bytes) and image/class/label (an int); "
            "they hold image/class/label, jpeg.",
        ),
        (
            {"dataset": f"tfrecord:{tmp_path / 'none' / '*.tfrecord'}"},
            f"`dataset=tfrecord:{tmp_path / 'none' / '*.tfrecord'}`: no file "
            f"matches {tmp_path / 'none' / '*.tfrecord'}.",
        ),
        (
            {"model": "no_such_package.models:build"},
            "`model=no_such_package.models:build` cannot be imported: "
            "ModuleNotFoundError: No module named 'no_such_package'.",
        ),
        (
            {"model": "tests.support.user_code:missing"},
            "`model=tests.support.user_code:missing`: module "
            "tests.support.user_code has no 'missing'.",
        ),
        (
            {"dataset": "no_such_package.data:splits"},
            "`dataset=no_such_package.data:splits` cannot be imported: "
            "ModuleNotFoundError: No module named 'no_such_package'.",
        ),
        (
            {"dataset": "tests.support.user_code:not_splits"},
            "`dataset=tests.support.user_code:not_splits` must return (train, "
            "validation, test) tf.data datasets; it returned str.",
        ),
        (
            {"model": "applications:NoSuchNet"},
            "`model=applications:NoSuchNet` is not in keras.applications (e.g. "
            "MobileNetV2, EfficientNetB0, ResNet50).",
        ),
    ]


def test_every_bad_input_is_one_line_before_anything_is_written(tmp_path, digits):
    cases = _bad_inputs(tmp_path / "inputs", digits)
    for index, (overrides, message) in enumerate(cases):
        run_dir = tmp_path / f"run{index}"
        config = {**QUICK, "dataset": "digits", **overrides}
        with pytest.raises(ConfigError) as raised:
            pipeline.run(Config(model_dir=str(run_dir), **config))
        assert str(raised.value) == message
        assert "\n" not in str(raised.value)
        assert not run_dir.exists(), overrides


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"weights": "w.h5"},
            "`weights=w.h5` loads into an applications:NAME or "
            "module.path:function model; `model=student_cnn` is not one.",
        ),
        (
            {"train_split": "train[:50%]"},
            "`train_split=train[:50%]` applies to `dataset=tfds:NAME`.",
        ),
        (
            {"preprocess": "applications"},
            "`preprocess=applications` needs `model=applications:NAME` (the "
            "family whose preprocess_input to use).",
        ),
        (
            {"input_shape": "32x32x"},
            "`input_shape=32x32x` must be height,width,channels of positive "
            "ints, e.g. 96,96,3.",
        ),
        (
            {"model": "applications:Mobile-Net"},
            "`model=applications:Mobile-Net` must name a keras.applications "
            "model, e.g. applications:MobileNetV2.",
        ),
        (
            {"dataset": "images:"},
            "`dataset=images:` must be one of digits, mnist5k, mnist, "
            "fashion_mnist, cifar10, tfds:NAME, images:DIR, tfrecord:GLOB or "
            "module.path:function.",
        ),
        (
            {"custom_objects": "my layers"},
            "`custom_objects=my layers` must be a module name, e.g. my_project.layers.",
        ),
    ],
)
def test_flags_that_cannot_go_together_are_refused_without_tensorflow(
    overrides, message
):
    with pytest.raises(ConfigError) as raised:
        Config(model_dir="run", **overrides).check()
    assert str(raised.value) == message


def test_each_worker_reads_its_own_files_and_together_all(records, digits):
    from tfopt.job import inputs

    source = inputs.open_source(Config(dataset=f"tfrecord:{records}"))

    def labels(pipeline, pipelines):
        return sorted(
            int(y) for _, y in source.train(pipeline, pipelines).as_numpy_iterator()
        )

    one, first, second = labels(0, 1), labels(0, 2), labels(1, 2)
    assert sorted(first + second) == one
    assert source.share(0, 2) == (
        "2 of 4 training files: train-0-of-4.tfrecord, train-2-of-4.tfrecord"
    )
    assert source.count(1, 2) == (len(second), 9)
    with pytest.raises(ConfigError, match="has 4 training file"):
        source.check_pipelines(5)


def test_gray_alpha_and_rgba_pngs_lose_their_alpha(tmp_path, digits):
    from tfopt.job import feed, inputs

    images, labels = digits
    for label in (0, 1):
        for i, image in enumerate(images[:30]):
            pair = np.concatenate([image, np.full_like(image, 255)], axis=-1)
            with open(tmp_path / f"{label}_{i}.png", "wb") as file:
                file.write(tf.io.encode_png(pair).numpy())
            (tmp_path / f"c{label}").mkdir(exist_ok=True)
            os.replace(
                tmp_path / f"{label}_{i}.png", tmp_path / f"c{label}" / f"{i}.png"
            )
    source = inputs.open_source(Config(dataset=f"images:{tmp_path}"))
    assert source.shape == (8, 8, 1)  # gray: the alpha is dropped
    image, label = next(iter(source.test))
    rgb = feed.conformer(source.shape, (8, 8, 3), None, "m")(image)
    assert rgb.shape == (8, 8, 3)
    assert np.allclose(rgb[..., 1], image[..., 0])


def test_tfrecord_files_named_test_are_the_test_split_whole(tmp_path, digits):
    from tfopt.job import inputs

    images, labels = digits
    userdata.tfrecords(tmp_path, images[:1500], labels[:1500], shards=3)
    only_test = userdata.tfrecords(
        tmp_path / "t", images[1500:], labels[1500:], shards=1
    )
    os.replace(only_test.replace("*", "train-0-of-1"), tmp_path / "test-0.tfrecord")
    source = inputs.open_source(
        Config(dataset=f"tfrecord:{tmp_path}/*.tfrecord", validation_split=0.2)
    )
    # Every record of the test file; validation is held out of train only.
    assert inputs.count_examples(source.test)[0] == len(labels) - 1500
    train = source.count(0, 1)[0]
    validation = inputs.count_examples(source.validation)[0]
    assert train + validation == 1500
    assert abs(validation / 1500 - 0.2) < 0.04


def test_a_data_set_that_repeats_forever_is_refused(tmp_path):
    with pytest.raises(ConfigError) as raised:
        pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                dataset="tests.support.user_code:forever",
                **QUICK,
            )
        )
    assert str(raised.value) == (
        "`dataset=tests.support.user_code:forever`: its train set repeats "
        "forever; return it without .repeat() (the job runs the epochs)."
    )
    assert not (tmp_path / "run").exists()


def test_overwrite_never_deletes_the_users_inputs(tmp_path):
    model = userdata.trained(keras, epochs=1)
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "mine.keras")
    with pytest.raises(ConfigError) as raised:
        pipeline.run(
            Config(
                model_dir=str(tmp_path / "run"),
                model=str(tmp_path / "run" / "mine.keras"),
                overwrite=True,
                dataset="digits",
                **QUICK,
            )
        )
    assert str(raised.value) == (
        f"`model={tmp_path / 'run' / 'mine.keras'}` is inside `model_dir="
        f"{tmp_path / 'run'}`, which `overwrite` empties: move it out."
    )
    assert (tmp_path / "run" / "mine.keras").exists()


def test_a_resumed_stream_replays_the_same_batches(tmp_path, records):
    import tfopt
    from tfopt.job import prepare, state

    config = Config(
        model_dir=str(tmp_path / "run"), dataset=f"tfrecord:{records}", **QUICK
    ).check()
    run = state.Run(config, tfopt.get_strategy("default"), ["test"])
    try:
        run.start(lambda: prepare.prepare(run))

        def labels(first, epochs, global_seed):
            keras.utils.set_random_seed(global_seed)  # as built stages leave it
            stream = iter(run.stream(first, epochs))
            return [next(stream)[1].numpy().tolist() for _ in range(run.steps)]

        whole = labels(0, 2, 1)  # epoch 0
        resumed = labels(1, 2, 2)  # epoch 1 alone, another global seed
        uninterrupted = iter(run.stream(0, 2))
        for _ in range(run.steps):
            next(uninterrupted)
        second = [next(uninterrupted)[1].numpy().tolist() for _ in range(run.steps)]
        assert resumed == second != whole
    finally:
        run.close()
