"""The gradients Taylor channel importance scores with, for both Kerases:
the hard-label loss on the first batches of `PruningCallback(data=...)`,
every replica and worker scoring the same batch, the mean over them all (so
every worker keeps the same channels)."""

import tensorflow as tf

# Batches of `PruningCallback(data=...)` each Taylor score is summed over.
TAYLOR_BATCHES = 4
TAYLOR_NEEDS_DATA = (
    "`data` must be batches of (x, y) for importance='taylor', which "
    "scores channels on training data: pass "
    "PruningCallback(data=...). Received: data=None"
)


def gradient_sums(strategy, forward, loss_fn, variables):
    """A function of `data` that returns dL/dv of each of `variables`
    (watched: BatchNorm's non-trainable moving mean counts too) summed over
    its first `TAYLOR_BATCHES` batches, as NumPy arrays. `forward(x)` is the
    pruned model's inference output, `loss_fn(y, out)` a per-example loss.
    The step is traced once, on the first call."""

    def replica(x, y):
        with tf.GradientTape() as tape:
            tape.watch(variables)
            loss = tf.reduce_mean(loss_fn(y, forward(x)))
        return [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for v, g in zip(variables, tape.gradient(loss, variables), strict=True)
        ]

    @tf.function
    def gradient(x, y):
        return [
            strategy.reduce("MEAN", g, axis=None)
            for g in strategy.run(replica, args=(x, y))
        ]

    def sums(data):
        totals = [0.0] * len(variables)
        for x, y in data.take(TAYLOR_BATCHES):
            totals = [
                total + g.numpy()
                for total, g in zip(totals, gradient(x, y), strict=True)
            ]
        return totals

    return sums
