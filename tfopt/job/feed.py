"""What the main job feeds its model: images resized to the model's input
(gray and RGB converted), scaled by `--preprocess`, optionally augmented,
batched, cached where they fit in memory, and a training stream that
replays the same batches when a run resumes.

In-memory data (`tfopt.data.load`'s) trains from one tensor: epoch e is a
stateless shuffle of it seeded by (seed, e), fed to every worker and split
by tf.distribute, so any cluster trains on the same global batches.
Streamed data (`tfopt.job.inputs`) trains through
`distribute_datasets_from_function`: each worker's pipeline reads its own
share, shuffled each epoch with a seed of (seed, epoch, pipeline), and
every pipeline gives the same number of batches per epoch.
"""

import logging

import tensorflow as tf

from tfopt.job.fields import ConfigError

_log = logging.getLogger("tfopt.job.pipeline")
AUTOTUNE = tf.data.AUTOTUNE
# Decoded images are cached in memory up to this many bytes per split and
# pipeline; larger data is decoded again each epoch.
CACHE_BYTES = 2 << 30
# The most examples a streamed shuffle holds.
SHUFFLE_BUFFER = 50_000


def with_policy(dataset, policy):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


def target_shape(model, data_shape):
    """The (height, width[, channels]) one example of `model` takes; a
    dimension the model leaves open (`Input((None, None, 3))`) is the
    data's."""
    dims = tuple(model.inputs[0].shape[1:])
    return tuple(
        int(data_shape[i]) if d is None else int(d) for i, d in enumerate(dims)
    )


def preprocess_fn(config, keras):
    """[0, 1] images -> what `config.preprocess` says the model takes."""
    if config.preprocess == "rescale":
        return None
    if config.preprocess == "none":
        return lambda images: images * 255.0
    from tfopt.job import specs

    name = specs.applications_family(config)
    family = getattr(keras.applications, name).__module__.rsplit(".", 1)[-1]
    module = getattr(keras.applications, family, None)
    if module is None or not hasattr(module, "preprocess_input"):
        raise ConfigError(
            f"`preprocess=applications`: {keras.__name__}.applications has no "
            f"preprocess_input for {name}."
        )
    return lambda images: module.preprocess_input(images * 255.0)


def conformer(source_shape, target, scale, name):
    """A function of [0, 1] images of `source_shape` (one or a batch) ->
    images of `target`, scaled by `scale` (None: as they are)."""
    source_channels = source_shape[-1]
    channels = target[2] if len(target) == 3 else 1
    if source_channels != channels and (
        source_channels not in (1, 2, 3, 4) or channels not in (1, 3)
    ):
        raise ConfigError(
            f"`model={name}` takes {channels}-channel images; the data's have "
            f"{source_channels}."
        )
    size = tuple(target[:2])

    def conform(images):
        if source_channels in (2, 4):  # PNG with alpha: the colour
            images = images[..., : source_channels - 1]
        have = images.shape[-1]
        if have == 1 and channels == 3:
            images = tf.image.grayscale_to_rgb(images)
        elif have == 3 and channels == 1:
            images = tf.image.rgb_to_grayscale(images)
        if tuple(images.shape[-3:-1]) != size:
            images = tf.image.resize(images, size)
        if len(target) == 2:
            images = images[..., 0]
        return images if scale is None else scale(images)

    return conform


