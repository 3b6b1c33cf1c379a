"""The main job's exports: each requested format written, loaded back and
evaluated on the test split (`scripts/export.py` does the same)."""

import os
from typing import NamedTuple

from tfopt import export, quantization
from tfopt.core import tflite
from tfopt.job import measure
from tfopt.job.config import EXPORTS


class Verified(NamedTuple):
    """One exported artifact and how it did on the test split."""

    name: str  # a `tfopt.job.config.EXPORTS` name
    path: str
    size_bytes: int
    accuracy: float
    latency_ms_per_example: float | None  # TFLite files only
    model: object  # what it was made from (a SavedModel: as loaded back)


def export_and_verify(
    model, formats, output_dir, splits, *, batch_size, overwrite=False
):
    """Exports `model` in each of `formats` (`tfopt.job.config.EXPORTS` names)
    under `output_dir` and evaluates each file on `splits.test`; the main
    job and `scripts/export.py` both use it. A float model's int8 file is
    calibrated on `splits.train`; a QAT model's uses its learned ranges.

    Returns:
        One `Verified` per format, in order.
    """
    calibration = None if _is_quantized(model) else splits.train
    verified = []
    for name in formats:
        form = EXPORTS[name]
        path = os.path.join(output_dir, form.filename)
        if form.kind == "saved_model":
            made = export.export_saved_model(model, path, overwrite=overwrite)
            loaded = export.load_model(made.path, compile=False)
            verified.append(
                Verified(
                    name,
                    made.path,
                    made.size_bytes,
                    measure.keras_accuracy(loaded, splits.test),
                    None,
                    loaded,
                )
            )
            continue
        made = export.export_tflite(
            model,
            path,
            quantization=form.quantization,
            overwrite=overwrite,
            representative_data=calibration,
        )
        result = tflite.evaluate_tflite(made.path, splits.test)
        verified.append(
            Verified(
                name,
                made.path,
                made.size_bytes,
                result.accuracy,
                result.mean_batch_latency_ms / batch_size,
                model,
            )
        )
    return verified


def _is_quantized(model):
    return quantization.quantization_aware(model)
