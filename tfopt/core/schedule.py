"""When a pruning schedule updates its masks, and to what sparsity: the
step arithmetic that the tf_keras path (`tfopt.keras2.schedule.PruningSchedule`, a TFMOT
schedule) and the Keras 3 path (`tfopt.keras3.pruning.PruningMask`) share.

TFMOT's schedules prune only on steps where `(step - begin) % frequency == 0`,
so an `end` off that grid stops short of the target, and `frequency=100`
never prunes a short run. These steps always update at `end`, and pick a
frequency from the run length when none is given. Fractions become steps
when `PruningCallback` sees the length of the `fit` (`resolve`). Nothing here
imports TensorFlow or a Keras.
"""

import math

from tfopt.core import checks

KINDS = ("polynomial", "constant")
# Mask updates aimed for between `begin` and `end` when `frequency` is None.
_TARGET_UPDATES = 20


def is_fraction(value):
    return isinstance(value, float)


class ScheduleSteps:
    """Sparsity over optimizer steps; see `tfopt.prune` for the arguments."""

    # The kind and span are always given (`tfopt.prune` has the defaults).
    def __init__(
        self,
        target_sparsity,
        kind,
        begin,
        end,
        initial_sparsity=0.0,
        frequency=None,
        power=3,
    ):
        self.target_sparsity = float(target_sparsity)
        self.kind = kind
        self.begin, self.end = begin, end
        self.initial_sparsity = float(initial_sparsity)
        self.frequency = frequency
        self.power = power
        self.steps = None  # (begin_step, end_step, frequency) once resolved
        if not is_fraction(begin):
            self.resolve(None)

    @property
    def fractional(self):
        return is_fraction(self.begin)

    def settings(self):
        """The constructor's arguments, as a JSON-ready dict."""
        return {
            "target_sparsity": self.target_sparsity,
            "kind": self.kind,
            "begin": self.begin,
            "end": self.end,
            "initial_sparsity": self.initial_sparsity,
            "frequency": self.frequency,
            "power": self.power,
        }

    def resolve(self, total_steps):
        """Fixes the steps for a run of `total_steps`; True if they changed.

        The step counter reads 1 on the first training step and
        `total_steps` on the last, so a fraction f maps to round(f * total).
        """
        if self.fractional:
            begin = int(math.floor(self.begin * total_steps + 0.5))
            end = max(int(math.floor(self.end * total_steps + 0.5)), begin + 1)
        else:
            begin, end = self.begin, self.end
        frequency = self.frequency or max(1, math.ceil((end - begin) / _TARGET_UPDATES))
        changed = self.steps != (begin, end, frequency)
        self.steps = (begin, end, frequency)
        return changed

    def sparsity_at(self, step):
        """The sparsity the schedule asks for at `step` (a Python float)."""
        begin, end, _ = self.steps
        if self.kind == "constant":
            return self.target_sparsity if step >= begin else 0.0
        progress = min(1.0, max(0.0, (step - begin) / (end - begin)))
        return (
            self.target_sparsity
            + (self.initial_sparsity - self.target_sparsity)
            * (1 - progress) ** self.power
        )

    def last_update_at_or_before(self, step):
        """The last mask-update step <= `step`, or None before `begin`."""
        begin, end, frequency = self.steps
        if step < begin:
            return None
        if step >= end:
            return end
        return begin + (step - begin) // frequency * frequency

    def unreachable_warning(self, start, last):
        """The warning for a run from `start` to step `last` that ends before
        the schedule reaches its target, or None when it does reach it."""
        update = self.last_update_at_or_before(last)
        final = 0.0 if update is None else self.sparsity_at(update)
        if final >= self.target_sparsity - 1e-9:
            return None
        begin, end, _ = self.steps
        reach = begin if self.kind == "constant" else end
        runs = (
            f"this fit runs {last} steps"
            if start == 0
            else f"this fit ends at step {last}"
        )
        return (
            f"pruning reaches {self.target_sparsity:.0%} at step {reach} but "
            f"{runs}; final sparsity would be {final:.0%}. Give prune() "
            "fractional begin/end (e.g. end=0.75) to fit any run length."
        )


UNKNOWN_LENGTH = (
    "Pruning `begin`/`end` are fractions of the run, but this fit does not know "
    "its length (the data set has no known size): pass steps_per_epoch to fit, "
    "or give prune() int steps."
)


def check_schedule(
    target_sparsity, schedule, begin, end, initial_sparsity, frequency, power
):
    """The argument checks of `tfopt.prune`'s schedule, in both Keras worlds."""
    checks.check_real(target_sparsity, "target_sparsity")
    if not 0 < target_sparsity < 1:
        raise ValueError(
            "`target_sparsity` must be in (0, 1). "
            f"Received: target_sparsity={target_sparsity!r}"
        )
    checks.check_choice(schedule, "schedule", KINDS)
    check_steps(begin, end)
    checks.check_real(initial_sparsity, "initial_sparsity")
    if not 0 <= initial_sparsity < target_sparsity:
        raise ValueError(
            "`initial_sparsity` must be in [0, target_sparsity). "
            f"Received: initial_sparsity={initial_sparsity!r}"
        )
    if schedule == "constant" and initial_sparsity:
        raise ValueError(
            "`initial_sparsity` only applies to schedule='polynomial'. "
            f"Received: initial_sparsity={initial_sparsity!r}"
        )
    checks.check_int(frequency, "frequency", minimum=1, optional=True)
    checks.check_real(power, "power")
    if power <= 0:
        raise ValueError(f"`power` must be > 0. Received: power={power!r}")


def check_steps(begin, end):
    for arg, value in (("begin", begin), ("end", end)):
        if checks.is_int(value):
            if value < 0:
                raise ValueError(
                    f"`{arg}` must be >= 0 as a step. Received: {arg}={value!r}"
                )
        elif isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{arg}` must be in [0, 1] as a fraction of the run. "
                    f"Received: {arg}={value!r}"
                )
        else:
            raise TypeError(
                f"`{arg}` must be a float (fraction of the run) or an int "
                f"(optimizer step). Received: {arg}={value!r}"
            )
    if type(begin) is not type(end):
        raise ValueError(
            "`begin` and `end` must both be fractions (floats) or both steps "
            f"(ints); write 0.0, not 0, for a fraction. Received: begin={begin!r}, "
            f"end={end!r}"
        )
    if begin >= end:
        raise ValueError(
            f"`begin` must be before `end`. Received: begin={begin!r}, end={end!r}"
        )
