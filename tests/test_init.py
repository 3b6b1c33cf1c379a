import importlib

import tfopt


def test_every_public_name_imports():
    module = importlib.import_module("tfopt")
    for name in tfopt.__all__:
        assert getattr(module, name) is not None, name


def test_version_is_a_release_string():
    major, minor, patch = tfopt.__version__.split(".")
    assert all(part.isdigit() for part in (major, minor, patch))
