"""Benchmarks: tfopt against raw TFMOT and plain Keras, in one run.

Timings interleave the variants (A B A B ...) after a warm-up epoch each and
report medians as ratios: absolute times on a shared machine are noise.

    python scripts/benchmark.py --output=benchmark.json        # full run
    python scripts/benchmark.py --quick --suite=overhead       # smoke run
"""

import json
import logging as std_logging
import os
import statistics
import tempfile
import time

from absl import app, flags, logging

try:  # imported as a package: scripts, or tfopt_scripts once installed
    from . import (
        benchmark_inputs,
        benchmark_keras3,
        benchmark_pruning,
        benchmark_recipe,
    )
except ImportError:  # run as a file: its directory is on sys.path
    import benchmark_inputs
    import benchmark_keras3
    import benchmark_pruning
    import benchmark_recipe

# `recovery` and `recipe` run the main job, which switches on deterministic
# ops for the rest of the process: they go last.
SUITES = (
    "overhead",
    "compression",
    "distillation",
    "parity",
    "inference",
    "speed",
    "keras3",
    "inputs",
    "recovery",
    "recipe",
)
if "suite" not in flags.FLAGS:
    flags.DEFINE_list("suite", list(SUITES), f"Parts to run: {', '.join(SUITES)}.")
    flags.register_validator(
        "suite",
        lambda v: set(v) <= set(SUITES),
        message=f"--suite takes a comma list of {SUITES}.",
    )
    flags.DEFINE_bool("quick", False, "A short smoke run (the test suite's).")
    flags.DEFINE_string("output", "benchmark.json", "Where the JSON goes.")
FLAGS = flags.FLAGS

# Published anchors (TFMOT guides; Hinton et al. 2015).
ANCHORS = {
    "tfmot_pruning_gzip_ratio": 78_156 / 25_805,
    "tfmot_pruning_plus_quantization_gzip_ratio": 78_156 / 8_113,
    "tfmot_pruned_accuracy_drop": 0.9768 - 0.9683,
    "tfmot_qat_tflite_size_ratio": 3.4,
    "third_party_qat_training_overhead": 1.2,
    "hinton_small_net_errors": {"scratch": 146, "distilled": 74},
}
TARGETS = {
    # Training steps per second fed from files over in-memory tensors.
    "input_pipeline_vs_memory": 0.9,
    "tfopt_prune_vs_tfmot": 1.05,
    "prune_vs_float": 1.15,
    "tfopt_qat_vs_tfmot": 1.05,
    "distill_cached_vs_student": 1.15,
    "pruning_gzip_ratio": 3.0,
    "pruning_plus_int8_gzip_ratio": 10.0,
    "pruned_accuracy_drop": 0.01,
    "int8_vs_qat_accuracy": 0.005,
    "parity_max_abs_diff": 1e-5,
    # Channel pruning's batch-1 speed-up and accuracy recovery.
    "mobilenet_v2_float32_speedup": 1.5,
    "mobilenet_v2_int8_speedup": 1.3,
    "resnet50_float32_speedup": 1.3,
    "recovered_accuracy_drop": 0.01,
    # Keras 3 models through tfopt's own path.
    "keras3_prune_vs_float": 1.15,
    "keras3_int8_vs_float_accuracy": 0.005,
    "keras3_qat_vs_float": 1.3,
    "keras3_int8_vs_qat_accuracy": 0.005,
    "keras3_pqat_sparsity_lost": 0.01,
    # Accuracy at an equal training budget (`recipe`): int8 accuracy minus a
    # dense model's trained for the same epochs, mean of 3 seeds (at least).
    "recipe_int8_vs_dense_control": -0.01,
    "recipe_gzip_ratio": 10.0,
    "recipe_mac_cut": 1.5,
    "recipe_readme_minus_tutorial": 0.01,
    "recipe_wall_time_vs_tutorial": 1.2,
}
# (speed model, TFLite kind, target) checked at 1 and 2 threads.
SPEED_TARGETS = (
    ("mobilenet_v2_96", "float32", "mobilenet_v2_float32_speedup"),
    ("mobilenet_v2_96", "int8", "mobilenet_v2_int8_speedup"),
    ("resnet50_64", "float32", "resnet50_float32_speedup"),
)


