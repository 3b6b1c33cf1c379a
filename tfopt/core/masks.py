"""Pruning masks from weight magnitudes, in NumPy: unstructured, in blocks
(as TFMOT's block pruning) and m:n. Tfopt's Keras 3 pruning computes its
masks with these at each schedule update; nothing here imports a Keras.
"""

import numpy as np


def magnitude(values, sparsity):
    """Ones of `values`' shape, 0 at its `sparsity` share of smallest
    magnitudes (at least one weight kept)."""
    # A partial sort (linear time: it runs at every mask update, in the
    # training loop). Deterministic: equal inputs give equal masks on every
    # worker and replica.
    zeros = min(int(round(sparsity * values.size)), values.size - 1)
    mask = np.ones(values.size, values.dtype)
    if zeros:
        mask[np.argpartition(np.abs(values).ravel(), zeros - 1)[:zeros]] = 0
    return mask.reshape(values.shape)


def blocks(values, sparsity, block_size):
    """The mask of 2-D `values` zeroing whole `block_size` blocks, the
    `sparsity` share of them with the smallest mean magnitude."""
    # Blocks at the edges are scored over the weights they hold. (TFMOT
    # average-pools with SAME padding, which shifts its windows where the
    # blocks do not divide the kernel: it scores windows it does not zero.)
    (h, w), (bh, bw) = values.shape, block_size
    pad = ((0, -h % bh), (0, -w % bw))
    shape = (-(-h // bh), bh, -(-w // bw), bw)
    sums = np.pad(np.abs(values), pad).reshape(shape).sum((1, 3))
    counts = np.pad(np.ones_like(values), pad).reshape(shape).sum((1, 3))
    mask = magnitude(sums / counts, sparsity)
    return np.repeat(np.repeat(mask, bh, axis=0), bw, axis=1)[:h, :w]


def m_by_n(values, m_by_n):
    """The mask zeroing the m smallest of every n weights."""
    # Groups of n run along the input channels (axis -2 of a Keras kernel),
    # as in TFMOT and TFLite: move that axis last, group, move it back.
    zeros, n = m_by_n
    moved = np.moveaxis(values, -2, -1)
    groups = np.abs(moved).reshape(-1, n)
    mask = np.ones_like(groups)
    order = np.argsort(groups, axis=1, kind="stable")[:, :zeros]
    np.put_along_axis(mask, order, 0, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)
