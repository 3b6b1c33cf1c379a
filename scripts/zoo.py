"""The model zoo: keras.applications CNNs through prune, QAT and int8.

For each architecture (weights=None, 10 classes, random images): raw TFMOT's
`prune_low_magnitude` and `quantize_model`, then tfopt's prune (one step of
fit) and strip, `quantize(preserve_sparsity=True)`, one step of fit, an int8
TFLite export, and the file's QUANTIZE/DEQUANTIZE and float compute ops.

    python scripts/zoo.py --output=zoo.json                  # every family
    python scripts/zoo.py --models=MobileNetV2,Xception   # some
    python scripts/zoo.py --agreement --output=agreement.json
    python scripts/zoo.py --keras=3 --output=zoo_keras3.json  # Keras 3's models
    python scripts/zoo.py --timing --output=timing.json

`--agreement` instead trains `AGREEMENT`'s models briefly on mnist5k (as
RGB at the input size), fine-tunes them with QAT and compares the int8
file's test accuracy with the QAT Keras model's. `--keras=3` measures
`keras.applications` (Keras 3, tfopt's own pruning and QAT; no raw TFMOT
columns, which refuses Keras 3) instead of `tf_keras.applications`.
`--timing` times `tfopt.quantize` against raw `quantize_model` (interleaved,
medians) where raw TFMOT works, and DenseNet121's whole prune + QAT + int8
pipeline at 64x64.
"""

import json
import logging as std_logging
import os
import tempfile
import time
import warnings

from absl import app, flags, logging

# Architecture -> the input side used: the smallest each accepts, 32 where
# it can (the ops are the same at any size), 71/75 where the model needs it.
MODELS = {
    "MobileNet": 32,
    "MobileNetV2": 32,
    "MobileNetV3Small": 32,
    "MobileNetV3Large": 32,
    "ResNet50": 32,
    "ResNet50V2": 32,
    "ResNetRS50": 32,
    "VGG16": 32,
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "DenseNet121": 32,
    "NASNetMobile": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "RegNetX002": 32,
    "RegNetY002": 32,
    "ConvNeXtTiny": 32,
}
# Architecture -> (input side, constructor arguments, float epochs) for
# --agreement. EfficientNetB0 reaches only about 60% in 4 epochs at 32x32;
# its logits are then so close that int8 rounding flips 1-2% of the
# answers either way (measured +1.6, -1.8, +0.9, +0.7 points): 10 epochs.
AGREEMENT = {
    "MobileNetV2": (32, {"alpha": 0.35}, 4),
    "MobileNetV3Small": (32, {}, 4),
    "EfficientNetB0": (32, {}, 10),
    "ResNet50": (32, {}, 4),
    "InceptionV3": (75, {}, 4),
    "DenseNet121": (32, {}, 4),  # concatenation chains sharing one range
}
if "models" not in flags.FLAGS:
    flags.DEFINE_list("models", list(MODELS), "Architectures to measure.")
    flags.register_validator(
        "models",
        lambda v: set(v) <= set(MODELS),
        message=f"--models takes a comma list of {list(MODELS)}.",
    )
    flags.DEFINE_bool(
        "agreement",
        False,
        "Measure int8 vs QAT accuracy on briefly trained models instead.",
    )
    flags.DEFINE_integer(
        "agreement_epochs",
        None,
        "--agreement: float training epochs (default: each model's in AGREEMENT).",
    )
    flags.DEFINE_bool("timing", False, "Time quantize against raw TFMOT instead.")
if "keras" not in flags.FLAGS:  # train.py's (tfopt.job.flags), when imported
    flags.DEFINE_enum(
        "keras", "2", ["2", "3"], "The applications of tf_keras (2) or Keras 3."
    )
if "output" not in flags.FLAGS:  # benchmark.py's, when both are imported
    flags.DEFINE_string("output", "zoo.json", "Where the JSON goes.")
FLAGS = flags.FLAGS
_BATCH = 4


def _outcome(function):
    """(result, "ok" or the error's first line, seconds)."""
    start = time.perf_counter()
    try:
        result, outcome = function(), "ok"
    except Exception as error:  # noqa: BLE001 - a column of the table
        result = None
        outcome = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return result, outcome, time.perf_counter() - start


def api(version=2):
    """The Keras module of `version`: tf_keras as tfopt binds it, or Keras 3."""
    from tfopt import models
    from tfopt.core.kerases import Keras

    return models.keras_module(Keras.from_version(version))


