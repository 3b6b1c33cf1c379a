"""Keeping the workers of a multi-worker run in step: a barrier that also
checks they agree, and a readable message when one of them is lost.

Every worker of a MultiWorkerMirroredStrategy must make the same collective
calls in the same order; one that refuses, runs other flags or dies leaves
the others waiting. TensorFlow's coordination service notices a dead peer
within seconds (its heartbeats), aborts the collectives with an
`UnavailableError`, and `lost_task` turns that into a message naming it.
"""

import json
import re
import zlib

import tensorflow as tf

# What a collective raises when a peer has stopped.
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def _all_sum(strategy, values):
    """Sums `values` over every replica of every worker."""

    def replica_sum():
        return tf.distribute.get_replica_context().all_reduce(
            "SUM", tf.constant(values, tf.float64)
        )

    @tf.function  # run eagerly, a collective strategy warns of its overhead
    def total():
        return strategy.run(replica_sum)

    return strategy.experimental_local_results(total())[0].numpy()


def digest(model):
    """A short hash of `model`'s weights: equal on every worker of a cluster
    that trained in step (logged, so that it can be checked)."""
    crc = 0
    for weight in model.get_weights():
        crc = zlib.crc32(weight.tobytes(), crc)
    return f"{crc:08x}"


def barrier(strategy, worker):
    """Returns once every worker got here; a no-op on a single worker."""
    if worker.num_workers > 1:
        _all_sum(strategy, [1.0])


def agree(strategy, worker, ok, value=None):
    """A barrier that also tells every worker whether all of them are `ok`
    and hold the same `value` (any JSON-able object).

    Every worker gets the same answer, so all of them can stop together
    instead of leaving the others waiting in a collective.

    Returns:
        `(all_ok, same)`; `(ok, True)` on a single worker.
    """
    if worker.num_workers < 2:
        return bool(ok), True
    # A 16-bit fingerprint: summed with its square over the replicas it stays
    # exact in float64 up to a thousand replicas, and equal values are
    # exactly what zero variance means.
    mark = zlib.crc32(json.dumps(value, sort_keys=True).encode()) % (1 << 16)
    oks, total, squares = _all_sum(strategy, [float(ok), mark, mark * mark])
    replicas = strategy.num_replicas_in_sync
    return oks == replicas, squares * replicas == total * total


def lost_task(err, worker):
    """The message for a collective `err` that failed because a peer
    stopped: which task, at which address, and how to resume."""
    me = (worker.task_type, str(worker.task_id))
    lost = "a peer"
    for job, index in re.findall(
        r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)", err.message
    ):
        if (job, index) != me:
            hosts = worker.cluster.get(job, [])
            where = f" at {hosts[int(index)]}" if int(index) < len(hosts) else ""
            lost = f"{job} task {index}{where}"
            break
    return (
        f"lost {lost} of this {worker.num_workers}-worker cluster "
        f"({type(err).__name__}); this is {me[0]} {me[1]}. Re-run the same "
        "command on every worker to resume from the last finished epoch."
    )


def gather(strategy, worker, values):
    """Each worker's `values` (a list of numbers, the same length on every
    worker), as one list per worker in task order; `[values]` on one."""
    if worker.num_workers < 2:
        return [list(values)]
    slots = [0.0] * (worker.num_workers * len(values))
    # Each local replica adds its share: summed, the worker's slot holds
    # its values exactly (integers below 2**52).
    local = strategy.num_replicas_in_sync // worker.num_workers
    start = index(worker) * len(values)
    slots[start : start + len(values)] = [v / local for v in values]
    total = _all_sum(strategy, slots)
    return [
        [float(v) for v in total[i * len(values) : (i + 1) * len(values)]]
        for i in range(worker.num_workers)
    ]


def index(worker):
    """This worker's place among all of them (its input pipeline's id):
    the chief first where the cluster has one."""
    if "chief" in worker.cluster:
        return 0 if worker.task_type == "chief" else worker.task_id + 1
    return worker.task_id
