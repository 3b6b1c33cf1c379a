"""The field machinery of the main job's `Config`: each field carries its
default, help text, kind and allowed values, from which `tfopt.job.flags`
makes the flags and `check` the first checks. No TensorFlow."""

import dataclasses
import re

__all__ = ["ConfigError", "field", "check", "parse_m_by_n"]


class ConfigError(ValueError):
    """A setting that cannot work, found before any training. The message
    names fields as `field` (or `field=value`)."""

    def for_flags(self):
        """The message with each `field` of `Config` written as the flag
        --field (other quoted names, e.g. a library function's arguments,
        stay as they are)."""
        return re.sub(
            r"`([a-z_0-9]+)(=[^`]*)?`",
            lambda m: f"--{m[1]}{m[2] or ''}" if m[1] in NAMES else m[0],
            str(self),
        )


# The names of `Config`'s fields (`tfopt.job.config` adds them).
NAMES = set()


def field(default, help, kind, *, choices=None, low=None, high=None, alias=None):
    """A `Config` field: its default, help text, kind (one of `KINDS`) and
    limits."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "kind": kind,
            "choices": choices,
            "low": low,
            "high": high,
            "alias": alias,
        },
    )


def parse_m_by_n(text):
    """(m, n) from '2:4' (0 < m < n), else None."""
    parts = text.split(":") if isinstance(text, str) else ()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    m, n = map(int, parts)
    return (m, n) if 0 < m < n else None


_TYPES = {
    "string": str,
    "enum": str,
    "integer": int,
    "float": (int, float),
    "bool": bool,
    "list": (tuple, list),
}
KINDS = {
    "string": "a string",
    "enum": "a string",
    "integer": "an int",
    "float": "a number",
    "bool": "a bool",
    "list": "a tuple of names",
}


def check(field, value):
    """Raises `ConfigError` for a value of the wrong type or out of the
    field's choices and limits."""
    meta = field.metadata
    if value is None and field.default is None:
        return
    kind, name = meta["kind"], field.name
    if not isinstance(value, _TYPES[kind]) or (
        kind in ("integer", "float") and isinstance(value, bool)
    ):
        raise ConfigError(f"`{name}={value!r}` must be {KINDS[kind]}.")
    items = value if kind == "list" else [value]
    if meta["choices"] is not None:
        for item in items:
            if item not in meta["choices"]:
                raise ConfigError(
                    f"`{name}={item}` must be one of {', '.join(meta['choices'])}."
                )
    if meta["low"] is not None and value < meta["low"]:
        raise ConfigError(f"`{name}={value}` must be at least {meta['low']}.")
    if meta["high"] is not None and value > meta["high"]:
        raise ConfigError(f"`{name}={value}` must be at most {meta['high']}.")
