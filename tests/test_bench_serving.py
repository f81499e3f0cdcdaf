"""`attribnet bench serving` end to end on tiny settings: real gateway + node processes, the load
generator, the in-process limit, head vs full-model training, and the report's interface."""

from __future__ import annotations

import json

from tests.network_support import write_yaml


def test_bench_serving_writes_the_report_the_checks_read(tmp_path, capsys):
    from attribnet.cli import main

    config = write_yaml(tmp_path / "bench.yaml", {
        "image_size": 32, "nodes": [2], "clients": [2], "batches": [1, 3], "repeats": 1, "seconds": 1.0,
        "warmup_seconds": 0.5, "images": 16, "in_process_batch": 8, "open_loop_images_per_s": 20,
        "transfer": {"per_source": 30, "primary": {"epochs": 2, "batch_size": 16, "min_epochs": 1},
                     "train": {"epochs": 2, "batch_size": 16, "min_epochs": 1}},
    })
    document = tmp_path / "BENCHMARKS.md"
    document.write_text("# Benchmarks\n\nintro\n\n<!-- bench-serving:begin -->\nold\n<!-- bench-serving:end -->\n\nperf\n")
    out = tmp_path / "out"
    assert main(["bench", "serving", "--config", str(config), "--out", str(out), "--benchmarks-md", str(document),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "serving.json").read_text())
    assert printed == report
    assert [row["nodes"] for row in report["in_process"]] == [2]
    assert all(row["images_per_s"] > 0 for row in report["in_process"])
    points = {(row["nodes"], row["clients"], row["batch"]) for row in report["network"]}
    assert points == {(2, 2, 1), (2, 2, 3)}
    for row in report["network"]:
        assert row["errors"] == 0 and row["images_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["profile"]["mean_trunk_batch"] >= 1 and row["profile"]["cpu_ms_per_image"]["gateway"] > 0
    assert [row["nodes"] for row in report["open_loop"]] == [2]
    assert all(row["errors"] == 0 and row["p99_ms"] > 0 for row in report["open_loop"])
    transfer = report["transfer"]
    assert {"head_train_s", "full_train_s", "head_accuracy", "full_accuracy", "head_seconds_to_target"} <= set(transfer)
    assert 0 <= transfer["head_accuracy"] <= 1 and transfer["head_train_s"] > 0
    assert any(t["target"].startswith("head within 1 point") for t in report["targets"])
    text = document.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.endswith("\n\nperf\n") and "old" not in text
    assert "| 2 | 2 | 3 |" in text and "**Transfer**" in text
    for log_file in out.glob("work/network-*/*.log"):
        assert "Traceback" not in log_file.read_text(), log_file


def test_bench_serving_slow_node_reports_both_phases_side_by_side(tmp_path, capsys):
    """`--slow-node`: honest latency without and with one late node, from real processes; the late node
    costs its strikes (node_slow_strikes) and is missing from every answer, never an error."""
    from attribnet.cli import main

    config = write_yaml(tmp_path / "bench.yaml", {"image_size": 32, "repeats": 1})
    out = tmp_path / "out"
    assert main(["bench", "serving", "--config", str(config), "--out", str(out), "--nodes", "2", "--slow-node", "0.8",
                 "--queries", "12", "--json"]) == 0
    report = json.loads((out / "slow-node.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["rounds"] == 1 and report["honest_nodes"] == 2 and report["errors"] == {"without": 0, "with": 0}
    assert report["slow_node"]["slower than the latency budget"] == 2 and sum(report["slow_node"].values()) == 12
    assert "answered" not in report["slow_node"]
    for key in ("p50_ms", "p99_ms"):
        assert report[key]["without"] > 0 and report[key]["with"] > 0
    assert report["p99_ratio"] == report["p99_ms"]["with"] / report["p99_ms"]["without"]
