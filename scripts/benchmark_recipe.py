"""The benchmark's `recipe` suite, run by `scripts/benchmark.py`: accuracy at
an equal training budget.

`job`: the main job (`pipeline.run`, its defaults) with `--dense_control`:
80% unstructured sparsity + int8 on `tfmot_mnist` and `student_cnn`, and
channel pruning to a 1.5x MAC cut + int8 on `resnet_tiny` (Adam from 2e-2,
`--epochs=4` and 10) and `mobilenet_v2`, on mnist5k, 3 seeds, each case's
flags in its result: the int8 file's accuracy against the
dense model trained for the same total epochs, and its gzipped size against
the dense model's file.

`library`: the README's recipe (`examples/recipe.py`: `tfopt.prune` +
`tfopt.quantize` in user code) against TFMOT's tutorial recipe through the
same library calls (Adam at 1e-3, sparsity 50% -> 80% over the whole
pruning run, then sparsity-preserving QAT at Adam's default), from the same
trained `tfmot_mnist`, the same epochs, 3 seeds: int8 accuracy and wall
time of each.
"""

import importlib.util
import os
import statistics
import tempfile
import time

RESNET_TINY = {
    "prune_structure": "channels",
    "prune_measure": "macs",
    "target_sparsity": 1 - 1 / 1.5,
    "prune_round_to": 4,
    "learning_rate": 2e-2,
}
# The job's runs: (model, flags). A 1.5x MAC cut keeps 1/1.5 of the MACs.
JOB_CASES = {
    "tfmot_mnist_80_int8": ("tfmot_mnist", {"target_sparsity": 0.8}),
    "student_cnn_80_int8": ("student_cnn", {"target_sparsity": 0.8}),
    # Kept counts in multiples of 4: the default 8 overshoots to a 2.24x
    # cut on a network this narrow (16 and 32 channels). At the default
    # 6e-3 its dense control is under-trained (0.935 against 0.969 at 2e-2,
    # BUILD_NOTES): the comparison is against the better-trained control.
    "resnet_tiny_channels_1.5x_int8": ("resnet_tiny", RESNET_TINY),
    # At 4 epochs a stage, the control is still climbing a point an epoch:
    # the same run without pruning is already 1.3 points below it. At 10
    # its control has converged and the gap is what the pruning costs.
    "resnet_tiny_channels_1.5x_int8_10_epochs": (
        "resnet_tiny",
        {**RESNET_TINY, "epochs": 10},
    ),
    "mobilenet_v2_channels_1.5x_int8": (
        "mobilenet_v2",
        {
            "prune_structure": "channels",
            "prune_measure": "macs",
            "target_sparsity": 1 - 1 / 1.5,
        },
    ),
}
# Reported without the accuracy target: at 4 epochs a stage resnet_tiny's
# control has not converged (the same run without pruning is 1.3 points
# below it), so the gap measures the budget, not the pruning. The target
# is checked on the 10-epoch case.
REPORT_ONLY = frozenset({"resnet_tiny_channels_1.5x_int8"})
EPOCHS = 4  # of each stage: the command
SEEDS = (0, 1, 2)


def _summary(values):
    return {
        "values": values,
        "mean": statistics.mean(values),
        "spread": max(values) - min(values),
    }


def _flags(flags, quick):
    """A case's flags, its epochs included (1 in quick mode)."""
    return {**flags, "epochs": 1 if quick else flags.get("epochs", EPOCHS)}


def _job_case(work, name, model, flags, seed, quick):
    from tfopt.job import pipeline
    from tfopt.job.config import Config

    config = Config(
        model_dir=os.path.join(work, f"{name}_{seed}"),
        dataset="digits" if quick else "mnist5k",
        model=model,
        seed=seed,
        prune=True,
        qat=True,
        dense_control=True,
        export=("tflite_int8",),
        **_flags(flags, quick),
    )
    rows = {r["artifact"]: r for r in pipeline.run(config, command=[name]).rows}
    int8, control, dense = rows["tflite_int8"], rows["dense_control"], rows["baseline"]
    # The model that channel pruning left (before QAT's quantizers).
    small = rows.get("shrunk", rows["pruned"])
    return {
        "int8": int8["accuracy"],
        "dense_control": control["accuracy"],
        "vs_control": int8["control_delta"],
        "gzip_ratio": int8["gzip_ratio"],
        "mac_cut": dense["macs"] / small["macs"],
    }


