"""Cluster and TPU resolution behind `tfopt.distribute`: TF_CONFIG checked
before TensorFlow reads it, SLURM steps, joining a multi-worker cluster,
parameter-server tasks and the TPU connection boundary."""

import json
import os
import socket
import threading
import urllib.parse

import tensorflow as tf
from absl import logging

# How long the TPU boundary may take before tfopt gives up on it.
_TPU_PROBE_TIMEOUT_S = 10
_TPU_INIT_TIMEOUT_S = 45


def tf_config():
    """Returns the parsed, checked TF_CONFIG, or None when it is unset.

    Returns:
        The TF_CONFIG dict, with `cluster` (job name to `host:port` list) and
        `task` (`type` and `index`), or None.

    Raises:
        ValueError: If TF_CONFIG is set but empty, is not JSON, lacks
            `cluster` or `task`, or names a task type or index that is not in
            the cluster.
    """
    raw = os.environ.get("TF_CONFIG")
    if raw is None:
        return None
    if not raw.strip():
        # TensorFlow's own resolver (inside MirroredStrategy too) fails on
        # it with a bare JSONDecodeError; say it once, the same for all.
        raise ValueError(
            "TF_CONFIG is set but empty. Unset it (`unset TF_CONFIG`) to train "
            "on this machine alone, or set it to the cluster's JSON. "
            f"Received: TF_CONFIG={raw!r}"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"TF_CONFIG must be JSON ({err}). Received: TF_CONFIG={raw!r}"
        ) from err
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(
            'TF_CONFIG must have a "cluster" object mapping job names to lists '
            f'of "host:port". Received: TF_CONFIG={raw!r}'
        )
    cluster, task = config["cluster"], config.get("task")
    for job, hosts in cluster.items():
        if (
            not isinstance(hosts, list)
            or not hosts
            or not all(isinstance(h, str) and ":" in h for h in hosts)
        ):
            raise ValueError(
                f"TF_CONFIG cluster job {job!r} must be a non-empty list of "
                f'"host:port" strings. Received: {job}={hosts!r}'
            )
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(
            'TF_CONFIG must have a "task" object with "type" and "index". '
            f"Received: TF_CONFIG={raw!r}"
        )
    if task["type"] not in cluster:
        raise ValueError(
            f"TF_CONFIG task type must be one of the cluster's jobs "
            f"{sorted(cluster)}. Received: type={task['type']!r}"
        )
    index, size = task.get("index", 0), len(cluster[task["type"]])
    if isinstance(index, bool) or not isinstance(index, int) or not (0 <= index < size):
        raise ValueError(
            f"TF_CONFIG task index must be an int in [0, {size}) for job "
            f"{task['type']!r}. Received: index={index!r}"
        )
    return config


def slurm_tasks():
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0"))
    except ValueError:
        return 0


def count_workers(cluster):
    """The training tasks of a `cluster` dict: its workers and chief."""
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def cluster_workers():
    """The worker count (chief included) TF_CONFIG or the SLURM step names;
    0 when neither describes a cluster."""
    config = tf_config()
    return slurm_tasks() if config is None else count_workers(config["cluster"])


def multi_worker(implementation):
    """Builds the MultiWorkerMirroredStrategy of TF_CONFIG or the SLURM step."""
    config = tf_config()
    if config is None and "SLURM_PROCID" not in os.environ:
        # Refused rather than warned: launched on N machines without a
        # cluster, N processes would each train alone and all write the
        # same --model_dir, with nothing in the output to show it.
        raise ValueError(
            "`name`='multi_worker' needs a cluster: set TF_CONFIG on every "
            "worker, or run the job as a SLURM step (srun). For the devices of "
            "this one machine use 'mirrored'. Received: TF_CONFIG and "
            "SLURM_PROCID unset"
        )
    if config is not None:
        resolver, where = None, f"TF_CONFIG task {config['task']}"
    else:
        # GPU binding is left to SLURM (its CUDA_VISIBLE_DEVICES per task):
        # TensorFlow has enumerated the GPUs by now, so auto_set_gpu is off.
        # The resolver still pairs each task of a node with a GPU slot and
        # drops tasks without one (and divides by zero on CPU nodes):
        # claiming one slot per task of the step keeps every task.
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            gpus_per_node=max(slurm_tasks(), 1),
            gpus_per_task=1,
            auto_set_gpu=False,
        )
        where = f"SLURM task {os.environ['SLURM_PROCID']}"
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation
    )
    logging.info(
        "get_strategy('multi_worker'): joining the cluster as %s; "
        "waits until every worker has started.",
        where,
    )
    joined = threading.Event()
    threading.Thread(target=_note_waiting, args=(joined, where), daemon=True).start()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    except RuntimeError as err:
        if "Collective ops must be configured" not in str(err):
            raise
        raise RuntimeError(
            "get_strategy('multi_worker') must come before anything starts "
            "TensorFlow's runtime (a tensor, a data set, a model, "
            "tf.config.list_logical_devices): its collectives can only be "
            "configured at start-up. Call it at the top of the program, right "
            f"after tfopt.configure_devices. ({err})"
        ) from err
    finally:
        joined.set()


