"""`tfopt.pipeline` is `tfopt.job.pipeline`: the old path, kept for one release."""

import sys

from tfopt.job import pipeline as _moved

sys.modules[__name__] = _moved
