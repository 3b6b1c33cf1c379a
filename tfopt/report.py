"""The report of a compress run: one row per artifact (accuracy on the test
split, parameters, multiply-accumulates, non-zero parameters, file and
gzipped size, TFLite latency per example), and for channel pruning the
speed of the dense and the shrunk model (batch-1 TFLite latency, float32 and
int8, 1 and 2 threads), as `report.json`, `report.md` and `report.png`."""

import contextlib
import json
import os
import shlex
import sys
import warnings

import numpy as np
import tensorflow as tf

from tfopt import _front, _speed, _tflite
from tfopt._sparsity import NOT_PARAMETERS

__all__ = ["environment", "file_row", "keras_accuracy", "keras_row", "macs",
           "markdown", "render", "speed", "speed_markdown", "write"]

_sizes = _tflite.disk_sizes  # (bytes, gzipped bytes)

COLUMNS = ("artifact", "accuracy", "accuracy_delta", "params", "macs",
           "nonzero_params", "size_bytes", "gzip_bytes", "gzip_ratio",
           "latency_ms_per_example")


def _counts(model):
    # By name, not `trainable_weights`: frozen layers' weights count too.
    weights = [w.numpy() for w in model.weights
               if not w.name.split(":")[0].endswith(NOT_PARAMETERS)]
    return (int(sum(w.size for w in weights)),
            int(sum(np.count_nonzero(w) for w in weights)))


def macs(model):
    """Multiply-accumulates per example of a Keras model (None for what has
    no layer graph, e.g. a loaded SavedModel)."""
    if _front.world(model) == _front.KERAS3:
        from tfopt import _k3_pruning

        return _k3_pruning.macs(model)
    from tfopt import _channels, _flatten
    from tfopt._keras import keras

    if not isinstance(model, keras.Model) or not (
            isinstance(model, keras.Sequential) or model._is_graph_network):
        return None
    flat = _flatten.flat(model)
    return _channels.cost(flat)[1]


def keras_accuracy(model, data):
    """`model`'s accuracy on `data` (labels as class indices, logits out)."""
    keras = _front.keras_of(model)
    scope = contextlib.nullcontext()
    if _front.world(model) == _front.KERAS3:
        from tfopt import _k3_fit

        _k3_fit.fix(model)  # evaluate under a multi-worker strategy
        # Keras 3 makes the metrics where `compile` runs: in the model's strategy.
        scope = model.distribute_strategy.scope()
    with scope:
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])
    return model.evaluate(data, verbose=0, return_dict=True)["accuracy"]


def _row(name, accuracy, counts, sizes, reference, latency=None, model=None):
    row = {"artifact": name, "accuracy": float(accuracy),
           "params": counts[0], "macs": macs(model), "nonzero_params": counts[1],
           "size_bytes": sizes[0], "gzip_bytes": sizes[1],
           "latency_ms_per_example": latency}
    row["accuracy_delta"] = 0.0 if reference is None else (
        row["accuracy"] - reference["accuracy"])
    row["gzip_ratio"] = 1.0 if reference is None else (
        reference["gzip_bytes"] / row["gzip_bytes"])
    return row


def keras_row(run, name, model, reference):
    """Evaluates a Keras artifact, saved to `export/{name}.h5` to be sized."""
    # .h5 without the optimizer: the deployable size, measured the way TFMOT's
    # published pruning results are. Keras 3 calls .h5 models legacy (with a
    # log line), and its weights file holds a compiled model's optimizer too:
    # it sizes the weights file of an uncompiled copy.
    stem = run.path("export", name.replace("+", "_"))
    if _front.world(model) == _front.KERAS3:
        path = stem + ".weights.h5"
        copy = type(model).from_config(model.get_config())  # never compiled
        copy.set_weights(model.get_weights())
        copy.save_weights(path)
    else:
        path = stem + ".h5"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are saving your model as an HDF5")
            model.save(path, include_optimizer=False)
    row = _row(name, keras_accuracy(model, run.splits.test), _counts(model),
               _sizes(path), reference, model=model)
    row["sparsity"] = _front.sparsity_report(model).sparsity
    return row


def file_row(verified, reference):
    """The row of an exported artifact (`pipeline.Verified`)."""
    return _row(verified.name, verified.accuracy, _counts(verified.model),
                _sizes(verified.path), reference, verified.latency_ms_per_example,
                verified.model)


