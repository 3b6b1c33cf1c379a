"""The benchmark's pruning suites, run by `scripts/benchmark.py`.

`speed`: batch-1 TFLite latency of a dense model, the same model with
channels pruned to a MAC cut and shrunk (tfopt; kept counts multiples of 8,
the default, and for the applications also of 32), and with 80% of its
weights pruned by magnitude (TFMOT's wrapper, through `tfopt.prune`):
float32 and int8, 1 and 2 threads, all files interleaved in one run,
medians. Weights are random: latency depends on the shapes, not the values.
It measures tf_keras models (the `speed` suite) or Keras 3 ones (in the
`keras3` suite), through the same public calls.

`recovery`: accuracy on mnist5k through the main job (`pipeline.run`, 10
epochs of baseline, 10 of pruning), with and without fine-tuning the pruned
model against its unpruned self: channel pruning to a 1.5x MAC cut for the
reference models and the small MobileNetV2 (and 2x for it), and 80%
unstructured sparsity + int8 for `student_cnn` over 3 seeds.
"""

import os
import statistics
import tempfile

import numpy as np

# name: (builder, MAC cut, round_to values). Builders take (tfopt, keras).
# XNNPACK's float32 kernels on this AVX-512 CPU fill 16-wide vectors:
# counts that are multiples of 32 measured 1.79x where multiples of 8 gave
# 1.40x (MobileNetV2, the same 1.75x MAC cut), so both are measured.
SPEED_MODELS = {
    "mobilenet_v2_96": (
        lambda tfopt, keras: keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), weights=None, classes=10
        ),
        1.75,
        (8, 32),
    ),
    "resnet50_64": (
        lambda tfopt, keras: keras.applications.ResNet50(
            input_shape=(64, 64, 3), weights=None, classes=10
        ),
        2.0,
        (8, 32),
    ),
    **{
        name: (
            lambda tfopt, keras, name=name: tfopt.models.build(
                name, (28, 28, 1), 10, keras_version=_version(keras)
            ),
            1.5,
            (8,),
        )
        for name in ("student_cnn", "teacher_cnn", "resnet_tiny", "mobilenet_v2")
    },
}
QUICK_SPEED_MODELS = ("student_cnn", "resnet_tiny")


def _version(keras):
    """2 for tf_keras, 3 for Keras 3: `models.build`'s `keras_version`."""
    return 3 if keras.__version__.startswith("3.") else 2


def variant_name(round_to):
    return "channels" if round_to == 8 else f"channels_round_to_{round_to}"


def _random_batches(model, count=4):
    shape = [1, *model.input_shape[1:]]

    def batches():
        rng = np.random.default_rng(0)
        for _ in range(count):
            yield rng.uniform(0, 1, shape).astype("float32")

    return batches


def _at_the_end(tfopt, keras, model, target, **settings):
    """`model` pruned to `target` as `settings` say, its masks at the end of
    the schedule: one step at a learning rate of 0 (the weights stay)."""
    pruned = tfopt.prune(model, target, schedule="constant", begin=0, end=1, **settings)
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    pruned.fit(
        next(_random_batches(model, 1)()),
        np.zeros((1, *model.output_shape[1:]), "float32"),
        verbose=0,
        callbacks=[tfopt.PruningCallback()],
    )
    return pruned


def _variants(tfopt, keras, name):
    build, cut, round_tos = SPEED_MODELS[name]
    keras.utils.set_random_seed(0)
    dense = build(tfopt, keras)
    models = {"dense": dense}
    for round_to in round_tos:
        channels = _at_the_end(
            tfopt,
            keras,
            dense,
            1.0 - 1.0 / cut,
            structure="channels",
            measure="macs",
            round_to=round_to,
        )
        models[variant_name(round_to)] = tfopt.shrink(channels)
    # 80% of the weights zeroed by magnitude (TFMOT's wrapper on tf_keras).
    models["magnitude_80"] = tfopt.strip(_at_the_end(tfopt, keras, dense, 0.8))
    return cut, models


