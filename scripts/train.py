"""Compress a model end to end: teacher, distillation, pruning, QAT, export,
report. Preemption-safe: re-run the same command to resume.

    python scripts/train.py --model_dir=runs/demo --teacher=train --prune --qat

Flags are tfopt's (see --helpfull); --flagfile=FILE reads them from a file.
"""

import logging as std_logging
import os
import sys

from absl import app, logging

from tfopt import distribute, pipeline
from tfopt import flags as tfopt_flags

FLAGS = tfopt_flags.FLAGS
tfopt_flags.define_all()


def config_from_flags():
    """A pipeline.Config from the parsed flags."""
    return pipeline.Config(
        model_dir=FLAGS.model_dir, dataset=FLAGS.dataset, batch_size=FLAGS.batch_size,
        seed=FLAGS.seed, model=FLAGS.model, epochs=FLAGS.epochs,
        learning_rate=FLAGS.learning_rate, teacher=FLAGS.teacher,
        teacher_model=FLAGS.teacher_model, teacher_epochs=FLAGS.teacher_epochs,
        temperature=FLAGS.temperature, alpha=FLAGS.alpha,
        distillation_loss=FLAGS.distillation_loss, cache_teacher=FLAGS.cache_teacher,
        prune=FLAGS.prune, target_sparsity=FLAGS.target_sparsity,
        pruning_begin=FLAGS.pruning_begin, pruning_end=FLAGS.pruning_end,
        m_by_n=tfopt_flags.m_by_n(FLAGS.sparsity_m_by_n), qat=FLAGS.qat,
        qat_epochs=FLAGS.qat_epochs, export=tuple(FLAGS.export),
        strategy=FLAGS.strategy, tpu=FLAGS.tpu, num_gpus=FLAGS.num_gpus,
        all_reduce=FLAGS.all_reduce, memory_growth=FLAGS.memory_growth,
        memory_limit_mb=FLAGS.memory_limit_mb, logical_cpus=FLAGS.logical_cpus,
        mixed_precision=FLAGS.mixed_precision, deterministic=FLAGS.deterministic,
        overwrite=FLAGS.overwrite)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # TensorFlow's own INFO lines (converter, SavedModel) drown the stage log.
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    config = config_from_flags()
    try:
        pipeline.run(config, command=sys.argv)
    except (pipeline.ConfigError, pipeline.ClusterError) as err:
        logging.error("%s", err)
        sys.exit(f"error: {err}")
    # Only the chief of a cluster writes the report.
    if distribute.worker_info(pipeline.get_strategy(config)).is_chief:
        with open(os.path.join(FLAGS.model_dir, "report.md")) as file:
            print(file.read())


def run():
    """Console entry point `tfopt-train`."""
    app.run(main)


if __name__ == "__main__":
    run()
