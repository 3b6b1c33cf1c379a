"""The old path of the main job's report, kept for one release: rendering is
`tfopt.job.report`, measuring (which this module also held) is
`tfopt.job.measure`."""

from tfopt.job.measure import (  # noqa: F401 (the names this path had)
    environment,
    file_row,
    keras_accuracy,
    keras_row,
    macs,
    speed,
)
from tfopt.job.report import *  # noqa: F403
from tfopt.job.report import __all__ as _rendering

__all__ = [
    *_rendering,
    "environment",
    "file_row",
    "keras_accuracy",
    "keras_row",
    "macs",
    "speed",
]
