"""Names that earlier releases had at paths that have since moved: each
public module lists its own, and they resolve, on first use, from where
they live now. Kept for one release; new code imports them from there.

Only the listed names resolve, so a typo still raises `AttributeError`, and
a Keras 3 program that never asks for a tf_keras name never loads tf_keras.
"""

import importlib


def moved(module, names):
    """A module `__getattr__` for `module` (its `__name__`) that reads each of
    `names` ({name: the module that holds it now})."""

    def __getattr__(name):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
