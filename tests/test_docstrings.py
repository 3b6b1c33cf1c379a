"""The `>>>` examples in docstrings are part of the contract: run them."""

import doctest
import importlib

import pytest

MODULES = ["tfopt._channels", "tfopt._keras", "tfopt._sparsity", "tfopt.data",
           "tfopt.devices", "tfopt.distillation",
           "tfopt.distribute", "tfopt.export", "tfopt.models", "tfopt.pruning",
           "tfopt.quantization", "tfopt.report"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
