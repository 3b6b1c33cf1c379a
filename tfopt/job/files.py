"""The user's image data in files, as lists the main job reads: a folder of
class subfolders (`images:DIR`) and TFRecord files of the common
image-classification layout (`tfrecord:GLOB`). Every path goes through
`tf.io.gfile`, so the data may be on Cloud Storage.

What is wrong with the data (no class folders, an empty one, a file that is
not an image, records without the expected features) is a `ConfigError`
naming the folder or file, found here before the run writes anything.
"""

import os

import numpy as np
import tensorflow as tf

from tfopt.job.fields import ConfigError

# keras.utils.image_dataset_from_directory's formats (GIF: its first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a")
SPLIT_DIRS = {
    "train": ("train",),
    "validation": ("validation", "val"),
    "test": ("test",),
}
IMAGE_KEY, LABEL_KEY = "image/encoded", "image/class/label"


def copy_tree(source, target):
    """Copies the file or directory tree `source` to `target`, either of them
    on any TensorFlow file system."""
    gfile = tf.io.gfile
    if not gfile.isdir(source):
        gfile.makedirs(os.path.dirname(target) or ".")
        gfile.copy(source, target, overwrite=True)
        return
    root = source.rstrip("/")
    for directory, _, names in gfile.walk(source):
        into = _join(target, directory[len(root) :].lstrip("/"))
        gfile.makedirs(into)
        for name in names:
            gfile.copy(_join(directory, name), _join(into, name), overwrite=True)


def _join(*parts):
    return tf.io.gfile.join(*(p for p in parts if p))


def _subdirs(path):
    return sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(path)
        if tf.io.gfile.isdir(_join(path, name.rstrip("/")))
    )


def image_folders(directory, text):
    """{split: (paths, labels)} and the class names of `directory`: class
    subfolders, or `train`/`validation`/`test` folders of them. A split
    missing here is None (held out of train by the caller)."""
    if not tf.io.gfile.isdir(directory):
        raise ConfigError(f"`dataset={text}`: {directory} is not a directory.")
    found = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if tf.io.gfile.isdir(_join(directory, name)):
                found[split] = _join(directory, name)
                break
    if "train" not in found:
        found = {"train": directory}
    classes = _subdirs(found["train"])
    if len(classes) < 2:
        raise ConfigError(
            f"`dataset={text}`: {found['train']} must hold a folder per class "
            f"(at least 2); it holds {len(classes)}."
        )
    splits = {}
    for split in SPLIT_DIRS:
        if split not in found:
            splits[split] = None
            continue
        if _subdirs(found[split]) != classes:
            raise ConfigError(
                f"`dataset={text}`: {found[split]} must hold the same class "
                f"folders as {found['train']} ({', '.join(classes)})."
            )
        splits[split] = _list_images(found[split], classes, text)
    return splits, classes


def _list_images(directory, classes, text):
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = _join(directory, name)
        images = sorted(
            _join(folder, f)
            for f in tf.io.gfile.listdir(folder)
            if f.lower().endswith(IMAGE_SUFFIXES)
        )
        if not images:
            raise ConfigError(
                f"`dataset={text}`: class folder {folder} holds no images "
                f"({', '.join(IMAGE_SUFFIXES)})."
            )
        for path in images:
            with tf.io.gfile.GFile(path, "rb") as file:
                head = file.read(8)
            if not head.startswith(_SIGNATURES):
                raise ConfigError(
                    f"`dataset={text}`: {path} is not a readable image (not "
                    "JPEG, PNG, BMP or GIF data)."
                )
        paths += images
        labels += [label] * len(images)
    return np.array(paths), np.array(labels, np.int32)


def record_files(pattern, text):
    """{split: [files]} of `pattern`: files named validation*/val*/test*
    form those splits (None when there are none), the rest train."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ConfigError(f"`dataset={text}`: no file matches {pattern}.")
    splits = {split: [] for split in SPLIT_DIRS}
    for file in files:
        base = os.path.basename(file).lower()
        split = next(
            (s for s in ("validation", "test") if base.startswith(SPLIT_DIRS[s])),
            "train",
        )
        splits[split].append(file)
    if not splits["train"]:
        raise ConfigError(
            f"`dataset={text}`: every matching file is a validation or test "
            "file; name the training files train-* (or anything else)."
        )
    for file in files:
        _check_record(file, text)
    return {split: (found or None) for split, found in splits.items()}


def _check_record(path, text):
    try:
        raw = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as err:
        raise ConfigError(
            f"`dataset={text}`: {path} is not a TFRecord file ({err.message})."
        ) from None
    if raw is None:
        raise ConfigError(f"`dataset={text}`: {path} holds no records.")
    try:
        features = tf.train.Example.FromString(raw.numpy()).features.feature
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        raise ConfigError(
            f"`dataset={text}`: the records of {path} are not tf.train.Example."
        ) from None
    if IMAGE_KEY not in features or LABEL_KEY not in features:
        raise ConfigError(
            f"`dataset={text}`: the records of {path} must hold {IMAGE_KEY} "
            f"(JPEG or PNG bytes) and {LABEL_KEY} (an int); they hold "
            f"{', '.join(sorted(features)) or 'no features'}."
        )


def parse_record(raw):
    """(encoded image, label) of one record."""
    parsed = tf.io.parse_single_example(
        raw,
        {
            IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        },
    )
    return parsed[IMAGE_KEY], tf.cast(parsed[LABEL_KEY], tf.int32)


def decode(encoded, channels=0):
    """A [0, 1] float32 image of JPEG/PNG/BMP/GIF bytes (GIF: first frame)."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.cast(image, tf.float32) / 255.0


def write_image_folder(directory, images, labels, *, classes=None):
    """Writes uint8 `images` (n, height, width, channels) as PNG files in
    one folder per class under `directory` (named `classes[label]`, else
    the label): what `images:DIR` reads. Returns `directory`."""
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = str(classes[label] if classes is not None else label)
        folder = _join(directory, name)
        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(_join(folder, f"{index:06d}.png"), "wb") as file:
            file.write(tf.io.encode_png(image).numpy())
    return directory


def example(encoded, label):
    """One record of the layout `tfrecord:GLOB` reads."""
    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(directory, images, labels, *, shards=4, prefix="train"):
    """Writes uint8 `images` and int `labels` as `shards` TFRecord files
    `{prefix}-i-of-n.tfrecord` (PNG bytes, every `shards`th example in
    each) under `directory`; returns their glob."""
    tf.io.gfile.makedirs(directory)
    for shard in range(shards):
        path = _join(directory, f"{prefix}-{shard}-of-{shards}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for index in range(shard, len(labels), shards):
                encoded = tf.io.encode_png(images[index]).numpy()
                writer.write(example(encoded, labels[index]).SerializeToString())
    return _join(directory, "*.tfrecord")
