"""Export a saved model to TFLite/SavedModel files and verify each one on a
data set: its accuracy must stay within --max_accuracy_drop of the Keras
model's, or the command fails.

    python scripts/export.py --input=runs/demo/checkpoints/qat.keras \\
        --output_dir=out --export=tflite_int8,saved_model --dataset=mnist5k
"""

import os
import sys

from absl import app, flags

from tfopt.job import flags as tfopt_flags
from tfopt.job.config import Config, ConfigError

FLAGS = tfopt_flags.FLAGS
tfopt_flags.define_fields(["dataset", "batch_size", "seed", "export"])
if "input" not in FLAGS:
    flags.DEFINE_string(
        "input", None, "The model to export (.keras, .h5 or SavedModel)."
    )
    flags.DEFINE_string("output_dir", None, "Where the exported files go.")
    flags.DEFINE_float(
        "max_accuracy_drop",
        0.02,
        "Largest accuracy loss an export may show against the Keras model.",
        lower_bound=0.0,
    )
if "overwrite" not in FLAGS:  # train.py's, when both are imported
    flags.DEFINE_bool("overwrite", False, "Replace existing files.")
flags.adopt_module_key_flags(tfopt_flags)


def export_and_verify(
    model, splits, formats, output_dir, *, overwrite, max_drop, batch_size
):
    """Exports `model` in each format and checks it on `splits.test`
    (`tfopt.job.exports.export_and_verify`, as the main job does).

    Returns:
        The `Verified` artifacts and the Keras model's accuracy.

    Raises:
        RuntimeError: If an export loses more than `max_drop` accuracy.
    """
    from tfopt.job import exports, measure

    reference = measure.keras_accuracy(model, splits.test)
    verified = exports.export_and_verify(
        model, formats, output_dir, splits, batch_size=batch_size, overwrite=overwrite
    )
    bad = [v for v in verified if reference - v.accuracy > max_drop]
    if bad:
        raise RuntimeError(
            f"exports lost more than --max_accuracy_drop={max_drop}: "
            + ", ".join(f"{v.name} {v.accuracy:.4f} vs {reference:.4f}" for v in bad)
        )
    return verified, reference


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.input or not os.path.exists(FLAGS.input):
        sys.exit(
            f"error: --input={FLAGS.input} does not exist; give a .keras, .h5 "
            "or SavedModel path."
        )
    if not FLAGS.output_dir:
        sys.exit("error: --output_dir is required.")
    try:  # the fields it shares with the main job, checked the same way
        Config(
            model_dir=FLAGS.output_dir,
            dataset=FLAGS.dataset,
            batch_size=FLAGS.batch_size,
            seed=FLAGS.seed,
            export=tuple(FLAGS.export),
        ).check()
    except ConfigError as err:
        sys.exit(f"error: {err.for_flags()}")
    import tfopt  # TensorFlow: only once the flags are good

    splits = tfopt.data.load(
        FLAGS.dataset, batch_size=FLAGS.batch_size, seed=FLAGS.seed
    )
    try:
        verified, reference = export_and_verify(
            tfopt.load_model(FLAGS.input),
            splits,
            FLAGS.export,
            FLAGS.output_dir,
            overwrite=FLAGS.overwrite,
            max_drop=FLAGS.max_accuracy_drop,
            batch_size=FLAGS.batch_size,
        )
    except (RuntimeError, FileExistsError, OSError) as err:
        sys.exit(f"error: {err}")
    print(f"Keras accuracy {reference:.4f}")
    print("| format | file | size | accuracy | drop |\n|---|---|---:|---:|---:|")
    for v in verified:
        print(
            f"| {v.name} | {v.path} | {v.size_bytes:,} B | {v.accuracy:.4f} | "
            f"{reference - v.accuracy:+.4f} |"
        )


def run():
    """Console entry point `tfopt-export`."""
    app.run(main)


if __name__ == "__main__":
    run()
