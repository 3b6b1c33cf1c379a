"""Export a saved model to TFLite/SavedModel files and verify each one on a
data set: its accuracy must stay within --max_accuracy_drop of the Keras
model's, or the command fails.

    python scripts/export.py --input=runs/demo/checkpoints/qat.keras \\
        --output_dir=out --export=tflite_int8,saved_model --dataset=mnist5k
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging

import tfopt
from tfopt import flags as tfopt_flags

FLAGS = tfopt_flags.FLAGS
tfopt_flags.define_data_flags()
tfopt_flags.define_export_flags()
if "input" not in FLAGS:
    flags.DEFINE_string("input", None, "The model to export (.keras, .h5 or "
                        "SavedModel).")
    flags.DEFINE_string("output_dir", None, "Where the exported files go.")
    flags.DEFINE_float("max_accuracy_drop", 0.02, "Largest accuracy loss an "
                       "export may show against the Keras model.", lower_bound=0.0)
if "overwrite" not in FLAGS:
    flags.DEFINE_bool("overwrite", False, "Replace existing files.")

def export_and_verify(model, splits, formats, output_dir, *, overwrite,
                      max_drop):
    """Exports `model` in each format and checks it on `splits.test`.

    Returns:
        Rows (format, path, size, accuracy, drop) and the Keras accuracy.

    Raises:
        RuntimeError: If an export loses more than `max_drop` accuracy.
    """
    loss = tfopt.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss, metrics=["accuracy"])
    reference = model.evaluate(splits.test, verbose=0, return_dict=True)["accuracy"]
    rows = []
    for name in formats:
        if name == "saved_model":
            exported = tfopt.export_saved_model(
                model, os.path.join(output_dir, "saved_model"), overwrite=overwrite)
            loaded = tfopt.load_model(exported.path, compile=False)
            loaded.compile(loss=loss, metrics=["accuracy"])
            accuracy = loaded.evaluate(splits.test, verbose=0,
                                       return_dict=True)["accuracy"]
        else:
            exported = tfopt.export_tflite(
                model, os.path.join(output_dir, f"{name}.tflite"),
                quantization=tfopt.export.TFLITE_FORMATS[name], overwrite=overwrite,
                representative_data=splits.train)
            accuracy = tfopt.evaluate_tflite(exported.path, splits.test).accuracy
        rows.append((name, exported.path, exported.size_bytes, accuracy,
                     reference - accuracy))
    bad = [row for row in rows if row[4] > max_drop]
    if bad:
        raise RuntimeError(
            f"exports lost more than --max_accuracy_drop={max_drop}: "
            + ", ".join(f"{r[0]} {r[3]:.4f} vs {reference:.4f}" for r in bad))
    return rows, reference


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    if not FLAGS.input or not os.path.exists(FLAGS.input):
        sys.exit(f"error: --input={FLAGS.input} does not exist; give a .keras, .h5 "
                 "or SavedModel path.")
    if not FLAGS.output_dir:
        sys.exit("error: --output_dir is required.")
    splits = tfopt.data.load(FLAGS.dataset, batch_size=FLAGS.batch_size,
                             seed=FLAGS.seed)
    try:
        rows, reference = export_and_verify(
            tfopt.load_model(FLAGS.input), splits, FLAGS.export, FLAGS.output_dir,
            overwrite=FLAGS.overwrite, max_drop=FLAGS.max_accuracy_drop)
    except (RuntimeError, FileExistsError) as err:
        sys.exit(f"error: {err}")
    logging.info("Keras accuracy %.4f", reference)
    print("| format | file | size | accuracy | drop |\n|---|---|---:|---:|---:|")
    for name, path, size, accuracy, drop in rows:
        print(f"| {name} | {path} | {size:,} B | {accuracy:.4f} | {drop:+.4f} |")


def run():
    """Console entry point `tfopt-export`."""
    app.run(main)


if __name__ == "__main__":
    run()