def _note_waiting(joined, where, every=30):
    # TensorFlow waits for missing workers without a word (for up to an
    # hour): say so, so that a worker nobody started is not a silent hang.
    waited = 0
    while not joined.wait(every):
        waited += every
        logging.warning(
            "get_strategy('multi_worker'): %s still waits for the "
            "other workers after %g s; start the same command on "
            "each of them.",
            where,
            waited,
        )


def run_server(*, join=True):
    """Serves this process's worker or ps task of a parameter-server cluster.

    Worker and ps tasks do not train: they start a `tf.distribute.Server`
    from TF_CONFIG and wait for the coordinator (the `chief`).

    Args:
        join: Block until the server stops. Defaults to `True`.

    Returns:
        The started `tf.distribute.Server`.

    Raises:
        ValueError: If TF_CONFIG is unset, malformed, or names a task that
            is not a `worker` or `ps`.
    """
    config = tf_config()
    task = None if config is None else config["task"]
    if task is None or task["type"] not in ("worker", "ps"):
        raise ValueError(
            "run_server needs TF_CONFIG with a 'worker' or 'ps' task. "
            f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
        )
    server = tf.distribute.Server(
        tf.train.ClusterSpec(config["cluster"]),
        job_name=task["type"],
        task_index=task.get("index", 0),
        protocol="grpc",
        start=True,
    )
    if join:
        server.join()
    return server


def _probe(address):
    parts = urllib.parse.urlparse(address)
    try:
        socket.create_connection(
            (parts.hostname, parts.port), timeout=_TPU_PROBE_TIMEOUT_S
        ).close()
    except (OSError, ValueError) as err:
        raise ConnectionError(
            f"Could not reach the TPU at tpu={address!r} ({err}). Check that "
            "the TPU is running and its address and port (usually 8470) are "
            "right, and that this machine's network and firewall allow it."
        ) from err


def connect_tpu(tpu):
    """Connects to and initializes the TPU at `tpu`; returns a TPUStrategy."""
    if tpu.startswith("grpc://"):
        _probe(tpu)
    outcome = {}

    def connect():
        # A TPU that accepts the connection but never answers would hang
        # TensorFlow forever: run it aside and stop waiting after a while.
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            outcome["strategy"] = tf.distribute.TPUStrategy(resolver)
        except Exception as err:  # noqa: BLE001 - re-raised below with context
            outcome["error"] = err

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_TPU_INIT_TIMEOUT_S)
    if thread.is_alive():
        raise ConnectionError(
            f"The TPU at tpu={tpu!r} did not answer within "
            f"{_TPU_INIT_TIMEOUT_S} s. Check that it is running, healthy and "
            "runs the same TensorFlow version as this machine."
        )
    if "error" in outcome:
        err = outcome["error"]
        where = (
            "this machine has no TPU: run on a Cloud TPU VM with "
            "tensorflow-tpu and libtpu installed, or pass the TPU's name "
            "or grpc:// address"
            if tpu == "local"
            else "check the TPU's name, zone and project (a name is looked up "
            "through the Cloud TPU API from a GCE VM), or pass grpc://host:port"
        )
        raise ConnectionError(
            f"Could not connect to the TPU at tpu={tpu!r} "
            f"({type(err).__name__}: {str(err).strip()[:300]}). {where}."
        ) from err
    return outcome["strategy"]
