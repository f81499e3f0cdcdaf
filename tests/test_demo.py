"""`attribnet demo --offline --config configs/demo.yaml --tiny` end to end through the CLI, on the session's
tiny zoo: the run of the `offline_demo` fixture, the one docs/paper-workflow.md's command maps to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_demo_runs_end_to_end(offline_demo):
    out = offline_demo.out
    assert offline_demo.code == 0
    printed = offline_demo.stdout
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
    seen = sorted(["real", *sources])
    assert run["bundle"]["trained_on"]["detector"] == seen  # the founding setting, said in the report
    assert f"The coordinator's detector trained on {', '.join(seen)};" in (out / "report.md").read_text()
    oos = run["out_of_scope"]  # images no generator made, with and without the typicality gate
    assert oos["images"] > 0 and all(0.0 <= oos[k] <= 1.0 for k in oos if k.startswith("pinned"))
    assert oos["pinned_on_a_source"] <= oos["pinned_without_typicality"]  # the gate only ever withdraws answers
    assert "Out-of-scope images" in (out / "report.md").read_text()
    _check_answers_show_prediction_sets(Path(run["files"]["clean"]["open_set"]["predictions"]), sources)


def _check_answers_show_prediction_sets(predictions: Path, sources: list[str], alpha: float = 0.05) -> None:
    """Every open-set answer lists its prediction set (sources with p-value > alpha, or none) and the p-values behind it."""
    import csv

    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {"prediction_set", *(f"p_{s}" for s in sources)} <= set(rows[0])
    for row in rows:
        kept = {s for s in row["prediction_set"].split("+") if s}
        if row["predicted"] == "real":
            assert not kept, row  # a real answer attributes nothing
            continue
        # NaN: no usable reference (fewer than 10 held-out positives in this tiny demo), so never excluded
        assert kept == {s for s in sources if not float(row[f"p_{s}"]) <= alpha}, row
        if row["predicted"] in sources:
            assert row["predicted"] in kept, row
    assert any(row["prediction_set"] for row in rows)
