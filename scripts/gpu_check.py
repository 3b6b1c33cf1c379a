"""The prepared GPU check: everything tfopt claims for GPUs, in one run that
writes one results file (`make gpu-check`, under 8 minutes on one GPU).

    python scripts/gpu_check.py --output=gpu_check.json

It runs, each in a process of its own with a time limit:
  1. the `gpu`-marked tests,
  2. scripts/train.py on one GPU with --mixed_precision=mixed_float16 and
     memory growth (teacher, distillation + pruning, QAT, int8 export),
  3. scripts/train.py mirrored over all GPUs,
  4. scripts/benchmark.py's overhead and inference suites,
and records the card, each step's exit code, wall time and the end of its
output, the two reports and the benchmark's JSON. It exits non-zero if any
step failed, and at once, before any work, where TensorFlow sees no GPU.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Guarded like benchmark.py's: both define --output, and the test suite
# imports scripts side by side.
if "work_dir" not in flags.FLAGS:
    flags.DEFINE_string("output", "gpu_check.json", "Where the results go.")
    flags.DEFINE_string(
        "work_dir", None, "Where the runs write (default: a new temporary directory)."
    )
FLAGS = flags.FLAGS

TRAIN = [
    "--dataset=mnist5k",
    "--teacher=train",
    "--prune",
    "--qat",
    "--epochs=2",
    "--teacher_epochs=2",
    "--qat_epochs=1",
    "--batch_size=128",
]
# (name, command after `python`, time limit in seconds): 450 s in all.
STEPS = (
    ("gpu_tests", ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], 90),
    (
        "train_one_gpu",
        [
            "scripts/train.py",
            "--strategy=one_device",
            "--mixed_precision=mixed_float16",
            "--memory_growth",
            *TRAIN,
        ],
        120,
    ),
    (
        "train_mirrored",
        ["scripts/train.py", "--strategy=mirrored", "--memory_growth", *TRAIN],
        120,
    ),
    ("benchmark", ["scripts/benchmark.py", "--suite=overhead,inference"], 120),
)


def _gpus():
    """The GPUs TensorFlow sees, with their names, in a process of its own
    (so this one never initializes CUDA)."""
    code = (
        "import json, tensorflow as tf; print(json.dumps([tf.config.experimental"
        ".get_device_details(g) for g in tf.config.list_physical_devices('GPU')]"
        ", default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=120,
    )
    if out.returncode:
        sys.exit(f"error: TensorFlow did not start here: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(name, args, limit, work):
    extra = {
        "train_one_gpu": [f"--model_dir={os.path.join(work, 'one_gpu')}"],
        "train_mirrored": [f"--model_dir={os.path.join(work, 'mirrored')}"],
        "benchmark": [f"--output={os.path.join(work, 'benchmark.json')}"],
    }
    command = [sys.executable, *args, *extra.get(name, [])]
    print(f"gpu_check: {name} ({limit} s at most)", flush=True)
    start = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=limit,
            env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code = "timeout"
        output = (err.stdout or b"").decode(errors="replace") + (
            err.stderr or b""
        ).decode(errors="replace")
    seconds = round(time.monotonic() - start, 1)
    print(f"gpu_check: {name}: exit {code} after {seconds} s", flush=True)
    return {
        "name": name,
        "command": command[1:],
        "exit": code,
        "seconds": seconds,
        "output_tail": output[-4000:],
    }


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    gpus = _gpus()
    if not gpus:
        sys.exit(
            "error: TensorFlow sees no GPU here, so there is nothing to check. "
            "Run this on a CUDA machine after `pip install "
            "'tensorflow[and-cuda]==2.21.*'` (make gpu-check does that)."
        )
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="tfopt-gpu-check-")
    results = {"gpus": gpus, "work_dir": work, "steps": []}
    for name, args, limit in STEPS:
        results["steps"].append(_run(name, args, limit, work))
    results["reports"] = {
        name: _read(os.path.join(work, name, "report.json"))
        for name in ("one_gpu", "mirrored")
    }
    results["benchmark"] = _read(os.path.join(work, "benchmark.json"))
    with open(FLAGS.output, "w") as file:
        json.dump(results, file, indent=2)
    failed = [s["name"] for s in results["steps"] if s["exit"] != 0]
    print(
        f"gpu_check: results in {FLAGS.output}; "
        + (f"FAILED: {', '.join(failed)}" if failed else "all steps passed")
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
