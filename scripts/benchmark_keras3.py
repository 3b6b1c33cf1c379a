"""The benchmark's Keras 3 suite, run by `scripts/benchmark.py`.

`keras3`: Keras 3 models (the `keras` package) through tfopt's own path.
Time per epoch of plain Keras 3 training against tfopt's Keras 3 pruning
(`PruningMask` constraints + `PruningCallback`), QAT (`tfopt.quantize`) and
distillation, on mnist5k, interleaved after a warm-up, medians as ratios;
the accuracy of a pruned Keras 3 student's int8 TFLite file (calibrated)
against its float model on the 1,000 test images; and the same student
through sparsity-preserving QAT: the int8 file against the QAT model, and
the zeros kept.
"""

import os
import statistics
import tempfile

MODELS = ("tfmot_mnist", "student_cnn")


def _compiled(keras, model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _accuracy(model, data):
    return float(model.evaluate(data, verbose=0, return_dict=True)["accuracy"])


def overhead(tfopt, keras, splits, train, rounds, interleaved, median_ratio):
    """Seconds per epoch of each Keras 3 variant, and the ratios."""
    steps = sum(1 for _ in train)
    out = {}
    teacher = tfopt.models.build(
        "teacher_cnn", splits.info.input_shape, 10, keras_version=3
    )
    for name in MODELS:

        def build(model=name):
            keras.utils.set_random_seed(0)
            return tfopt.models.build(
                model, splits.info.input_shape, 10, keras_version=3
            )

        def fit(model, callbacks=()):
            return lambda: model.fit(
                train, epochs=1, verbose=0, callbacks=list(callbacks)
            )

        # begin/end in steps, far past the run: the masks are applied (and
        # updated every quarter epoch) in every timed epoch.
        end, frequency = 1000 * steps, max(1, steps // 4)
        variants = {
            "float": fit(_compiled(keras, build())),
            "prune": fit(
                _compiled(
                    keras,
                    tfopt.prune(build(), 0.8, begin=0, end=end, frequency=frequency),
                ),
                [tfopt.PruningCallback()],
            ),
            "qat": fit(_compiled(keras, tfopt.quantize(build()))),
            "distill_cached": fit(
                _compiled(
                    keras,
                    tfopt.Distiller(
                        student=build(), teacher=teacher, cache_teacher=True
                    ),
                )
            ),
        }
        times = interleaved(variants, rounds)
        out[name] = {
            "steps_per_epoch": steps,
            "median_epoch_seconds": {k: statistics.median(v) for k, v in times.items()},
            "prune_vs_float": median_ratio(times["prune"], times["float"]),
            "qat_vs_float": median_ratio(times["qat"], times["float"]),
            "distill_cached_vs_student": median_ratio(
                times["distill_cached"], times["float"]
            ),
        }
    return out


def int8_accuracy(tfopt, keras, splits, train, epochs):
    """A Keras 3 student_cnn pruned to 80% (then stripped): float accuracy,
    its calibrated int8 TFLite file's, and the difference."""
    keras.utils.set_random_seed(0)
    model = _compiled(
        keras,
        tfopt.prune(
            tfopt.models.build(
                "student_cnn", splits.info.input_shape, 10, keras_version=3
            ),
            0.8,
        ),
    )
    model.fit(train, epochs=epochs, verbose=0, callbacks=[tfopt.PruningCallback()])
    stripped = _compiled(keras, tfopt.strip(model))
    with tempfile.TemporaryDirectory() as directory:
        path = tfopt.export_tflite(
            stripped,
            os.path.join(directory, "m.tflite"),
            quantization="int8",
            representative_data=splits.train,
        ).path
        int8 = tfopt.evaluate_tflite(path, splits.test).accuracy
    accuracy = _accuracy(stripped, splits.test)
    sparsity = tfopt.sparsity_report(stripped).sparsity
    qat = _compiled(keras, tfopt.quantize(stripped, preserve_sparsity=True))
    qat.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    qat.fit(train, epochs=1, verbose=0)
    kept = {
        layer.name: float((layer.folded()[0].numpy() == 0).mean())
        for layer in qat.layers
        if type(layer).__name__ == "QuantizedLayer"
    }
    before = {
        layer.name: float((layer.kernel.numpy() == 0).mean())
        for layer in stripped.layers
        if layer.name in kept
    }
    with tempfile.TemporaryDirectory() as directory:
        path = tfopt.export_tflite(
            qat, os.path.join(directory, "qat.tflite"), quantization="int8"
        ).path
        qat_int8 = tfopt.evaluate_tflite(path, splits.test).accuracy
    qat_accuracy = _accuracy(qat, splits.test)
    return {
        "epochs": epochs,
        "sparsity": sparsity,
        "float_accuracy": accuracy,
        "int8_accuracy": int8,
        "int8_vs_float_accuracy": abs(int8 - accuracy),
        "qat_accuracy": qat_accuracy,
        "qat_int8_accuracy": qat_int8,
        "qat_int8_vs_qat_accuracy": abs(qat_int8 - qat_accuracy),
        "pqat_sparsity_lost": max(before[n] - kept[n] for n in before),
    }
