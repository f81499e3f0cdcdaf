"""`attribnet bench perf` end to end: real gateway + node processes, measured beside N full models."""

from __future__ import annotations

import json


def test_bench_perf_writes_json_and_markdown(tmp_path, capsys):
    from attribnet.cli import main

    out = tmp_path / "perf"
    code = main([
        "bench", "perf", "--out", str(out), "--nodes", "2", "--image-size", "32", "--batch-sizes", "1", "4",
        "--repeats", "3", "--warmup", "1", "--concurrency", "2",
    ])
    assert code == 0
    report = json.loads((out / "perf.json").read_text())
    assert report["nodes"] == 2 and [row["batch"] for row in report["latency"]] == [1, 4]
    for row in report["latency"]:
        for variant in ("network", "shared_local", "full_models"):
            assert 0 < row[variant]["median_ms"] <= row[variant]["p90_ms"] * 1.0001
        assert row["network_vs_full"] == row["network"]["median_ms"] / row["full_models"]["median_ms"]
    assert report["network_concurrent"]["requests"] == 6 and report["network_concurrent"]["images_per_s"] > 0
    markdown = (out / "BENCHMARKS.md").read_text()
    assert "| 4 |" in markdown and "network / full" in markdown
    assert "BENCHMARKS" not in capsys.readouterr().err
    # the servers shut down cleanly on SIGTERM
    for log_file in (out / "network").glob("*.log"):
        assert "Traceback" not in log_file.read_text(), log_file