def median_ratio(numerator, denominator):
    """median(numerator) / median(denominator) of two lists of timings."""
    return statistics.median(numerator) / statistics.median(denominator)


def gzip_size(path):
    """Bytes of `path` after gzip -9 (summed over the files of a directory)."""
    from tfopt.core import tflite

    return tflite.disk_sizes(path)[1]


def interleaved(variants, rounds):
    """Times one `fit` epoch per variant, alternating; {name: [seconds]}."""
    times = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up: tracing and first-epoch costs
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _lib():
    import tfopt

    return tfopt, tfopt.keras


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compiled(keras, model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=_loss(keras),
        metrics=["accuracy"],
    )
    return model


def _accuracy(model, data):
    return float(model.evaluate(data, verbose=0, return_dict=True)["accuracy"])


def overhead(quick):
    """Time per epoch of each variant, as ratios."""
    import tensorflow_model_optimization as tfmot

    tfopt, keras = _lib()
    splits, train = _data(tfopt, quick)
    steps = sum(1 for _ in train)
    end, frequency = 10 * steps, max(1, steps // 4)
    out = {}
    for name in ("tfmot_mnist",) if quick else ("tfmot_mnist", "student_cnn"):

        def build(model=name):
            keras.utils.set_random_seed(0)
            return tfopt.models.build(
                model, splits.info.input_shape, 10, keras_version=2
            )

        def fit(model, callbacks=()):
            return lambda: model.fit(
                train, epochs=1, verbose=0, callbacks=list(callbacks)
            )

        raw_pruned = tfmot.sparsity.keras.prune_low_magnitude(
            build(),
            pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(
                0.0, 0.8, 0, end, frequency=frequency
            ),
        )
        teacher = tfopt.models.build(
            "teacher_cnn", splits.info.input_shape, 10, keras_version=2
        )
        variants = {
            "float": fit(_compiled(keras, build())),
            "tfopt_prune": fit(
                _compiled(
                    keras,
                    tfopt.prune(build(), 0.8, begin=0, end=end, frequency=frequency),
                ),
                [tfopt.PruningCallback()],
            ),
            "tfmot_prune": fit(
                _compiled(keras, raw_pruned), [tfmot.sparsity.keras.UpdatePruningStep()]
            ),
            "tfopt_qat": fit(_compiled(keras, tfopt.quantize(build()))),
            "tfmot_qat": fit(
                _compiled(keras, tfmot.quantization.keras.quantize_model(build()))
            ),
            "distill": fit(
                _compiled(keras, tfopt.Distiller(student=build(), teacher=teacher))
            ),
            "distill_cached": fit(
                _compiled(
                    keras,
                    tfopt.Distiller(
                        student=build(), teacher=teacher, cache_teacher=True
                    ),
                )
            ),
        }
        with tfopt.get_strategy("mirrored").scope():
            mirrored = _compiled(keras, build())
        variants["mirrored"] = fit(mirrored)
        times = interleaved(variants, 1 if quick else 5)
        out[name] = {
            "steps_per_epoch": steps,
            "median_epoch_seconds": {k: statistics.median(v) for k, v in times.items()},
            "tfopt_prune_vs_tfmot": median_ratio(
                times["tfopt_prune"], times["tfmot_prune"]
            ),
            "prune_vs_float": median_ratio(times["tfopt_prune"], times["float"]),
            "tfopt_qat_vs_tfmot": median_ratio(times["tfopt_qat"], times["tfmot_qat"]),
            "qat_vs_float": median_ratio(times["tfopt_qat"], times["float"]),
            "distill_vs_student": median_ratio(times["distill"], times["float"]),
            "distill_cached_vs_student": median_ratio(
                times["distill_cached"], times["float"]
            ),
            "mirrored_vs_default": median_ratio(times["mirrored"], times["float"]),
        }
    return out


def keras3(quick):
    """Keras 3 pruning's and QAT's step-time overhead, int8 against float,
    and channel pruning's speed-up of Keras 3 models (MobileNetV2)."""
    import keras

    tfopt, _ = _lib()
    splits, train = _data(tfopt, quick)
    return {
        "overhead": benchmark_keras3.overhead(
            tfopt, keras, splits, train, 1 if quick else 11, interleaved, median_ratio
        ),
        "int8": benchmark_keras3.int8_accuracy(
            tfopt, keras, splits, train, 1 if quick else 5
        ),
        # Quick: one small model (the tf_keras `speed` suite times two).
        "speed": benchmark_pruning.speed(
            quick,
            keras_version=3,
            names=("student_cnn",) if quick else ("mobilenet_v2_96",),
        ),
    }


def _h5_gzip(keras_model, directory, name):
    path = os.path.join(directory, f"{name}.h5")
    keras_model.save(path, include_optimizer=False)
    return gzip_size(path)


def _tflite(tfopt, model, directory, name, **kwargs):
    path = tfopt.export_tflite(
        model, os.path.join(directory, f"{name}.tflite"), **kwargs
    ).path
    return path, gzip_size(path)


def _data(tfopt, quick):
    splits = tfopt.data.load("mnist5k", batch_size=64)
    train = splits.train.take(6) if quick else splits.train
    return splits, train


def compression(quick):
    """TFMOT's "Pruning in Keras" and QAT guides, redone with tfopt."""
    tfopt, keras = _lib()
    splits, train = _data(tfopt, quick)
    epochs, tune = (1, 1) if quick else (4, 2)
    work = tempfile.mkdtemp()
    keras.utils.set_random_seed(0)
    baseline = _compiled(
        keras, tfopt.models.build("tfmot_mnist", (28, 28, 1), 10, keras_version=2)
    )
    baseline.fit(train, epochs=epochs, verbose=0)
    base = {
        "accuracy": _accuracy(baseline, splits.test),
        "h5_gzip": _h5_gzip(baseline, work, "baseline"),
    }
    float_path, base["tflite_gzip"] = _tflite(tfopt, baseline, work, "baseline")
    base["tflite_bytes"] = os.path.getsize(float_path)
    rows = {"baseline": base}
    for label, kwargs in (
        ("pruned_80", {"target_sparsity": 0.8}),
        ("pruned_90", {"target_sparsity": 0.9}),
        ("pruned_2_4", {"target_sparsity": 0.5, "m_by_n": (2, 4)}),
    ):
        target = kwargs.pop("target_sparsity")
        pruned = _compiled(keras, tfopt.prune(baseline, target, end=0.75, **kwargs))
        pruned.fit(train, epochs=tune, verbose=0, callbacks=[tfopt.PruningCallback()])
        stripped = tfopt.strip(pruned)
        row = {
            "accuracy": _accuracy(_compiled(keras, stripped), splits.test),
            "sparsity": tfopt.sparsity_report(stripped).sparsity,
            "h5_gzip": _h5_gzip(stripped, work, label),
        }
        _, row["tflite_gzip"] = _tflite(tfopt, stripped, work, label)
        _, row["tflite_dynamic_gzip"] = _tflite(
            tfopt, stripped, work, label + "_dyn", quantization="dynamic"
        )
        row["gzip_ratio"] = base["h5_gzip"] / row["h5_gzip"]
        row["gzip_ratio_with_quantization"] = (
            base["h5_gzip"] / row["tflite_dynamic_gzip"]
        )
        row["accuracy_drop"] = base["accuracy"] - row["accuracy"]
        rows[label] = row
    qat = _compiled(keras, tfopt.quantize(baseline), 1e-4)
    qat.fit(train, epochs=1, verbose=0)
    int8_path, int8_gzip = _tflite(tfopt, qat, work, "qat_int8", quantization="int8")
    rows["qat"] = {
        "keras_accuracy": _accuracy(qat, splits.test),
        "int8_accuracy": tfopt.evaluate_tflite(int8_path, splits.test).accuracy,
        "int8_bytes": os.path.getsize(int8_path),
        "int8_gzip": int8_gzip,
        "size_ratio_vs_float_tflite": base["tflite_bytes"] / os.path.getsize(int8_path),
    }
    rows["qat"]["int8_vs_qat_accuracy"] = abs(
        rows["qat"]["int8_accuracy"] - rows["qat"]["keras_accuracy"]
    )
    return rows


def distillation(quick):
    """teacher_cnn -> student_cnn on a 10% split of mnist5k."""
    import tensorflow as tf

    tfopt, keras = _lib()
    splits, train = _data(tfopt, quick)
    work = tempfile.mkdtemp()
    teacher_epochs, epochs = (1, 1) if quick else (2, 15)
    # 10% of the training split; its size must be known for pruning fractions.
    few = (
        splits.train.unbatch()
        .take(360)
        .batch(32)
        .cache()
        .apply(tf.data.experimental.assert_cardinality(12))
    )
    keras.utils.set_random_seed(0)
    teacher = _compiled(
        keras, tfopt.models.build("teacher_cnn", (28, 28, 1), 10, keras_version=2)
    )
    teacher.fit(train, epochs=teacher_epochs, verbose=0)

    def student(seed=1):
        keras.utils.set_random_seed(seed)
        return tfopt.models.build("student_cnn", (28, 28, 1), 10, keras_version=2)

    scratch = _compiled(keras, student(), 3e-3)
    scratch.fit(few, epochs=epochs, verbose=0)
    distilled = _compiled(
        keras, tfopt.Distiller(student=student(), teacher=teacher), 3e-3
    )
    distilled.fit(few, epochs=epochs, verbose=0)
    pruned = _compiled(
        keras,
        tfopt.Distiller(student=tfopt.prune(student(), 0.8), teacher=teacher),
        3e-3,
    )
    pruned.fit(few, epochs=epochs, verbose=0, callbacks=[tfopt.PruningCallback()])
    small = tfopt.strip(pruned.student)
    int8_path, int8_gzip = _tflite(
        tfopt, small, work, "student_int8", quantization="int8", representative_data=few
    )
    rows = {}
    for label, model in (
        ("teacher", teacher),
        ("scratch", scratch),
        ("distilled", distilled.student),
        ("distilled_pruned", small),
    ):
        rows[label] = {
            "accuracy": _accuracy(_compiled(keras, model), splits.test),
            "params": model.count_params(),
            "h5_gzip": _h5_gzip(model, work, label),
        }
    rows["distilled_pruned_int8"] = {
        "accuracy": tfopt.evaluate_tflite(int8_path, splits.test).accuracy,
        "tflite_gzip": int8_gzip,
    }
    return rows


def _parity_run(kind, strategy, steps):
    import numpy as np
    import tensorflow as tf

    tfopt, keras = _lib()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32 * steps, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32 * steps)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tfopt.models.build("student_cnn", (8, 8, 1), 10, keras_version=2)
        callbacks = []
        if kind == "prune":
            model = tfopt.prune(model, 0.5, end=1.0)
            callbacks = [tfopt.PruningCallback()]
        elif kind == "qat":
            model = tfopt.quantize(model)
        elif kind == "distill":
            teacher = tfopt.models.build("tfmot_mnist", (8, 8, 1), 10, keras_version=2)
            model = tfopt.Distiller(student=model, teacher=teacher)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=_loss(keras))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options)
    model.fit(data, epochs=1, verbose=0, callbacks=callbacks)
    return [w.numpy() for w in model.weights]


