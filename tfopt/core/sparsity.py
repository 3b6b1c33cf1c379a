"""`sparsity_report`: zeros per layer and weight, on wrapped or stripped
models, with 2:4 (m:n) compliance where the layout allows it.

`Row`, `SparsityReport` and the m:n checks serve both Kerases; each
Keras's package makes the rows (`keras2.sparsity.rows`,
`keras3.sparsity.rows`). Nothing here imports TensorFlow or a Keras.
"""

from typing import NamedTuple

from tfopt.core import checks

# Names of variables that are state, not parameters (BatchNorm statistics,
# TFMOT's quantizer ranges, pruning steps, masks and thresholds).
NOT_PARAMETERS = (
    "moving_mean",
    "moving_variance",
    "_min",
    "_max",
    "step",
    "mask",
    "threshold",
)


class Row(NamedTuple):
    """One weight of one layer."""

    layer: str
    weight: str
    shape: tuple
    params: int
    zeros: int
    sparsity: float
    pruned: bool  # wrapped by a pruning wrapper right now
    m_by_n: bool | None  # None where the input-channel axis is not a multiple of n


def m_by_n_compliant(values, m_by_n=(2, 4)):
    """True if every n consecutive input-channel weights hold >= m zeros.

    The groups run along the input channels of TFLite's layout ([out, in] for
    a Dense kernel, [out, h, w, in] for a Conv2D one), as in TFMOT. Returns
    None where the tensor is not rank 2 or 4 or the input channels are not a
    multiple of n.
    """
    zeros_needed, n = m_by_n
    if values.ndim not in (2, 4) or values.shape[-2] % n:
        return None
    rows = values.T if values.ndim == 2 else values.transpose(3, 0, 1, 2)
    groups = rows.reshape(-1, n)
    return bool(((groups == 0).sum(axis=1) >= zeros_needed).all())


def _weight_name(variable):
    return variable.name.split("/")[-1].split(":")[0]


def row(layer_name, variable, values, pruned, m_by_n):
    """The `Row` of weight `variable` (of layer `layer_name`), whose values
    as the layer uses them are the NumPy array `values`."""
    zeros = int((values == 0).sum())
    return Row(
        layer_name,
        _weight_name(variable),
        tuple(values.shape),
        int(values.size),
        zeros,
        zeros / max(values.size, 1),
        pruned,
        m_by_n_compliant(values, m_by_n),
    )


class SparsityReport:
    """Rows of `Row` plus totals; `str()` is an aligned table."""

    def __init__(self, rows, m_by_n=(2, 4)):
        self.rows = list(rows)
        self.m_by_n = tuple(m_by_n)
        self.params = sum(r.params for r in self.rows)
        self.zeros = sum(r.zeros for r in self.rows)
        self.sparsity = self.zeros / self.params if self.params else 0.0

    def layer(self, name):
        """The rows of layer `name`."""
        return [r for r in self.rows if r.layer == name]

    def to_dict(self):
        """A JSON-ready dict: `overall` totals and one entry per weight."""
        return {
            "overall": {
                "params": self.params,
                "zeros": self.zeros,
                "sparsity": self.sparsity,
            },
            "m_by_n": list(self.m_by_n),
            "weights": [{**r._asdict(), "shape": list(r.shape)} for r in self.rows],
        }

    def __str__(self):
        label = "{}:{}".format(*self.m_by_n)
        header = ("layer", "weight", "shape", "params", "zeros", "sparsity", label)
        lines = (
            [header]
            + [
                (
                    r.layer + (" (pruned)" if r.pruned else ""),
                    r.weight,
                    "x".join(map(str, r.shape)),
                    f"{r.params:,}",
                    f"{r.zeros:,}",
                    f"{r.sparsity:.2%}",
                    {True: "yes", False: "no", None: "-"}[r.m_by_n],
                )
                for r in self.rows
            ]
            + [
                (
                    "overall",
                    "",
                    "",
                    f"{self.params:,}",
                    f"{self.zeros:,}",
                    f"{self.sparsity:.2%}",
                    "",
                )
            ]
        )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
            for line in lines
        ]
        text.insert(1, "-" * len(text[0]))
        text.insert(-1, "-" * len(text[0]))
        return "\n".join(line.rstrip() for line in text)

    __repr__ = __str__


def check_m_by_n(value, arg, *, optional=False):
    if value is None and optional:
        return
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(checks.is_int(v) for v in value)
        and 0 < value[0] < value[1]
    ):
        raise ValueError(
            f"`{arg}` must be two ints (m, n) with 0 < m < n, such as (2, 4)"
            f"{' or None' if optional else ''}. Received: {arg}={value!r}"
        )


def block_fits(shape, block_size):
    """Whether a kernel of `shape` takes blocks of `block_size`: 2-D, with
    more than one block along each axis (TFMOT squeezes a single block row
    or column away, then fails on the rank)."""
    return len(shape) == 2 and all(
        -(-n // b) > 1 for n, b in zip(shape, block_size, strict=True)
    )


def unfit_message(what, unfit, target_sparsity):
    """The warning for layers that a structure (`what`, e.g. "m_by_n=(2, 4)")
    does not fit, which are then pruned without it."""
    return (
        f"{what} does not fit layers {unfit} (input channels must be a "
        "multiple of n for m_by_n, kernels 2-D and more than one block along "
        "each axis for block_size); they are "
        f"pruned without structure to {target_sparsity}."
    )


def check_ceiling(name, count, target_sparsity, unit="weights"):
    """Raises unless pruning `target_sparsity` of a tensor of `count` units
    (weights or blocks) leaves at least one: every pruned tensor keeps one."""
    if target_sparsity > (count - 1) / count:
        raise ValueError(
            "`target_sparsity` must leave at least one weight in every pruned "
            f"tensor: {name} has {count} {unit}, so it can be at most "
            f"{(count - 1) / count:.4f} sparse. Exclude that layer or lower the "
            f"target. Received: target_sparsity={target_sparsity!r}"
        )
