"""The main job's data: what `--dataset` names, as unbatched examples of
each split that `tfopt.job.feed` batches, shapes and distributes.

Two kinds of source:

- *in memory* (`Source.streamed` False): the bundled and downloadable sets
  and `tfds:NAME`, through `tfopt.data.load`;
- *streamed*: `images:DIR`, `tfrecord:GLOB` and `module.path:function`.
  Each input pipeline (one per worker) reads its own files (its share of
  the examples a function returns) and decodes them in parallel.

Sources yield float32 images in [0, 1] at their own size and int32 labels.
Sizes and class counts of streamed training data are counted by each
pipeline over its own share (`Source.count`) and summed over the workers by
the caller, so no worker reads another's files.
"""

import os

import numpy as np
import tensorflow as tf

from tfopt import data as _data
from tfopt.job import files, specs
from tfopt.job.fields import ConfigError
from tfopt.job.sources import import_object

AUTOTUNE = tf.data.AUTOTUNE


class Source:
    """Unbatched [0, 1] `(image, label)` examples of each split.

    `train(pipeline, pipelines)` is input pipeline `pipeline`'s share of the
    training split, `validation` (or None) and `test` every example of
    theirs; `shape` is the images' own (height, width, channels).
    """

    streamed = True

    def __init__(self, name, shape, train, validation, test):
        self.name, self.shape = name, tuple(int(d) for d in shape)
        self.train, self.validation, self.test = train, validation, test

    def count(self, pipeline, pipelines):
        """(examples, largest label) of `pipeline`'s training share; reads
        labels only where it can."""
        return _count(self.labels(pipeline, pipelines))

    def labels(self, pipeline, pipelines):
        return self.train(pipeline, pipelines).map(lambda image, label: label)

    def check_pipelines(self, pipelines):
        """Raises `ConfigError` if `pipelines` workers cannot share the data."""

    def share(self, pipeline, pipelines):
        """What `pipeline` reads, in words."""
        return f"every {pipelines}th example from {pipeline}"


def count_examples(dataset):
    """(count, largest label) of a data set of (image, label)."""
    return _count(dataset.map(lambda image, label: label))


def _count(labels):
    """(count, largest label) of a data set of labels, in one pass."""
    count, largest = labels.reduce(
        (tf.constant(0, tf.int64), tf.constant(-1, tf.int32)),
        lambda state, label: (state[0] + 1, tf.maximum(state[1], label)),
    )
    return int(count), int(largest)


def _held_out(labels, seed, validation, test):
    """Stratified (train, validation, test) index arrays of `labels`."""
    rng = np.random.default_rng(seed)
    rest, test_idx = _data._stratified_split(labels, test, rng)
    kept, val_idx = _data._stratified_split(labels[rest], validation, rng)
    return rest[kept], rest[val_idx], test_idx


class _Images(Source):
    def __init__(self, config, spec):
        found, classes = files.image_folders(spec.value, config.dataset)
        paths, labels = found["train"]
        splits = {"train": found["train"]}
        if found["test"] is None or found["validation"] is None:
            t_idx, v_idx, s_idx = _held_out(
                labels,
                config.seed,
                config.validation_split if found["validation"] is None else 0.0,
                config.test_split if found["test"] is None else 0.0,
            )
            splits["train"] = (paths[t_idx], labels[t_idx])
            held = {"validation": v_idx, "test": s_idx}
            for split in held:
                if found[split] is None:
                    splits[split] = (paths[held[split]], labels[held[split]])
        for split in ("validation", "test"):
            splits.setdefault(split, found[split])
        # One seeded order: a train folder lists class by class, and
        # calibration and Taylor scores read the first batches.
        order = np.random.default_rng(config.seed).permutation(len(splits["train"][1]))
        splits["train"] = tuple(part[order] for part in splits["train"])
        if not len(splits["test"][0]):
            raise ConfigError(
                f"`dataset={config.dataset}` has no test images: give it a test "
                "folder or a `test_split` above 0."
            )
        self.classes, self._splits = len(classes), splits
        self.shape = _image_shape(found["train"][0], found["train"][1])
        val = splits["validation"]
        super().__init__(
            config.dataset,
            self.shape,
            self._shard,
            self._read(*val) if len(val[0]) else None,
            self._read(*splits["test"]),
        )

    def _read(self, paths, labels):
        def one(path, label):
            return files.decode(tf.io.read_file(path), self.shape[-1]), label

        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
        return dataset.map(one, num_parallel_calls=AUTOTUNE, deterministic=True)

    def _shard(self, pipeline, pipelines):
        paths, labels = self._splits["train"]
        return self._read(paths[pipeline::pipelines], labels[pipeline::pipelines])

    def share(self, pipeline, pipelines):
        paths = self._splits["train"][0]
        return f"{len(paths[pipeline::pipelines])} of {len(paths)} training images"

    def count(self, pipeline, pipelines):
        labels = self._splits["train"][1][pipeline::pipelines]
        return len(labels), int(labels.max()) if len(labels) else -1


