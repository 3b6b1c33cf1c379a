"""The `inputs` suite of scripts/benchmark.py: the main job's input
pipelines against in-memory tensors, for the same model and data.

The bundled images are written as a folder of PNG files (`images:DIR`) and
as TFRecord files (`tfrecord:GLOB`); each variant is the job's own training
stream (`tfopt.job.state.Run.stream`, built the way a run builds it),
trained for a few epochs per round, the rounds interleaved. The ratio is
steady-state steps per second of the file pipeline over the in-memory one
(first epochs, which decode and fill the cache, are reported apart).
"""

import os
import statistics
import tempfile
import time

EPOCHS = 3  # per round: the first fills the caches


def _files(root, images, labels):
    """The images as PNG class folders and as 4 TFRecord files."""
    from tfopt.job import files

    folder = files.write_image_folder(os.path.join(root, "images"), images, labels)
    return folder, files.write_tfrecords(os.path.join(root, "records"), images, labels)


def _run(dataset, model_dir):
    """A started job run (data loaded and shaped for student_cnn)."""
    import tfopt
    from tfopt.job import prepare, state
    from tfopt.job.config import Config

    config = Config(
        model_dir=model_dir,
        dataset=dataset,
        model="student_cnn",
        keras="3",
        batch_size=64,
        deterministic=False,
    ).check()
    run = state.Run(config, tfopt.get_strategy("default"), ["benchmark"])
    run.start(lambda: prepare.prepare(run))
    return run


def _epoch_seconds(run, model, epochs):
    import keras

    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(
        run.stream(0, epochs),
        epochs=epochs,
        steps_per_epoch=run.steps,
        verbose=0,
        shuffle=False,
        callbacks=[Timer()],
    )
    return seconds


def _time(runs, info, rounds, epochs):
    """Per-step seconds of each run's stream: ({run: steady}, {run: first})."""
    import keras

    from tfopt import models

    keras.utils.set_random_seed(0)
    model = models.build("student_cnn", info.input_shape, info.num_classes)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    _epoch_seconds(runs["memory"], model, 1)  # warm-up: tracing
    steady = {key: [] for key in runs}
    first = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            seconds = _epoch_seconds(run, model, epochs)
            first[key].append(seconds[0] / run.steps)
            steady[key] += [s / run.steps for s in seconds[1:]]
    return steady, first


def inputs(quick):
    """Steps per second of `images:DIR` and `tfrecord:GLOB` training streams
    over in-memory tensors, student_cnn (Keras 3), batch 64."""
    import numpy as np

    from tfopt import data

    name = "digits" if quick else "mnist5k"
    train, validation, test, info = data.load(name, batch_size=512)
    every = train.concatenate(validation).concatenate(test)
    images = np.concatenate([x.numpy() for x, _ in every])
    labels = np.concatenate([y.numpy() for _, y in every])
    pixels = np.round(images * 255).astype(np.uint8)
    rounds, epochs = (1, 2) if quick else (5, EPOCHS)
    with tempfile.TemporaryDirectory() as root:
        folder, glob = _files(root, pixels, labels)
        variants = {
            "memory": name,
            "images": f"images:{folder}",
            "tfrecord": f"tfrecord:{glob}",
        }
        runs = {}
        try:
            for key, dataset in variants.items():
                runs[key] = _run(dataset, os.path.join(root, f"run_{key}"))
            steady, first = _time(runs, info, rounds, epochs)
        finally:
            for run in runs.values():
                run.close()
    per_step = {key: statistics.median(v) for key, v in steady.items()}
    return {
        "data": name,
        "steps_per_epoch": {key: run.steps for key, run in runs.items()},
        "ms_per_step": {key: 1000 * v for key, v in per_step.items()},
        "first_epoch_ms_per_step": {
            key: 1000 * statistics.median(v) for key, v in first.items()
        },
        # Steps per second relative to in-memory tensors (higher is better).
        "images_vs_memory": per_step["memory"] / per_step["images"],
        "tfrecord_vs_memory": per_step["memory"] / per_step["tfrecord"],
    }
