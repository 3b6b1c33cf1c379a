"""Argument checks shared by every public entry point.

One wording everywhere: "`{arg}` must be {expectation}. Received:
{arg}={value!r}", `TypeError` for a wrong type, `ValueError` for a wrong
value. Booleans are rejected where numbers are expected: `True` is an int to
Python but never a meaningful batch size or sparsity.
"""

import numbers


def _or_none(optional):
    return " or None" if optional else ""


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(choices):
    """Renders choices as a list of reprs: ['a', 'b']."""
    return "[" + ", ".join(repr(c) for c in choices) + "]"


def check_int(value, arg, *, minimum=None, optional=False):
    """Raises unless `value` is an int >= `minimum` (or None if optional)."""
    if value is None and optional:
        return
    if not is_int(value):
        raise TypeError(
            f"`{arg}` must be an int{_or_none(optional)}. Received: {arg}={value!r}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"`{arg}` must be an int >= {minimum}{_or_none(optional)}. "
            f"Received: {arg}={value!r}"
        )


def check_real(value, arg, *, optional=False):
    """Raises `TypeError` unless `value` is a real number (or None)."""
    if value is None and optional:
        return
    if not is_real(value):
        raise TypeError(
            f"`{arg}` must be a float{_or_none(optional)}. Received: {arg}={value!r}"
        )


def check_bool(value, arg, *, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise TypeError(
            f"`{arg}` must be a bool{_or_none(optional)}. Received: {arg}={value!r}"
        )


def check_choice(value, arg, choices, *, optional=False):
    """Raises unless `value` is one of `choices` (or None if optional)."""
    if value is None and optional:
        return
    if value not in choices:
        raise ValueError(
            f"`{arg}` must be one of {describe(choices)}{_or_none(optional)}. "
            f"Received: {arg}={value!r}"
        )


def check_name(value, arg, choices, *, hint=""):
    """Like `check_choice` for a required str, with a `TypeError` first."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{arg}` must be a str, one of {describe(choices)}.{hint} "
            f"Received: {arg}={value!r}"
        )
    check_choice(value, arg, choices)


def check_callback_output(log_dir, update_freq):
    """The checks on a callback's TensorBoard `log_dir` and `update_freq`
    (`epoch`, `batch` or every N batches)."""
    if (
        log_dir is not None
        and not isinstance(log_dir, (str, bytes))
        and not (hasattr(log_dir, "__fspath__"))
    ):
        raise TypeError(
            f"`log_dir` must be a path or None. Received: log_dir={log_dir!r}"
        )
    if update_freq not in ("epoch", "batch") and not (
        is_int(update_freq) and update_freq >= 1
    ):
        raise ValueError(
            "`update_freq` must be 'epoch', 'batch' or an int >= 1. "
            f"Received: update_freq={update_freq!r}"
        )
