"""`tfopt.flags` is `tfopt.job.flags`: the old path, kept for one release."""

import sys

from tfopt.job import flags as _moved

sys.modules[__name__] = _moved
