"""The layout is part of the contract: dependencies point one way (core <-
keras2 | keras3 <- front <- job), nothing imports in a loop, the core and
the Keras 3 package stay free of the Kerases they must not load, and
modules stay small."""

import pytest

from tests.support import imports

GRAPH = imports.edges()
KERASES = {"keras", "tf_keras", "tensorflow_model_optimization"}


def test_no_import_loops():
    assert imports.cycles(GRAPH) == []


def test_no_import_runs_up_the_layers_or_across_kerases():
    assert imports.upward(GRAPH) == []


def test_the_longest_import_chain_is_short():
    # job -> front -> keras2 -> core: a handful of hops, not 15. The old
    # paths (re-exports of job modules) add one hop and are not counted.
    modules = {n: t for n, t in GRAPH.items() if n not in imports.ALIASES}
    assert imports.longest_chain(modules) <= 11


@pytest.mark.parametrize(
    "name", [n for n in imports.modules() if imports.layer(n) == "core"]
)
def test_the_core_imports_no_keras(name):
    assert not imports.external(name) & KERASES


@pytest.mark.parametrize("name", [n for n in imports.modules() if ".keras3" in n])
def test_the_keras3_package_never_loads_tf_keras_or_tfmot(name):
    assert not imports.external(name) & {"tf_keras", "tensorflow_model_optimization"}


@pytest.mark.parametrize("name", sorted(imports.modules()))
def test_modules_stay_under_400_lines(name):
    lines = imports.modules()[name].read_text().count("\n")
    assert lines <= 400, f"{name} has {lines} lines"


def test_the_library_never_imports_the_job():
    job = {n for n in GRAPH if imports.layer(n) == "job"}
    for name, targets in GRAPH.items():
        if imports.layer(name) in ("core", "keras", "front"):
            assert not targets & job, name
