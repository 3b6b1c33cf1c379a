"""`tfopt.config` is `tfopt.job.config`: the old path, kept for one release."""

import sys

from tfopt.job import config as _moved

sys.modules[__name__] = _moved
