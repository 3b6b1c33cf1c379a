"""Run a function in real local processes: a multi-worker cluster on
127.0.0.1, or one process with a chosen environment.

    results = run_workers(train_fn, 42)          # 2 workers, TF_CONFIG set
    [result] = run_processes(fn, [{"SLURM_PROCID": "0", ...}])

`fn` must be a module-level function of an importable module (the child
imports it by name); its arguments and return value must pickle. A worker
that raises is reported with its traceback; a cluster that does not finish
within `timeout` seconds is killed and reported with what each process
printed.
"""

import importlib
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerError(RuntimeError):
    """A process of the cluster failed; the message holds its traceback."""


def free_ports(count):
    """Returns `count` distinct TCP ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_envs(jobs):
    """One TF_CONFIG environment per task of `jobs` ({"worker": 2, ...})."""
    ports = iter(free_ports(sum(jobs.values())))
    cluster = {
        job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items()
    }
    return [
        {
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": job, "index": i}}
            )
        }
        for job, n in jobs.items()
        for i in range(n)
    ]


def run_processes(fn, envs, *args, timeout=240, wait=None):
    """Runs `fn(*args)` once per environment in `envs`, all at once.

    `wait` lists the processes whose results count (default: all); the
    others (parameter servers, which never return) are killed once those
    have finished.

    Returns:
        The return values of the `wait` processes, in order.

    Raises:
        WorkerError: If a process raised, died or timed out.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "call.pkl").write_bytes(
            pickle.dumps((fn.__module__, fn.__qualname__, args))
        )
        procs = []
        for rank, extra in enumerate(envs):
            # A TF_CONFIG of the test process must not leak into a child.
            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)
            log = open(tmp / f"{rank}.log", "w")  # noqa: SIM115
            procs.append(
                (
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.support.cluster",
                            str(tmp),
                            str(rank),
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
        wait = list(range(len(envs)) if wait is None else wait)
        failures = []
        deadline = time.monotonic() + timeout
        while not all(procs[rank][0].poll() is not None for rank in wait):
            if time.monotonic() > deadline:
                failures.append(f"the cluster timed out after {timeout} s")
                break
            if any(_failed(tmp, rank, proc) for rank, (proc, _) in enumerate(procs)):
                # One process died: the others would wait on it forever in
                # their collectives. Give them a moment to report, then stop.
                time.sleep(3)
                break
            time.sleep(0.2)
        failures += [
            f"process {rank} (not awaited) failed; its output ends:\n"
            + (tmp / f"{rank}.log").read_text()[-3000:]
            for rank, (proc, _) in enumerate(procs)
            if rank not in wait and _failed(tmp, rank, proc)
        ]
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        results = []
        for rank in wait:
            proc = procs[rank][0]
            out = tmp / f"{rank}.out"
            if out.exists():
                ok, value = pickle.loads(out.read_bytes())
                if ok:
                    results.append(value)
                    continue
                failures.append(f"process {rank} raised:\n{value}")
            else:
                tail = (tmp / f"{rank}.log").read_text()[-3000:]
                failures.append(
                    f"process {rank} exited {proc.returncode} with no "
                    f"result; its output ends:\n{tail}"
                )
        if failures:
            raise WorkerError("\n\n".join(failures))
        return results


def _failed(tmp, rank, proc):
    if proc.poll() is None:
        return False
    out = tmp / f"{rank}.out"
    return not out.exists() or not pickle.loads(out.read_bytes())[0]


def run_workers(fn, *args, num_workers=2, timeout=240):
    """Runs `fn(*args)` on each worker of a local MultiWorker cluster."""
    return run_processes(
        fn, cluster_envs({"worker": num_workers}), *args, timeout=timeout
    )


def start_script(script, args, envs, log_dir, extra=None):
    """Starts `python scripts/{script}.py *args` once per environment in
    `envs` (each process's output goes to `log_dir/{rank}.log`), with
    `extra[rank]` arguments added where given.

    Returns:
        The `subprocess.Popen` objects, in order.
    """
    procs = []
    for rank, task_env in enumerate(envs):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **task_env)
        with open(Path(log_dir) / f"{rank}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        f"scripts/{script}.py",
                        *args,
                        *(extra or {}).get(rank, []),
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_all(procs, log_dir, timeout):
    """Waits for `procs`; returns their exit codes and outputs. Kills them
    all if they take longer than `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
                other.wait()
    return (
        [proc.returncode for proc in procs],
        [(Path(log_dir) / f"{rank}.log").read_text() for rank in range(len(procs))],
    )


def _child(tmp, rank):
    import traceback

    module, qualname, args = pickle.loads((tmp / "call.pkl").read_bytes())
    try:
        value = (True, getattr(importlib.import_module(module), qualname)(*args))
    except BaseException:  # report everything, including SystemExit
        value = (False, traceback.format_exc())
    (tmp / f"{rank}.out").write_bytes(pickle.dumps(value))
    # Collective ops threads may keep a finished worker alive: leave now.
    os._exit(0)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), sys.argv[2])
