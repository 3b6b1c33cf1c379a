"""The report is a pure function of its rows and environment."""

from tfopt.job import report

ROWS = [
    {
        "artifact": "teacher",
        "accuracy": 0.95,
        "accuracy_delta": 0.0,
        "params": 120000,
        "macs": 3200000,
        "nonzero_params": 120000,
        "size_bytes": 500000,
        "gzip_bytes": 450000,
        "gzip_ratio": 1.0,
        "latency_ms_per_example": None,
    },
    {
        "artifact": "tflite_int8",
        "accuracy": 0.9325,
        "accuracy_delta": -0.0175,
        "params": 20490,
        "nonzero_params": 4145,
        "size_bytes": 26080,
        "gzip_bytes": 9058,
        "gzip_ratio": 49.68,
        "latency_ms_per_example": 0.0061,
    },
]
ENV = {
    "strategy": "mirrored",
    "replicas": 2,
    "workers": 1,
    "task": None,
    "versions": {"tensorflow": "2.21.0", "tfopt": "0.1.0"},
    "stage_seconds": {"teacher": 12.345, "total": 30.0},
    "command": "scripts/train.py --teacher=train",
}


def test_markdown_rows():
    assert report.markdown(ROWS).splitlines() == [
        "| artifact | accuracy | Δ accuracy | params | MACs | non-zero | size | "
        "gzipped | gzip ratio | latency/example |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| teacher | 0.9500 | +0.0000 | 120,000 | 3,200,000 | 120,000 | 500,000 B "
        "| 450,000 B | 1.00x | - |",
        "| tflite_int8 | 0.9325 | -0.0175 | 20,490 | - | 4,145 | 26,080 B | "
        "9,058 B | 49.68x | 6.1 µs |",
    ]


SPEED = [
    {
        "model": "dense",
        "params": 6090,
        "macs": 84224,
        "float32_ms": {"1": 0.5, "2": 0.3},
        "int8_ms": {"1": 0.2, "2": 0.12},
    },
    {
        "model": "shrunk",
        "params": 1898,
        "macs": 23680,
        "float32_ms": {"1": 0.25, "2": 0.2},
        "int8_ms": {"1": 0.16, "2": 0.1},
    },
]


def test_speed_rows_show_each_speed_up_over_the_dense_model():
    assert report.speed_markdown(SPEED).splitlines() == [
        "| model | params | MACs | float32 1 thread | float32 2 threads | "
        "int8 1 thread | int8 2 threads |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| dense | 6,090 | 84,224 | 0.500 ms | 0.300 ms | 0.200 ms | 0.120 ms |",
        "| shrunk | 1,898 | 23,680 | 0.250 ms (2.00x) | 0.200 ms (1.50x) | "
        "0.160 ms (1.25x) | 0.100 ms (1.20x) |",
    ]
    text = report.render("student_cnn on digits", ROWS, ENV, SPEED)
    assert (
        "\n\n## Speed (TFLite, batch 1, median ms per example; speed-up over "
        "the dense model)\n\n| model | params | MACs |" in text
    )
    assert "## Speed" not in report.render("student_cnn on digits", ROWS, ENV)


def test_render_is_the_whole_report():
    text = report.render("student_cnn on mnist5k", ROWS, ENV)
    assert text.startswith("# tfopt report: student_cnn on mnist5k\n\n| artifact |")
    assert text.endswith(
        "## Where it ran\n\n"
        "- strategy: mirrored, 2 replica(s) on 1 worker(s)\n"
        "- versions: tensorflow 2.21.0, tfopt 0.1.0\n"
        "- wall time: teacher 12.3 s, total 30.0 s\n"
        "- command: `scripts/train.py --teacher=train`\n"
    )
    assert report.render("student_cnn on mnist5k", ROWS, ENV) == text