def parity(quick):
    """Max |weight difference| between default and 2-replica mirrored."""
    import numpy as np

    tfopt, _ = _lib()
    steps = 2 if quick else 8
    out = {}
    for kind in ("prune", "qat", "distill"):
        single = _parity_run(kind, tfopt.get_strategy("default"), steps)
        double = _parity_run(kind, tfopt.get_strategy("mirrored"), steps)
        out[kind] = max(
            float(np.abs(a - b).max()) for a, b in zip(single, double, strict=True)
        )
    return out


def _latency(run, batches):
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return 1e6 * (time.perf_counter() - start) / sum(len(b) for b in batches)


def inference(quick):
    """Microseconds per example of Keras, float TFLite and int8 TFLite."""
    import numpy as np

    tfopt, keras = _lib()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    splits, _ = _data(tfopt, quick)
    keras.utils.set_random_seed(0)
    model = _compiled(
        keras, tfopt.models.build("tfmot_mnist", (28, 28, 1), 10, keras_version=2)
    )
    model.fit(splits.train.take(10), verbose=0)
    qat = _compiled(keras, tfopt.quantize(model), 1e-4)
    qat.fit(splits.train.take(10), verbose=0)
    work = tempfile.mkdtemp()
    files = {
        "tflite_float32": _tflite(tfopt, model, work, "f32")[0],
        "tflite_int8": _tflite(tfopt, qat, work, "i8", quantization="int8")[0],
    }
    x = np.concatenate([b.numpy() for b, _ in splits.test])[: 256 if quick else 1000]
    out = {}
    for batch_size in (1, 64):
        batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]
        row = {"keras": _latency(lambda b: model.predict_on_batch(b), batches)}
        for name, path in files.items():
            interpreter = Interpreter(model_path=path, num_threads=2)
            source = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(source["index"], (batch_size, 28, 28, 1))
            interpreter.allocate_tensors()

            def run(batch, interpreter=interpreter, index=source["index"]):
                interpreter.set_tensor(index, batch)
                interpreter.invoke()

            run(batches[0])
            row[name] = _latency(run, batches)
        out[f"batch_{batch_size}"] = row
    return out


