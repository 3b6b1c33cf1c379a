"""The main job's own errors (TF-free: scripts catch them before TensorFlow
loads)."""


class ClusterError(RuntimeError):
    """A worker of a multi-worker run stopped; the message names it."""