def speed(quick, keras_version=2, names=None):
    """Speed-ups of channel pruning and of magnitude pruning over dense, for
    the models `names` (default: all, or the quick ones) of that Keras."""
    import tfopt
    from tfopt.job import measure

    keras = tfopt.models.keras_module(keras_version)
    work = tempfile.mkdtemp()
    out = {}
    for name in names or (QUICK_SPEED_MODELS if quick else SPEED_MODELS):
        cut, models = _variants(tfopt, keras, name)
        rows = measure.speed(
            models,
            work,
            _random_batches(models["dense"]),
            rounds=3 if quick else 15,
            invokes=2 if quick else 10,
        )
        row = {"mac_cut_target": cut, **{r.pop("model"): r for r in rows}}
        for variant in list(models)[1:]:
            row[variant]["mac_cut"] = row["dense"]["macs"] / row[variant]["macs"]
            row[variant]["speedup"] = {
                kind: {
                    t: row["dense"][f"{kind}_ms"][t] / row[variant][f"{kind}_ms"][t]
                    for t in row["dense"][f"{kind}_ms"]
                }
                for kind in ("float32", "int8")
            }
        out[name] = row
    return out


def _job(work, label, **settings):
    from tfopt.job import pipeline

    config = pipeline.Config(
        model_dir=os.path.join(work, label), dataset="mnist5k", **settings
    )
    rows = {r["artifact"]: r for r in pipeline.run(config, command=[label]).rows}
    return rows


def recovery(quick):
    """Accuracy drops of pruned models with and without self-distillation."""
    work = tempfile.mkdtemp()
    epochs = 1 if quick else 10
    out = {"channels_1.5x_macs": {}, "channels_2x_macs": {}, "unstructured_80_int8": {}}
    cases = (
        [("student_cnn", 1.5)]
        if quick
        else [
            ("student_cnn", 1.5),
            ("teacher_cnn", 1.5),
            ("resnet_tiny", 1.5),
            ("mobilenet_v2", 1.5),
            ("mobilenet_v2", 2),
        ]
    )
    controls = {}
    for model, cut in cases:
        # The control: the dense model trained as long as baseline + pruning,
        # so that the extra epochs are not counted as pruning's doing.
        if model not in controls:
            controls[model] = _job(
                work,
                f"{model}_dense",
                model=model,
                epochs=2 * epochs,
                export=("tflite",),
            )["baseline"]["accuracy"]
        longer = controls[model]
        row = {"dense_same_epochs": longer}
        for recover in (True, False):
            rows = _job(
                work,
                f"{model}_{cut}x_{recover}",
                model=model,
                epochs=epochs,
                prune=True,
                prune_structure="channels",
                prune_measure="macs",
                target_sparsity=1 - 1 / cut,
                prune_round_to=4,
                recover=recover,
                export=("tflite",),
            )
            key = "with_recovery" if recover else "without_recovery"
            base, small = rows["baseline"], rows["shrunk"]
            row[key] = {
                "baseline": base["accuracy"],
                "shrunk": small["accuracy"],
                "drop": base["accuracy"] - small["accuracy"],
                "drop_vs_same_epochs": longer - small["accuracy"],
                "mac_cut": base["macs"] / small["macs"],
            }
        out[f"channels_{cut}x_macs"][model] = row
    for recover in (True, False):
        drops = []
        for seed in (0,) if quick else (0, 1, 2):
            rows = _job(
                work,
                f"unstructured_{recover}_{seed}",
                model="student_cnn",
                epochs=epochs,
                seed=seed,
                prune=True,
                target_sparsity=0.8,
                qat=True,
                recover=recover,
                export=("tflite_int8",),
            )
            drops.append(rows["baseline"]["accuracy"] - rows["tflite_int8"]["accuracy"])
        out["unstructured_80_int8"][
            "with_recovery" if recover else "without_recovery"
        ] = {
            "drops": drops,
            "mean_drop": statistics.mean(drops),
            "spread": max(drops) - min(drops),
        }
    return out