def build(name, size, version=2, **kwargs):
    """`<Keras>.applications.<name>` with random weights and 10 classes."""
    applications = api(version).applications
    if not hasattr(applications, name):
        raise ValueError(f"Keras {version} has no applications.{name}")
    return getattr(applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, **kwargs
    )


def mnist_rgb(size, batch_size=64, limit=None):
    """mnist5k's train and test splits as `size`x`size` RGB images in
    [0, 255], as the applications' own preprocessing expects."""
    import tensorflow as tf

    import tfopt

    train, _, test, _ = tfopt.data.load(
        "mnist5k", batch_size=batch_size, validation_fraction=0
    )

    def rgb(x, y):
        return tf.tile(tf.image.resize(x, (size, size)) * 255.0, (1, 1, 1, 3)), y

    if limit is not None:
        train, test = train.take(limit), test.take(limit)
    return (train.map(rgb).cache().prefetch(2), test.map(rgb).cache().prefetch(2))


def agreement(name, size, epochs, *, limit=None, directory=None, version=2, **kwargs):
    """Test accuracy of `name` trained `epochs` on mnist5k, of its QAT copy
    after one epoch, and of the QAT copy's int8 TFLite file."""
    import tfopt

    keras = api(version)
    keras.backend.clear_session()
    train, test = mnist_rgb(size, limit=limit)
    model = build(name, size, version, **kwargs)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # The applications' 0.99-0.999 suit long training from scratch;
            # after a few hundred steps their moving statistics would still
            # be near their initial values and inference near chance.
            layer.momentum = 0.9
    row = {"model": name, "input": size, "keras": int(version), **kwargs}
    start = time.perf_counter()
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, verbose=0)
    row["float_accuracy"] = model.evaluate(test, verbose=0)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = tfopt.quantize(model)
    qat.compile(
        keras.optimizers.Adam(1e-4),
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    qat.fit(train, epochs=1, verbose=0)
    row["qat_accuracy"] = qat.evaluate(test, verbose=0)[1]
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = tfopt.export_tflite(
            qat, os.path.join(tmp, "m.tflite"), quantization="int8"
        ).path
        row["int8_accuracy"] = tfopt.evaluate_tflite(path, test).accuracy
        ops = tfopt.export.tflite_ops(path)
    row.update(
        float_ops=len(ops.float_ops),
        quantize_ops=ops.quantize,
        difference=row["int8_accuracy"] - row["qat_accuracy"],
        seconds=time.perf_counter() - start,
    )
    return row


def _step(model, x, y, callbacks=(), version=2):
    keras = api(version)
    model.compile(
        keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy()
    )
    model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=list(callbacks))


def measure(name, size, *, raw=True, directory=None, version=2):
    """One row of the zoo table for `<Keras>.applications.<name>` (raw
    TFMOT columns with `raw`, for tf_keras)."""
    import numpy as np

    import tfopt

    api(version).backend.clear_session()
    row = {"model": name, "input": size, "keras": int(version)}
    model, row["build"], _ = _outcome(lambda: build(name, size, version))
    if model is None:
        return row
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2 * _BATCH, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, 2 * _BATCH)
    row["params"] = int(model.count_params())
    if raw and int(version) == 2:
        import tensorflow_model_optimization as tfmot

        _, row["raw_prune"], _ = _outcome(
            lambda: tfmot.sparsity.keras.prune_low_magnitude(model)
        )
        _, row["raw_qat"], row["raw_quantize_s"] = _outcome(
            lambda: tfmot.quantization.keras.quantize_model(model)
        )
    start = time.perf_counter()
    pruned, row["prune"], _ = _outcome(lambda: tfopt.prune(model, 0.5, end=1.0))
    if pruned is not None:
        _, row["prune"], _ = _outcome(
            lambda: _step(pruned, x, y, [tfopt.PruningCallback()], version)
        )
        stripped, row["strip"], _ = _outcome(lambda: tfopt.strip(pruned))
    source = stripped if pruned is not None and stripped is not None else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat, row["quantize"], row["quantize_s"] = _outcome(
            lambda: tfopt.quantize(source, preserve_sparsity=source is not model)
        )
    if qat is None:
        return row
    row["float_layers"] = list(qat.tfopt_skipped_layers)
    _, row["qat_fit"], _ = _outcome(lambda: _step(qat, x, y, version=version))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, f"{name}.tflite")
        _, row["export"], _ = _outcome(
            lambda: tfopt.export_tflite(qat, path, quantization="int8")
        )
        if row["export"] == "ok":
            ops = tfopt.export.tflite_ops(path)
            row.update(
                quantize_ops=ops.quantize,
                dequantize_ops=ops.dequantize,
                requantize_ops=ops.requantize,
                float_ops=list(ops.float_ops),
                ops=sum(ops.counts.values()),
            )
    row["pipeline_s"] = time.perf_counter() - start
    return row


