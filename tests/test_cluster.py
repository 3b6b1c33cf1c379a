"""The multi-process helpers that other tests rely on must report failures."""

import os

import pytest

from tests.support import cluster


def _echo_task():
    import json

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return task["type"], task["index"]


def _crash_on_worker_1():
    import json

    if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
        raise ZeroDivisionError("worker 1 broke")
    import time

    time.sleep(60)  # worker 0 would wait on its peer forever


def _hang():
    import time

    time.sleep(60)


def test_each_worker_gets_its_own_task():
    assert cluster.run_workers(_echo_task) == [("worker", 0), ("worker", 1)]


@pytest.mark.slow
def test_a_crash_is_reported_with_its_traceback_without_waiting():
    with pytest.raises(cluster.WorkerError) as info:
        cluster.run_workers(_crash_on_worker_1, timeout=50)
    message = str(info.value)
    assert "process 1 raised:\nTraceback (most recent call last):" in message
    assert "ZeroDivisionError: worker 1 broke" in message


@pytest.mark.slow
def test_a_hang_times_out():
    with pytest.raises(cluster.WorkerError, match="the cluster timed out after 2 s"):
        cluster.run_processes(_hang, [{}], timeout=2)


def test_ports_are_distinct():
    ports = cluster.free_ports(4)
    assert len(set(ports)) == 4
