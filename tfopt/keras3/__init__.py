"""Keras 3 (the `keras` package), tfopt's own code: pruning, distillation,
export, fit. Nothing here imports tf_keras or TFMOT."""


def __getattr__(name):
    # `tfopt.PKG.module` without importing each module first.
    import importlib

    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = module
    return module
