"""The main job (`scripts/train.py`): settings, flags, the recipe, the
report. It uses the library; the library never imports it."""


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
