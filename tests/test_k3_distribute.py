"""Keras 3 models on two worker processes over 127.0.0.1: the upstream
trainer failures tfopt works around (`tfopt.keras3.fit`), and the same masks and
students as on one process."""

import numpy as np
import pytest

import tfopt
from tests.support import cluster, k3

pytestmark = pytest.mark.slow


def test_keras3_multi_worker_fit_fails_upstream_and_works_with_the_fix():
    # Without the fix Keras 3.15 fails before the first step. When this
    # assertion fails, Keras has fixed its trainer: remove tfopt/keras3/fit.py.
    raw = cluster.run_workers(k3.plain_multi_worker_job, False)
    assert all(isinstance(r, str) and "PerReplica" in r for r in raw), raw
    fixed = cluster.run_workers(k3.plain_multi_worker_job, True)
    single = k3.plain_fit(tfopt.get_strategy("default"), fixed=False)
    (w0, h0), (w1, h1) = fixed
    for a, b, c in zip(single[0], w0, w1, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_array_equal(b, c)
    # Logs are the global values on every worker, as on one process.
    assert h0 == h1
    for name in ("loss", "mae"):
        assert h0[name] == pytest.approx(single[1][name], rel=1e-4)


def test_same_masks_on_two_worker_processes():
    results = cluster.run_workers(k3.pruned_multi_worker_job)
    single = k3.train_pruned(tfopt.get_strategy("default"))
    for worker in results:
        for a, b in zip(single[1], worker[1], strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(single[0], worker[0], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert worker[2]["sparsity"] == pytest.approx(single[2]["sparsity"])


def test_same_distilled_pruned_student_on_two_worker_processes():
    results = cluster.run_workers(k3.distilled_multi_worker_job)
    single, history = k3.train_distilled(tfopt.get_strategy("default"), pruned=True)
    for weights, logged in results:
        for a, b in zip(single, weights, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for name in ("loss", "student_loss", "distillation_loss"):
            assert logged[name] == pytest.approx(history[name], rel=1e-4), name


def test_same_qat_ranges_and_weights_on_two_worker_processes():
    # The batch extremes are gathered over the workers before the moving
    # average, and the trainer fix applies to QAT models.
    results = cluster.run_workers(k3.qat_multi_worker_job)
    single = k3.train_qat(tfopt.get_strategy("default"))
    for worker in results:
        for a, b in zip(single, worker, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_same_taylor_channel_masks_on_two_worker_processes():
    # Each worker scores channels on the batches it was given; the gradients
    # are averaged over workers, so both choose the channels one process does.
    results = cluster.run_workers(k3.channel_pruned_multi_worker_job)
    single = k3.train_channel_pruned(tfopt.get_strategy("default"), importance="taylor")
    for worker in results:
        for a, b in zip(single[0], worker[0], strict=True):
            np.testing.assert_array_equal(a, b)
        for part in (1, 2):
            for a, b in zip(single[part], worker[part], strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