def _checks(results):
    """(metric, measured, target, met) for every target that was measured."""
    rows = []

    def add(metric, value, target, higher_is_better=False):
        met = value >= target if higher_is_better else value <= target
        rows.append((metric, value, target, met))

    for model, r in results.get("overhead", {}).items():
        for key in (
            "tfopt_prune_vs_tfmot",
            "prune_vs_float",
            "tfopt_qat_vs_tfmot",
            "distill_cached_vs_student",
        ):
            add(f"overhead/{model}/{key}", r[key], TARGETS[key])
    if "compression" in results:
        c = results["compression"]
        add(
            "compression/pruning_gzip_ratio",
            c["pruned_80"]["gzip_ratio"],
            TARGETS["pruning_gzip_ratio"],
            True,
        )
        add(
            "compression/pruning_plus_int8_gzip_ratio",
            c["pruned_80"]["gzip_ratio_with_quantization"],
            TARGETS["pruning_plus_int8_gzip_ratio"],
            True,
        )
        add(
            "compression/pruned_80_accuracy_drop",
            c["pruned_80"]["accuracy_drop"],
            TARGETS["pruned_accuracy_drop"],
        )
        add(
            "compression/int8_vs_qat_accuracy",
            c["qat"]["int8_vs_qat_accuracy"],
            TARGETS["int8_vs_qat_accuracy"],
        )
    for kind, value in results.get("parity", {}).items():
        add(f"parity/{kind}_max_abs_diff", value, TARGETS["parity_max_abs_diff"])
    k3 = results.get("keras3", {})
    for prefix, speed in (
        ("", results.get("speed", {})),
        ("keras3/", k3.get("speed", {})),
    ):
        for model, kind, target in SPEED_TARGETS:
            for variant, row in speed.get(model, {}).items():
                if not variant.startswith("channels"):
                    continue
                for threads, value in row["speedup"][kind].items():
                    add(
                        f"{prefix}speed/{model}/{variant}_{kind}_{threads}_thread_speedup",
                        value,
                        TARGETS[target],
                        True,
                    )
    for model, r in k3.get("overhead", {}).items():
        add(
            f"keras3/{model}/prune_vs_float",
            r["prune_vs_float"],
            TARGETS["keras3_prune_vs_float"],
        )
        add(
            f"keras3/{model}/qat_vs_float",
            r["qat_vs_float"],
            TARGETS["keras3_qat_vs_float"],
        )
    if "int8" in k3:
        add(
            "keras3/student_cnn/int8_vs_float_accuracy",
            k3["int8"]["int8_vs_float_accuracy"],
            TARGETS["keras3_int8_vs_float_accuracy"],
        )
        add(
            "keras3/student_cnn/qat_int8_vs_qat_accuracy",
            k3["int8"]["qat_int8_vs_qat_accuracy"],
            TARGETS["keras3_int8_vs_qat_accuracy"],
        )
        add(
            "keras3/student_cnn/pqat_sparsity_lost",
            k3["int8"]["pqat_sparsity_lost"],
            TARGETS["keras3_pqat_sparsity_lost"],
        )
    for key in ("images_vs_memory", "tfrecord_vs_memory"):
        if key in results.get("inputs", {}):
            add(
                f"inputs/{key}",
                results["inputs"][key],
                TARGETS["input_pipeline_vs_memory"],
                True,
            )
    recovered = results.get("recovery", {})
    for model, row in recovered.get("channels_1.5x_macs", {}).items():
        add(
            f"recovery/{model}/channels_1.5x_macs_drop",
            row["with_recovery"]["drop"],
            TARGETS["recovered_accuracy_drop"],
        )
    if "unstructured_80_int8" in recovered:
        add(
            "recovery/student_cnn/unstructured_80_int8_mean_drop",
            recovered["unstructured_80_int8"]["with_recovery"]["mean_drop"],
            TARGETS["recovered_accuracy_drop"],
        )
    benchmark_recipe.checks(results.get("recipe", {}), add, TARGETS)
    return rows


