"""Benchmarks of tfopt against raw TFMOT and plain Keras (filled by the
benchmark issue; reserved so the `tfopt-benchmark` entry point exists)."""

import sys

from absl import app


def main(argv):
    del argv
    sys.exit("tfopt-benchmark is not implemented yet.")


def run():
    """Console entry point `tfopt-benchmark`."""
    app.run(main)


if __name__ == "__main__":
    run()
