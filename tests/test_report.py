"""The report is a pure function of its rows and environment."""

from tfopt import report

ROWS = [
    {"artifact": "teacher", "accuracy": 0.95, "accuracy_delta": 0.0,
     "params": 120000, "nonzero_params": 120000, "size_bytes": 500000,
     "gzip_bytes": 450000, "gzip_ratio": 1.0, "latency_ms_per_example": None},
    {"artifact": "tflite_int8", "accuracy": 0.9325, "accuracy_delta": -0.0175,
     "params": 20490, "nonzero_params": 4145, "size_bytes": 26080,
     "gzip_bytes": 9058, "gzip_ratio": 49.68, "latency_ms_per_example": 0.0061},
]
ENV = {"strategy": "mirrored", "replicas": 2, "workers": 1, "task": None,
       "versions": {"tensorflow": "2.21.0", "tfopt": "0.1.0"},
       "stage_seconds": {"teacher": 12.345, "total": 30.0},
       "command": "scripts/train.py --teacher=train"}


def test_markdown_rows():
    assert report.markdown(ROWS).splitlines() == [
        "| artifact | accuracy | Δ accuracy | params | non-zero | size | gzipped "
        "| gzip ratio | latency/example |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| teacher | 0.9500 | +0.0000 | 120,000 | 120,000 | 500,000 B | 450,000 B "
        "| 1.00x | - |",
        "| tflite_int8 | 0.9325 | -0.0175 | 20,490 | 4,145 | 26,080 B | 9,058 B "
        "| 49.68x | 6.1 µs |",
    ]


def test_render_is_the_whole_report():
    text = report.render("student_cnn on mnist5k", ROWS, ENV)
    assert text.startswith("# tfopt report: student_cnn on mnist5k\n\n| artifact |")
    assert text.endswith(
        "## Where it ran\n\n"
        "- strategy: mirrored, 2 replica(s) on 1 worker(s)\n"
        "- versions: tensorflow 2.21.0, tfopt 0.1.0\n"
        "- wall time: teacher 12.3 s, total 30.0 s\n"
        "- command: `scripts/train.py --teacher=train`\n")
    assert report.render("student_cnn on mnist5k", ROWS, ENV) == text