def augment(images, seed):
    """Light augmentation of a batch of images: a horizontal flip and a shift
    of up to 10% each way (pad by reflection, crop back), seeded."""
    if images.shape.rank == 3:  # a model of (height, width) inputs
        return augment(images[..., None], seed)[..., 0]
    height, width = images.shape[1], images.shape[2]
    pad_h, pad_w = max(1, height // 10), max(1, width // 10)
    flipped = tf.image.stateless_random_flip_left_right(images, seed=seed)
    padded = tf.pad(
        flipped, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT"
    )
    return tf.image.stateless_random_crop(
        padded, tf.shape(images), seed=tf.stack([seed[1], seed[0]])
    )


def batched(dataset, batch_size, count, example_bytes):
    """An evaluation split: batched, cached when it fits (`count` None: never),
    prefetched, and split by example across workers."""
    if count is not None and count * example_bytes <= CACHE_BYTES:
        dataset = dataset.cache()
    dataset = dataset.batch(batch_size).prefetch(AUTOTUNE)
    return with_policy(dataset, tf.data.experimental.AutoShardPolicy.DATA)


def streamed(source, conform, *, seed, batch_size, steps, first, epochs, extra):
    """The per-pipeline training stream `distribute_datasets_from_function`
    takes: epochs `first`..`epochs` of `steps` global batches each.
    `extra` is the augmentation (or None); `example_bytes` decides caching."""
    augment_fn, example_bytes, counts = extra

    def pipeline(context):
        index, count = context.input_pipeline_id, context.num_input_pipelines
        if count != len(counts):
            # A multi-host TPU slice has a pipeline per host, not per worker.
            raise ValueError(
                f"streamed data was counted for {len(counts)} input pipelines "
                f"but the strategy runs {count}: use data held in memory "
                "(a bundled, keras.datasets or tfds data set) on a multi-host "
                "TPU slice."
            )
        local = counts[index]
        base = source.train(index, count).map(
            lambda image, label: (conform(image), label),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        if local * example_bytes <= CACHE_BYTES:
            base = base.cache()
        replica_batch = context.get_per_replica_batch_size(batch_size)
        batches = steps * (batch_size // count) // replica_batch

        def epoch(e):
            # A Python seed per epoch (a tensor seed inside `flat_map` fails
            # where op determinism is off), so epochs are concatenated.
            key = seed * 1_000_003 + e * 1009 + index
            data = base.shuffle(
                min(local, SHUFFLE_BUFFER), seed=key, reshuffle_each_iteration=False
            ).batch(replica_batch, drop_remainder=True)
            if augment_fn is not None:
                data = data.enumerate().map(
                    lambda i, batch: (
                        augment_fn(batch[0], tf.stack([tf.constant(key, tf.int64), i])),
                        batch[1],
                    )
                )
            # Every batch is read (the cache completes) but only the first
            # `batches` kept: every pipeline gives the same number.
            return (
                data.enumerate()
                .filter(lambda i, batch: i < batches)
                .map(lambda i, batch: batch)
            )

        stream = epoch(first)
        for e in range(first + 1, epochs):
            stream = stream.concatenate(epoch(e))
        return with_policy(
            stream.prefetch(AUTOTUNE), tf.data.experimental.AutoShardPolicy.OFF
        )

    return pipeline


def in_memory(x, y, conform, *, seed, batch_size, first, epochs, augmented):
    """The training stream of data held in memory: epoch e is a stateless
    shuffle of (x, y) seeded by (seed, e), in global batches that
    tf.distribute splits over replicas and workers, each shaped by
    `conform` (None: as they are)."""
    size = int(x.shape[0])

    def gather(rows):
        images = tf.gather(x, rows)
        return images if conform is None else conform(images)

    def epoch(index):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), index])
        )
        # Full global batches only: a partial one would be split unevenly
        # over the replicas, whose mean-of-means loss then depends on the
        # replica count (and TPUs need static shapes). The shuffle drops
        # different examples each epoch.
        batches = tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=True
        )
        if not augmented:
            return batches.map(lambda rows: (gather(rows), tf.gather(y, rows)))
        key = tf.constant(seed, tf.int64) * 1_000_003 + index
        return batches.enumerate().map(
            lambda i, rows: (
                augment(gather(rows), tf.stack([key, i])),
                tf.gather(y, rows),
            )
        )

    stream = tf.data.Dataset.range(first, epochs).flat_map(epoch)
    return with_policy(stream.prefetch(2), tf.data.experimental.AutoShardPolicy.DATA)