def _image_shape(paths, labels):
    """(height, width, channels) the images of a folder are read as: the
    first one's size, and 3 channels if the first image of any class has
    colour, else 1 (alpha is dropped: the model sees the colour)."""
    firsts = [paths[np.flatnonzero(labels == c)[0]] for c in np.unique(labels)]
    shapes = [
        tf.io.decode_image(tf.io.read_file(p), expand_animations=False).shape
        for p in firsts
    ]
    colour = any(shape[-1] >= 3 for shape in shapes)
    return (*shapes[0][:2], 3 if colour else 1)


class _Records(Source):
    def __init__(self, config, spec):
        found = files.record_files(spec.value, config.dataset)
        self._files, self._seed = found["train"], config.seed
        self._bounds = _bounds(
            config.validation_split if found["validation"] is None else 0.0,
            config.test_split if found["test"] is None else 0.0,
        )
        splits = {}
        for split in ("validation", "test"):
            if found[split] is not None:  # every record of the user's files
                splits[split] = self._parsed(found[split], 1 << 20, "all")
            elif self._bounds[split][1] > self._bounds[split][0]:
                splits[split] = self._parsed(self._files, 0, split)
        if "test" not in splits:
            raise ConfigError(
                f"`dataset={config.dataset}` has no test records: give test-* "
                "files or a `test_split` above 0."
            )
        first = next(iter(self._parsed(self._files[:1], 0, "train")), None)
        if first is None:
            raise ConfigError(
                f"`dataset={config.dataset}`: {self._files[0]} holds no "
                "training records."
            )
        shape = tuple(files.decode(first[0]).shape)
        # Alpha dropped, as for image folders.
        shape = self.shape = (*shape[:2], 3 if shape[-1] >= 3 else 1)
        super().__init__(
            config.dataset,
            shape,
            self._shard,
            self._decoded(splits.get("validation")),
            self._decoded(splits["test"]),
        )

    def _parsed(self, paths, first_id, split):
        """Records of `paths` as (encoded, label), keeping `split`'s share:
        a hash of (file id, record index), the same on any worker."""
        low, high = self._bounds[split]
        ids = tf.range(first_id, first_id + len(paths), dtype=tf.int64)
        seed = tf.constant(self._seed, tf.int64) * 1_000_003

        def records(path, file_id):
            return (
                tf.data.TFRecordDataset(path)
                .enumerate()
                .map(lambda index, raw: (tf.stack([seed + file_id, index]), raw))
            )

        keyed = tf.data.Dataset.from_tensor_slices((list(paths), ids)).interleave(
            records,
            cycle_length=max(1, min(len(paths), 8)),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )

        def keep(key, raw):
            u = tf.random.stateless_uniform([], seed=key)
            return (u >= low) & (u < high)

        return keyed.filter(keep).map(
            lambda key, raw: files.parse_record(raw), num_parallel_calls=AUTOTUNE
        )

    def _decoded(self, dataset):
        if dataset is None:
            return None
        return dataset.map(
            lambda encoded, label: (files.decode(encoded, self.shape[-1]), label),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )

    def check_pipelines(self, pipelines):
        if len(self._files) < pipelines:
            raise ConfigError(
                f"`dataset={self.name}` has {len(self._files)} training "
                f"file(s) for {pipelines} workers: each worker reads its own "
                "files, so give at least one per worker."
            )

    def _mine(self, pipeline, pipelines):
        # Global file ids: the held-out share does not depend on the sharding.
        return [(i, f) for i, f in enumerate(self._files)][pipeline::pipelines]

    def share(self, pipeline, pipelines):
        mine = [os.path.basename(f) for _, f in self._mine(pipeline, pipelines)]
        return f"{len(mine)} of {len(self._files)} training files: {', '.join(mine)}"

    def _own(self, pipeline, pipelines):
        mine = self._mine(pipeline, pipelines)
        parts = [self._parsed([f], i, "train") for i, f in mine]
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset

    def _shard(self, pipeline, pipelines):
        return self._decoded(self._own(pipeline, pipelines))

    def labels(self, pipeline, pipelines):
        return self._own(pipeline, pipelines).map(lambda encoded, label: label)


