import gzip
import json
import math

import pytest

from scripts import benchmark


def test_median_ratio():
    assert benchmark.median_ratio([1.0, 9.0, 2.0], [1.0, 1.0, 4.0]) == 2.0
    assert benchmark.median_ratio([3.0], [2.0]) == 1.5


def test_gzip_size_of_a_file_and_a_directory(tmp_path):
    data = b"tfopt " * 1000
    (tmp_path / "a").write_bytes(data)
    expected = len(gzip.compress(data, compresslevel=9))
    assert benchmark.gzip_size(str(tmp_path / "a")) == expected
    (tmp_path / "b").write_bytes(data)
    assert benchmark.gzip_size(str(tmp_path)) == 2 * expected


def test_interleaved_alternates_after_a_warm_up():
    calls = []
    times = benchmark.interleaved({"a": lambda: calls.append("a"),
                                   "b": lambda: calls.append("b")}, rounds=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]


def _finite(value):
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


@pytest.mark.slow
def test_quick_run_has_every_section_with_finite_numbers(tmp_path):
    output = tmp_path / "benchmark.json"
    results = benchmark.collect(benchmark.SUITES, quick=True, output=str(output))
    saved = json.loads(output.read_text())
    for suite in benchmark.SUITES:
        assert saved[suite], suite
    assert _finite(saved)
    assert set(saved["compression"]) == {"baseline", "pruned_80", "pruned_90",
                                         "pruned_2_4", "qat"}
    assert saved["compression"]["pruned_80"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    metrics = [row[0] for row in saved["checks"]]
    assert "overhead/tfmot_mnist/tfopt_prune_vs_tfmot" in metrics
    assert "parity/qat_max_abs_diff" in metrics
    table = benchmark.markdown(results)
    assert table.startswith("| metric | measured | target | met |")