def markdown(results):
    lines = ["| metric | measured | target | met |", "|---|---:|---:|---|"]
    for metric, value, target, met in _checks(results):
        verdict = "yes" if met else "NO"
        lines.append(f"| {metric} | {value:.4g} | {target:g} | {verdict} |")
    return "\n".join(lines)


def collect(suites, quick, output):
    """Runs `suites`, writes `output` (JSON); returns the results."""
    import tfopt

    # The mirrored variants need two logical CPUs, fixed before the first op.
    tfopt.configure_devices(logical_cpus=2)
    results = {"quick": quick, "anchors": ANCHORS, "targets": TARGETS}
    runs = {
        "overhead": overhead,
        "compression": compression,
        "distillation": distillation,
        "parity": parity,
        "inference": inference,
        "speed": benchmark_pruning.speed,
        "keras3": keras3,
        "inputs": benchmark_inputs.inputs,
        "recovery": benchmark_pruning.recovery,
        "recipe": benchmark_recipe.recipe,
    }
    for name in suites:
        start = time.perf_counter()
        results[name] = runs[name](quick)
        logging.info("suite %s: %.1f s", name, time.perf_counter() - start)
    results["checks"] = [list(row) for row in _checks(results)]
    with open(output, "w") as file:
        json.dump(results, file, indent=2)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    print(markdown(collect(FLAGS.suite, FLAGS.quick, FLAGS.output)))


def run():
    """Console entry point `tfopt-benchmark`."""
    app.run(main)


if __name__ == "__main__":
    run()