def _bounds(validation, test):
    """Each split's [low, high) share of the hash of a record's key."""
    return {
        "test": (0.0, test),
        "validation": (test, test + validation),
        "train": (test + validation, 1.0),
        "all": (0.0, 1.0),
    }


class _Function(Source):
    def __init__(self, config, spec):
        made = import_object(spec.value, "dataset")()
        if not (isinstance(made, (tuple, list)) and len(made) == 3):
            raise ConfigError(
                f"`dataset={config.dataset}` must return (train, validation, "
                f"test) tf.data datasets; it returned {type(made).__name__}."
            )
        parts = [
            _examples(d, config.dataset, n) for d, n in zip(made, _SPLITS, strict=True)
        ]
        if parts[0] is None or parts[2] is None:
            raise ConfigError(
                f"`dataset={config.dataset}` must return a train and a test "
                "dataset (validation may be None)."
            )
        for part, split in zip(made, _SPLITS, strict=True):
            if part is not None and (
                part.cardinality() == tf.data.INFINITE_CARDINALITY
            ):
                raise ConfigError(
                    f"`dataset={config.dataset}`: its {split} set repeats "
                    "forever; return it without .repeat() (the job runs the "
                    "epochs)."
                )
        self._all = parts[0]
        shape = parts[0].element_spec[0].shape
        if shape.rank != 3 or not shape.is_fully_defined():
            raise ConfigError(
                f"`dataset={config.dataset}`: its images must have one shape "
                f"(height, width, channels); they have {shape}."
            )
        super().__init__(config.dataset, shape, self._shard, parts[1], parts[2])

    def _shard(self, pipeline, pipelines):
        return self._all.shard(pipelines, pipeline)


_SPLITS = ("train", "validation", "test")


def _examples(dataset, text, split):
    """`dataset` as unbatched ([0, 1] float image, int32 label)."""
    if dataset is None:
        return None
    spec = getattr(dataset, "element_spec", None)
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ConfigError(
            f"`dataset={text}`: its {split} set must be a tf.data.Dataset of "
            f"(image, label) pairs; it is {type(dataset).__name__}."
        )
    if spec[0].shape.rank == 4:  # batches of images
        dataset = dataset.unbatch()
        spec = dataset.element_spec
    if spec[1].shape.rank != 0 or not spec[1].dtype.is_integer:
        raise ConfigError(
            f"`dataset={text}`: its {split} labels must be integer class "
            f"indices; they are {spec[1].dtype.name} of shape {spec[1].shape}."
        )
    scale = 255.0 if spec[0].dtype == tf.uint8 else 1.0
    return dataset.map(
        lambda image, label: (
            tf.cast(image, tf.float32) / scale,
            tf.cast(label, tf.int32),
        ),
        num_parallel_calls=AUTOTUNE,
    )


_KINDS = {"images": _Images, "tfrecord": _Records, "function": _Function}


def open_source(config):
    """The `Source` of `config.dataset`; None for the in-memory kinds (which
    `tfopt.data.load` serves)."""
    spec = specs.dataset(config.dataset)
    if spec.kind not in _KINDS:
        return None
    return _KINDS[spec.kind](config, spec)
