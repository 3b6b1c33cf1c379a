"""`tfopt.report` is `tfopt.job.report`: the old path, kept for one release."""

import sys

from tfopt.job import report as _moved

sys.modules[__name__] = _moved