def job(quick):
    """The main job's defaults against their dense controls."""
    work = tempfile.mkdtemp()
    out = {}
    cases = ["tfmot_mnist_80_int8"] if quick else list(JOB_CASES)
    for name in cases:
        model, flags = JOB_CASES[name]
        runs = [
            _job_case(work, name, model, flags, seed, quick)
            for seed in (SEEDS[:1] if quick else SEEDS)
        ]
        out[name] = {
            key: _summary([run[key] for run in runs])
            for key in ("int8", "dense_control", "vs_control", "gzip_ratio", "mac_cut")
        }
        out[name]["flags"] = _flags(flags, quick)
    return out


def _example():
    """`examples/recipe.py`, the README's recipe, as a module."""
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "recipe.py")
    spec = importlib.util.spec_from_file_location("tfopt_recipe_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library(quick):
    """The README's recipe against TFMOT's tutorial recipe, same epochs."""
    import keras

    import tfopt

    recipe = _example()
    work = tempfile.mkdtemp()
    splits = tfopt.data.load("digits" if quick else "mnist5k", batch_size=64)
    train, validation, test = splits.train, splits.validation, splits.test
    baseline_epochs, epochs = (1, 1) if quick else (4, 2)
    results = {"readme": [], "tutorial": [], "readme_s": [], "tutorial_s": []}
    pair = [("tutorial", recipe.tfmot_tutorial), ("readme", recipe.compress)]
    # One untimed pass of each on two batches first: the first compression
    # in a process pays one-time costs (imports, the converter) for both.
    keras.utils.set_random_seed(0)
    warm = tfopt.models.build("tfmot_mnist", splits.info.input_shape, 10)
    for _, compress in pair:
        compress(warm, train.take(2), epochs=1)
    for seed in SEEDS[:1] if quick else SEEDS:
        keras.utils.set_random_seed(seed)
        model = tfopt.models.build("tfmot_mnist", splits.info.input_shape, 10)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(train, validation_data=validation, epochs=baseline_epochs, verbose=0)
        # Alternating which runs first.
        for name, compress in pair if seed % 2 == 0 else pair[::-1]:
            keras.utils.set_random_seed(seed + 100)
            start = time.perf_counter()
            qat = compress(model, train, validation, epochs=epochs)
            results[f"{name}_s"].append(time.perf_counter() - start)
            path = os.path.join(work, f"{name}_{seed}.tflite")
            tfopt.export_tflite(qat, path, quantization="int8")
            results[name].append(tfopt.evaluate_tflite(path, test).accuracy)
    readme, tutorial = results["readme"], results["tutorial"]
    return {
        "epochs": {"baseline": baseline_epochs, "pruning": epochs, "qat": 1},
        "readme_int8": _summary(readme),
        "tutorial_int8": _summary(tutorial),
        "readme_minus_tutorial": statistics.mean(readme) - statistics.mean(tutorial),
        "per_seed_difference": _summary(
            [r - t for r, t in zip(readme, tutorial, strict=True)]
        ),
        "wall_time_ratio": statistics.median(
            r / t
            for r, t in zip(results["readme_s"], results["tutorial_s"], strict=True)
        ),
    }


def recipe(quick):
    """Both parts of the suite."""
    return {"library": library(quick), "job": job(quick)}


def checks(results, add, targets):
    """Adds the suite's targets (`add(metric, value, target, higher)`)."""
    for name, row in results.get("job", {}).items():
        if name not in REPORT_ONLY:
            add(
                f"recipe/{name}/int8_vs_dense_control",
                row["vs_control"]["mean"],
                targets["recipe_int8_vs_dense_control"],
                True,
            )
        key, target = (
            ("mac_cut", "recipe_mac_cut")
            if "channels" in name
            else ("gzip_ratio", "recipe_gzip_ratio")
        )
        add(f"recipe/{name}/{key}", row[key]["mean"], targets[target], True)
    library = results.get("library")
    if library:
        add(
            "recipe/tfmot_mnist/readme_minus_tutorial_int8",
            library["readme_minus_tutorial"],
            targets["recipe_readme_minus_tutorial"],
            True,
        )
        add(
            "recipe/tfmot_mnist/readme_wall_time_vs_tutorial",
            library["wall_time_ratio"],
            targets["recipe_wall_time_vs_tutorial"],
        )
