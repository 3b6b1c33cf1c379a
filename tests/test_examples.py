"""The README's quickstart must keep running."""

import subprocess
import sys

from tests.cluster import ROOT


def test_quickstart_runs_and_reports_accuracy():
    result = subprocess.run([sys.executable, "examples/quickstart.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("mnist5k: 3600 training images, 20,410 parameters, "
                           "test accuracy 0.")
    assert float(line.rsplit(" ", 1)[1]) > 0.7
