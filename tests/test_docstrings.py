"""The `>>>` examples in docstrings are part of the contract: run them."""

import doctest
import importlib

import pytest

MODULES = [
    "tfopt.channels",
    "tfopt.core.sparsity",
    "tfopt.data",
    "tfopt.devices",
    "tfopt.distillation",
    "tfopt.distribute",
    "tfopt.export",
    "tfopt.keras2.binding",
    "tfopt.keras2.channels",
    "tfopt.keras2.distillation",
    "tfopt.keras2.export",
    "tfopt.keras2.pruning",
    "tfopt.keras2.quantization",
    "tfopt.keras2.shrink",
    "tfopt.models",
    "tfopt.pruning",
    "tfopt.quantization",
    "tfopt.replicas",
    "tfopt.job.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0
