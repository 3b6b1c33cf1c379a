"""The report of a compress run: one row per artifact (accuracy on the test
split, parameters, multiply-accumulates, non-zero parameters, file and
gzipped size, TFLite latency per example), and for channel pruning the
speed of the dense and the shrunk model (batch-1 TFLite latency, float32 and
int8, 1 and 2 threads), as `report.json`, `report.md` and `report.png`.

Rendering only: the rows are measured by `tfopt.job.measure`."""

import io
import json
import os

THREADS = ("1", "2")  # the thread counts of the speed rows (core.speed.THREADS)

__all__ = ["COLUMNS", "markdown", "render", "speed_markdown", "write"]

COLUMNS = (
    "artifact",
    "accuracy",
    "accuracy_delta",
    "params",
    "macs",
    "nonzero_params",
    "size_bytes",
    "gzip_bytes",
    "gzip_ratio",
    "latency_ms_per_example",
)
# With `Config.dense_control`, every row also has `control_delta`: its
# accuracy minus the dense control's (`markdown` shows it when present).


def markdown(rows):
    """The rows as a markdown table."""
    header = (
        "artifact",
        "accuracy",
        "Δ accuracy",
        "params",
        "MACs",
        "non-zero",
        "size",
        "gzipped",
        "gzip ratio",
        "latency/example",
    )
    # With a dense control (`Config.dense_control`): Δ against it too.
    control = any("control_delta" in r for r in rows)
    if control:
        header = (*header[:3], "Δ vs control", *header[3:])
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in rows:
        latency = r["latency_ms_per_example"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["artifact"],
                    f"{r['accuracy']:.4f}",
                    f"{r['accuracy_delta']:+.4f}",
                    *([f"{r['control_delta']:+.4f}"] if control else []),
                    f"{r['params']:,}",
                    "-" if r.get("macs") is None else f"{r['macs']:,}",
                    f"{r['nonzero_params']:,}",
                    f"{r['size_bytes']:,} B",
                    f"{r['gzip_bytes']:,} B",
                    f"{r['gzip_ratio']:.2f}x",
                    "-" if latency is None else f"{latency * 1000:.1f} µs",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def speed_markdown(rows):
    """The speed rows as a table, each model's speed-up over the first."""
    keys = [(kind, str(t)) for kind in ("float32", "int8") for t in THREADS]
    header = ["model", "params", "MACs"] + [
        f"{kind} {t} thread{'s' * (t != '1')}" for kind, t in keys
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    base = rows[0]
    for r in rows:
        cells = [r["model"], f"{r['params']:,}", f"{r['macs']:,}"]
        for kind, t in keys:
            ms = r[f"{kind}_ms"][t]
            cells.append(
                f"{ms:.3f} ms"
                + ("" if r is base else f" ({base[f'{kind}_ms'][t] / ms:.2f}x)")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _where(env):
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in env["stage_seconds"].items())
    task = f", report by {env['task']}" if env["task"] else ""
    return "\n".join(
        [
            "## Where it ran",
            "",
            f"- strategy: {env['strategy']}, {env['replicas']} replica(s) on "
            f"{env['workers']} worker(s){task}",
            f"- versions: {versions}",
            f"- wall time: {stages}",
            f"- command: `{env['command']}`",
            "",
        ]
    )


def _plot(rows, path):  # a path or a binary file
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for index, r in enumerate(rows):
        axes.scatter(r["gzip_bytes"], 100 * r["accuracy"])
        # Alternate label sides: neighbouring artifacts often share accuracy.
        axes.annotate(
            r["artifact"],
            (r["gzip_bytes"], 100 * r["accuracy"]),
            textcoords="offset points",
            fontsize=8,
            xytext=(5, 6 if index % 2 else -12),
        )
    axes.set_xscale("log")
    axes.set_xlabel("gzipped size (bytes, log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("Accuracy against size")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    pyplot.close(figure)


def write(directory, *, title, rows, env, settings, dataset, speed=None):
    """Writes report.json (rows, settings, data set, environment, speed),
    report.md and report.png under `directory`; returns report.md's text."""
    import tensorflow as tf  # here: rendering needs no TensorFlow

    # Through tf.io.gfile: `directory` may be on gs://.
    content = {
        "settings": settings,
        "dataset": dataset,
        "environment": env,
        "rows": rows,
        "speed": speed,
    }
    with tf.io.gfile.GFile(os.path.join(directory, "report.json"), "w") as file:
        file.write(json.dumps(content, indent=2))
    text = render(title, rows, env, speed)
    with tf.io.gfile.GFile(os.path.join(directory, "report.md"), "w") as file:
        file.write(text)
    image = io.BytesIO()
    _plot(rows, image)
    with tf.io.gfile.GFile(os.path.join(directory, "report.png"), "wb") as file:
        file.write(image.getvalue())
    return text


def render(title, rows, env, speed_rows=None):
    """The markdown report: a pure function of its values."""
    timed = (
        ""
        if not speed_rows
        else (
            "## Speed (TFLite, batch 1, median ms per example; speed-up over the "
            f"dense model)\n\n{speed_markdown(speed_rows)}\n\n"
        )
    )
    return f"# tfopt report: {title}\n\n{markdown(rows)}\n\n{timed}{_where(env)}"
