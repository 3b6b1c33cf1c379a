"""TFLite latency at batch 1, measured so that files can be compared: every
file and thread count gets its own interpreter, the rounds interleave them
(a noisy machine slows all of them alike, not one), and the median of the
rounds is reported."""

import statistics
import time

import numpy as np

from tfopt.core import tflite

THREADS = (1, 2)


def _prepared(path, threads):
    interpreter = tflite.open_interpreter(path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    shape = [1, *detail["shape"][1:]]
    if list(detail["shape"]) != shape:
        interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 1, shape).astype("float32")
    interpreter.set_tensor(detail["index"], tflite.to_input(x, detail))
    return interpreter


def latencies(paths, *, threads=THREADS, rounds=15, invokes=10, warmup=3):
    """Median milliseconds per batch-1 invoke of each file at each thread
    count: {path: {threads: ms}}."""
    runners = {(path, t): _prepared(path, t) for path in paths for t in threads}
    for interpreter in runners.values():
        for _ in range(warmup):
            interpreter.invoke()
    times = {key: [] for key in runners}
    for _ in range(rounds):
        for key, interpreter in runners.items():
            start = time.perf_counter()
            for _ in range(invokes):
                interpreter.invoke()
            times[key].append((time.perf_counter() - start) * 1000 / invokes)
    result = {path: {} for path in paths}
    for (path, t), values in times.items():
        result[path][t] = statistics.median(values)
    return result