# Where raw quantize_model works: (input side) for --timing.
TIMING = {"MobileNetV2": 64, "ResNet50": 64, "InceptionV3": 75, "MobileNet": 64}


def timing(rounds=3):
    """Median wall times of raw `quantize_model` and `tfopt.quantize`
    (alternated, `rounds` each) per `TIMING` model, and DenseNet121's
    pipeline at 64x64."""
    import statistics

    import tensorflow_model_optimization as tfmot

    import tfopt
    from tfopt import keras

    rows = []
    for name, size in TIMING.items():
        keras.backend.clear_session()
        model = build(name, size)
        times = {"raw": [], "tfopt": []}
        for _ in range(rounds):
            for kind, function in (
                ("raw", tfmot.quantization.keras.quantize_model),
                ("tfopt", tfopt.quantize),
            ):
                start = time.perf_counter()
                function(model)
                times[kind].append(time.perf_counter() - start)
        raw, ours = statistics.median(times["raw"]), statistics.median(times["tfopt"])
        rows.append(
            {
                "model": name,
                "input": size,
                "raw_s": raw,
                "tfopt_s": ours,
                "ratio": ours / raw,
            }
        )
        logging.info("  %s", rows[-1])
    dense = measure("DenseNet121", 64, raw=False)
    rows.append(
        {
            "model": "DenseNet121",
            "input": 64,
            "pipeline_s": dense.get("pipeline_s"),
            "integer": integer(dense),
        }
    )
    return rows


def integer(row):
    """Whether the row's int8 file is integer end to end: no float ops, one
    QUANTIZE from float (the input's) and one DEQUANTIZE (the output's)."""
    return (
        row.get("export") == "ok"
        and not row["float_ops"]
        and row["quantize_ops"] - row.get("requantize_ops", 0) == 1
        and row["dequantize_ops"] == 1
    )


def markdown(rows):
    def short(outcome):
        return "ok" if outcome == "ok" else "fails" if outcome else "–"

    lines = [
        "| model | input | raw TFMOT prune | raw TFMOT QAT | tfopt prune + strip "
        "| tfopt QAT + int8 | layers left float | QUANTIZE / DEQUANTIZE "
        "| int8 rescales | float ops / all |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        tfopt_ok = row.get("strip") == "ok" and row.get("prune") == "ok"
        exported = row.get("export") == "ok"
        lines.append(
            f"| {row['model']} | {row['input']} | {short(row.get('raw_prune'))} "
            f"| {short(row.get('raw_qat'))} | {'ok' if tfopt_ok else 'fails'} "
            f"| {'ok' if exported else 'fails'} "
            f"| {len(row.get('float_layers', []))} "
            f"| {row.get('quantize_ops', '–')} / {row.get('dequantize_ops', '–')} "
            f"| {row.get('requantize_ops', '–')} "
            f"| {len(row.get('float_ops', [])) if exported else '–'} / "
            f"{row.get('ops', '–')} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    if FLAGS.timing:
        rows = timing()
        with open(FLAGS.output, "w") as file:
            json.dump(rows, file, indent=2)
        print(json.dumps(rows, indent=2))
        return
    if FLAGS.agreement:
        rows = []
        names = FLAGS.models if FLAGS["models"].present else list(AGREEMENT)
        for name in names:
            if name not in AGREEMENT:
                raise app.UsageError(
                    f"--agreement takes --models from {list(AGREEMENT)}"
                )
            size, kwargs, epochs = AGREEMENT[name]
            logging.info("agreement: %s", name)
            rows.append(
                agreement(
                    name,
                    size,
                    FLAGS.agreement_epochs or epochs,
                    version=FLAGS.keras,
                    **kwargs,
                )
            )
            logging.info("  %s", rows[-1])
            with open(FLAGS.output, "w") as file:
                json.dump(rows, file, indent=2)
        return
    rows = []
    for name in FLAGS.models:
        logging.info("zoo: %s", name)
        rows.append(measure(name, MODELS[name], version=FLAGS.keras))
        row = rows[-1]
        logging.info(
            "  %s: quantize %.1f s (raw %.1f s), pipeline %.1f s, "
            "integer end to end: %s",
            name,
            row.get("quantize_s", 0),
            row.get("raw_quantize_s", 0),
            row.get("pipeline_s", 0),
            integer(row),
        )
        with open(FLAGS.output, "w") as file:
            json.dump(rows, file, indent=2)
    print(markdown(rows))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
