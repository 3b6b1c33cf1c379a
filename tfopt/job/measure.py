"""What the main job measures of each artifact: accuracy on the test split,
parameters, MACs, non-zero parameters, file and gzipped size, TFLite
latency; and for channel pruning the batch-1 speed of the dense and shrunk
models. `tfopt.job.report` renders the rows made here."""

import contextlib
import os
import shlex
import sys
import warnings

import numpy as np
import tensorflow as tf

from tfopt import export, models, pruning
from tfopt.core import speed as _speed
from tfopt.core import tflite
from tfopt.core.kerases import Keras
from tfopt.core.sparsity import NOT_PARAMETERS

__all__ = ["environment", "file_row", "keras_accuracy", "keras_row", "macs", "speed"]

_sizes = tflite.disk_sizes  # (bytes, gzipped bytes)


def _counts(model):
    # By name, not `trainable_weights`: frozen layers' weights count too.
    weights = [
        w.numpy()
        for w in model.weights
        if not w.name.split(":")[0].endswith(NOT_PARAMETERS)
    ]
    return (
        int(sum(w.size for w in weights)),
        int(sum(np.count_nonzero(w) for w in weights)),
    )


def macs(model):
    """Multiply-accumulates per example of a Keras model (None for what has
    no layer graph, e.g. a loaded SavedModel)."""
    if Keras.of(model) is Keras.KERAS3:
        from tfopt.keras3 import sparsity

        return sparsity.macs(model)
    from tfopt.keras2 import cost, graph
    from tfopt.keras2.binding import keras

    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or model._is_graph_network
    ):
        return None
    flat = graph.flat(model)
    return cost.cost(flat)[1]


def keras_accuracy(model, data):
    """`model`'s accuracy on `data` (labels as class indices, logits out)."""
    keras = Keras.of(model)
    scope = contextlib.nullcontext()
    if keras is Keras.KERAS3:
        from tfopt.keras3 import fit

        fit.enable_multi_worker(model)  # evaluate under a multi-worker strategy
        # Keras 3 makes the metrics where `compile` runs: in the model's strategy.
        scope = model.distribute_strategy.scope()
    with scope:
        model.compile(
            loss=models.keras_module(keras).losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            metrics=["accuracy"],
        )
    return model.evaluate(data, verbose=0, return_dict=True)["accuracy"]


def _row(name, accuracy, counts, sizes, reference, latency=None, model=None):
    row = {
        "artifact": name,
        "accuracy": float(accuracy),
        "params": counts[0],
        "macs": macs(model),
        "nonzero_params": counts[1],
        "size_bytes": sizes[0],
        "gzip_bytes": sizes[1],
        "latency_ms_per_example": latency,
    }
    row["accuracy_delta"] = (
        0.0 if reference is None else (row["accuracy"] - reference["accuracy"])
    )
    row["gzip_ratio"] = (
        1.0 if reference is None else (reference["gzip_bytes"] / row["gzip_bytes"])
    )
    return row


def keras_row(stem, name, model, test, reference):
    """Evaluates a Keras artifact on `test`, saved to `{stem}.h5` to be sized
    (`{stem}.weights.h5` for Keras 3)."""
    # .h5 without the optimizer: the deployable size, measured the way TFMOT's
    # published pruning results are. Keras 3 calls .h5 models legacy (with a
    # log line), and its weights file holds a compiled model's optimizer too:
    # it sizes the weights file of an uncompiled copy.
    if Keras.of(model) is Keras.KERAS3:
        path = stem + ".weights.h5"
        try:
            copy = type(model).from_config(model.get_config())  # never compiled
            copy.set_weights(model.get_weights())
        except ValueError:
            # A SavedModel teacher (`TFSMLayer`) is rebuilt only with unsafe
            # deserialization on; it serves, so it has no optimizer to leave.
            copy = model
        copy.save_weights(path)
    else:
        path = stem + ".h5"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are saving your model as an HDF5")
            model.save(path, include_optimizer=False)
    row = _row(
        name,
        keras_accuracy(model, test),
        _counts(model),
        _sizes(path),
        reference,
        model=model,
    )
    row["sparsity"] = pruning.sparsity_report(model).sparsity
    return row


def file_row(verified, reference):
    """The row of an exported artifact (`tfopt.job.exports.Verified`)."""
    return _row(
        verified.name,
        verified.accuracy,
        _counts(verified.model),
        _sizes(verified.path),
        reference,
        verified.latency_ms_per_example,
        verified.model,
    )


def speed(models, directory, representative_data, *, rounds=15, invokes=10):
    """Times `models` ({name: float Keras model}) as TFLite files written to
    `directory` at batch 1: float32 and int8 (calibrated on
    `representative_data`), 1 and 2 threads, interleaved, medians. Returns
    one row per model."""
    files = {}
    for name, model in models.items():
        # int8 calibrated: the ops of a QAT model's file, in a third of the
        # time (no QAT copy to build and convert).
        for kind, quantization in (("float32", None), ("int8", "int8")):
            files[name, kind] = export.export_tflite(
                model,
                os.path.join(directory, f"{name}_{kind}.tflite"),
                quantization=quantization,
                overwrite=True,
                representative_data=representative_data if quantization else None,
            ).path
    times = _speed.latencies(list(files.values()), rounds=rounds, invokes=invokes)
    return [
        {
            "model": name,
            "params": _counts(model)[0],
            "macs": macs(model),
            **{
                f"{kind}_ms": {
                    str(t): times[files[name, kind]][t] for t in _speed.THREADS
                }
                for kind in ("float32", "int8")
            },
        }
        for name, model in models.items()
    ]


def _versions(tfopt_version):
    # The Kerases this run loaded (a Keras 3 run loads neither tf_keras nor TFMOT).
    found = {"tensorflow": tf.__version__}
    for name, module in (
        ("keras", "keras"),
        ("tf_keras", "tf_keras"),
        ("tfmot", "tensorflow_model_optimization"),
    ):
        if module in sys.modules:
            found[name] = getattr(sys.modules[module], "__version__", "?")
    return {**found, "tfopt": tfopt_version, "python": sys.version.split()[0]}


def environment(run):
    """Where and how `run` ran: strategy, replicas, workers, versions, wall
    seconds per stage and the command line."""
    from tfopt import __version__

    worker = run.worker
    return {
        "strategy": run.strategy_name,
        "replicas": run.strategy.num_replicas_in_sync,
        "workers": worker.num_workers,
        "task": None
        if worker.task_type is None
        else f"{worker.task_type} {worker.task_id}",
        "versions": _versions(__version__),
        "stage_seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "command": shlex.join(run.command),
    }
