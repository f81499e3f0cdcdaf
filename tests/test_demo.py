"""`attribnet demo --tiny` end to end through the CLI, on the session's tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attribnet.cli import main


def test_demo_runs_end_to_end(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--offline", "--tiny", "--data", str(tiny_zoo), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "publish signed bundle" in printed and "# attribnet offline demo" in printed
    report = json.loads((out / "report.json").read_text())
    (run,) = report["seeds"]
    assert set(run["results"]) == {"clean", "jpeg75"}
    sources = ["bilinear_a", "nnconv_a", "pixshuffle_a", "tconv_a", "tconv_b"]
    for name, row in run["results"].items():
        assert sorted(row["ovr_accuracy"]) == sources
        for key in ("detection_accuracy", "heads_multiclass_accuracy", "heads_fake_argmax_accuracy",
                    "gdaconv_multiclass_accuracy", "dctlinear_multiclass_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
    # the heads' numbers were measured on the same test images as the baselines'
    baseline = json.loads((out / "seed-0" / "baselines" / "dctlinear" / "metrics.json").read_text())
    evaluation = json.loads((out / "seed-0" / "evaluation" / "clean_metrics.json").read_text())
    assert baseline["clean"]["n"] == evaluation["multiclass"]["n"] == evaluation["n"]
    assert run["results"]["clean"]["dctlinear_multiclass_accuracy"] == pytest.approx(baseline["clean"]["accuracy"])
    for files in run["files"].values():
        for paths in files.values():
            for path in paths.values():
                assert Path(path).is_file(), path
    assert (out / "keys" / "coordinator.pub").is_file()
    assert (out / "seed-0" / "bundle" / "manifest.sig").is_file()
    assert "heads_multiclass_accuracy" in (out / "report.md").read_text()


def test_demo_refuses_a_bad_config_key(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text("zoo:\n  image_size: 32\n  colour: red\n")
    assert main(["demo", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "colour" in capsys.readouterr().err


def test_demo_refuses_bad_settings_before_any_work(tmp_path, capsys):
    config = tmp_path / "demo.yaml"
    config.write_text("perturbations: [clean, sharpen]\n")
    assert main(["demo", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "sharpen" in capsys.readouterr().err
    config.write_text("baselines: [resnet]\n")
    assert main(["demo", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "baselines: unknown 'resnet'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