def markdown(rows):
    """The rows as a markdown table."""
    header = ("artifact", "accuracy", "Δ accuracy", "params", "MACs", "non-zero",
              "size", "gzipped", "gzip ratio", "latency/example")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        latency = r["latency_ms_per_example"]
        lines.append("| " + " | ".join([
            r["artifact"], f"{r['accuracy']:.4f}", f"{r['accuracy_delta']:+.4f}",
            f"{r['params']:,}", "-" if r.get("macs") is None else f"{r['macs']:,}",
            f"{r['nonzero_params']:,}", f"{r['size_bytes']:,} B",
            f"{r['gzip_bytes']:,} B", f"{r['gzip_ratio']:.2f}x",
            "-" if latency is None else f"{latency * 1000:.1f} µs"]) + " |")
    return "\n".join(lines)


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
            files[name, kind] = _front.export_tflite(
                model, os.path.join(directory, f"{name}_{kind}.tflite"),
                quantization=quantization, overwrite=True,
                representative_data=representative_data if quantization else None
            ).path
    times = _speed.latencies(list(files.values()), rounds=rounds, invokes=invokes)
    return [{"model": name, "params": _counts(model)[0], "macs": macs(model),
             **{f"{kind}_ms": {str(t): times[files[name, kind]][t]
                               for t in _speed.THREADS}
                for kind in ("float32", "int8")}}
            for name, model in models.items()]


def speed_markdown(rows):
    """The speed rows as a table, each model's speed-up over the first."""
    keys = [(kind, str(t)) for kind in ("float32", "int8") for t in _speed.THREADS]
    header = ["model", "params", "MACs"] + [
        f"{kind} {t} thread{'s' * (t != '1')}" for kind, t in keys]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    base = rows[0]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['macs']:,}"]
        for kind, t in keys:
            ms = r[f"{kind}_ms"][t]
            cells.append(f"{ms:.3f} ms" + ("" if r is base else
                                           f" ({base[f'{kind}_ms'][t] / ms:.2f}x)"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions(tfopt_version):
    # The Kerases this run loaded (a Keras 3 run loads neither tf_keras nor TFMOT).
    found = {"tensorflow": tf.__version__}
    for name, module in (("keras", "keras"), ("tf_keras", "tf_keras"),
                         ("tfmot", "tensorflow_model_optimization")):
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
        "task": None if worker.task_type is None else
        f"{worker.task_type} {worker.task_id}",
        "versions": _versions(__version__),
        "stage_seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "command": shlex.join(run.command),
    }


def _where(env):
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in env["stage_seconds"].items())
    task = f", report by {env['task']}" if env["task"] else ""
    return "\n".join([
        "## Where it ran", "",
        f"- strategy: {env['strategy']}, {env['replicas']} replica(s) on "
        f"{env['workers']} worker(s){task}",
        f"- versions: {versions}",
        f"- wall time: {stages}",
        f"- command: `{env['command']}`", ""])


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for index, r in enumerate(rows):
        axes.scatter(r["gzip_bytes"], 100 * r["accuracy"])
        # Alternate label sides: neighbouring artifacts often share accuracy.
        axes.annotate(r["artifact"], (r["gzip_bytes"], 100 * r["accuracy"]),
                      textcoords="offset points", fontsize=8,
                      xytext=(5, 6 if index % 2 else -12))
    axes.set_xscale("log")
    axes.set_xlabel("gzipped size (bytes, log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Accuracy against size")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def write(run, rows):
    """Writes report.json (rows, settings, environment), report.md and
    report.png; returns report.md's text."""
    env = environment(run)
    with open(run.path("report.json"), "w") as file:
        json.dump({"settings": run.config.settings(), "dataset": run.info._asdict(),
                   "environment": env, "rows": rows, "speed": run.speed}, file,
                  indent=2)
    text = render(f"{run.config.model} on {run.info.name}", rows, env, run.speed)
    with open(run.path("report.md"), "w") as file:
        file.write(text)
    _plot(rows, run.path("report.png"))
    return text


def render(title, rows, env, speed_rows=None):
    """The markdown report: a pure function of its values."""
    timed = "" if not speed_rows else (
        "## Speed (TFLite, batch 1, median ms per example; speed-up over the "
        f"dense model)\n\n{speed_markdown(speed_rows)}\n\n")
    return f"# tfopt report: {title}\n\n{markdown(rows)}\n\n{timed}{_where(env)}"
