"""Scalar summaries TensorBoard reads, written without the tensorboard
package: TF 2.21 no longer depends on it and `tf.summary.scalar` fails
without it, so tfopt writes the same records through `tf.summary.write`."""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalars(writer, step, values):
    """Writes `{tag: number}` at `step` and flushes."""
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.write(tag, tf.cast(value, tf.float32), metadata=_SCALAR_METADATA)
    writer.flush()
