"""The old path of `tfopt.job.pipeline`, kept for one release (with the
names it held that now live in `tfopt.job.config` and `tfopt.job.stages`)."""

from tfopt.job.config import EXPORTS
from tfopt.job.pipeline import *  # noqa: F403
from tfopt.job.pipeline import __all__ as _recipe
from tfopt.job.stages import keras_of

__all__ = [*_recipe, "EXPORTS", "keras_of"]
