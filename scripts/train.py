"""Compress a model end to end: teacher, distillation, pruning, QAT, export,
report. Preemption-safe: re-run the same command to resume.

    python scripts/train.py --model_dir=runs/demo --teacher=train --prune --qat

Flags are tfopt's (`--help` lists them); --flagfile=FILE reads them from a
file. The flags are parsed and checked before TensorFlow is imported, so a
mistake is answered at once. Quiet by default: stage lines, Keras progress
and the report; `--verbosity=0` (or `-v 0`) brings back TensorFlow's own
log lines.
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from tfopt.job import flags as tfopt_flags
from tfopt.job.config import ClusterError, ConfigError

FLAGS = tfopt_flags.FLAGS
tfopt_flags.define_all()
flags.adopt_module_key_flags(tfopt_flags)


@contextlib.contextmanager
def _quiet_unless_asked():
    """Hides TensorFlow's C++ and internal INFO lines unless --verbosity was
    given: around the TensorFlow import (its C++ libraries log their banner
    to file descriptor 2 before any setting applies), and after it."""
    if FLAGS["verbosity"].present:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    absl_logging.set_verbosity(absl_logging.WARNING)
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _show_progress():
    """tfopt's stage lines as plain lines on stdout."""
    logger = std_logging.getLogger("tfopt")
    if not logger.handlers:
        handler = std_logging.StreamHandler(sys.stdout)
        handler.setFormatter(std_logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(std_logging.INFO)
    logger.propagate = False  # not again through absl's handler


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = tfopt_flags.config_from_flags().check()
    except ConfigError as err:
        sys.exit(f"error: {err.for_flags()}")
    _show_progress()
    with _quiet_unless_asked():
        from tfopt.job import pipeline  # TensorFlow: only once the flags are good

    try:
        report = pipeline.run(config, command=sys.argv)
    except ConfigError as err:
        sys.exit(f"error: {err.for_flags()}")
    except ClusterError as err:
        sys.exit(f"error: {err}")
    if report.markdown is not None:  # only the chief of a cluster writes it
        print(report.markdown)


def run():
    """Console entry point `tfopt-train`."""
    app.run(main)


if __name__ == "__main__":
    run()
