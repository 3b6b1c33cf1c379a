"""Keras-neutral core: what both Kerases share. Nothing here imports a
Keras (TensorFlow only where a TFLite file or a tensor needs it)."""


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
