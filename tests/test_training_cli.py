"""The training commands through the CLI: coordinator train/evaluate/publish, node train/evaluate, bench baseline."""

from __future__ import annotations

import json

from attribnet.cli import main


def test_coordinator_and_node_commands_end_to_end(tiny_zoo, keypair, tmp_path, capsys):
    private_key, public_key = keypair
    config = tmp_path / "small.yaml"
    config.write_text(
        f"data:\n  root: {tiny_zoo}\n  image_size: 32\n"
        "train:\n  epochs: 1\n  min_epochs: 1\n  batch_size: 32\n"
    )
    run = tmp_path / "run"
    assert main(["-q", "coordinator", "train", "--config", str(config), "--out", str(run), "--json"]) == 0  # no progress bar in JSON
    trained = json.loads(capsys.readouterr().out)
    assert trained["run_dir"] == str(run) and "test" in trained["metrics"]

    assert main(["-q", "coordinator", "evaluate", "--config", str(config), "--run", str(run),
                 "--perturbation", "clean", "--perturbation", "blur1", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert set(evaluated) == {"clean", "blur1"}
    assert evaluated["clean"]["n"] == trained["metrics"]["test"]["n"]
    assert evaluated["clean"]["accuracy"] == trained["metrics"]["test"]["accuracy"]
    assert (run / "evaluation" / "blur1_roc.png").is_file()

    bundle = tmp_path / "bundle"
    assert main(["-q", "coordinator", "publish", str(run), "--out", str(bundle), "--key", str(private_key),
                 "--version", "7", "--parent", "6"]) == 0
    assert "version 7" in capsys.readouterr().out
    assert json.loads((bundle / "manifest.json").read_text())["parent"] == "6"

    node = ["--config", str(config), "--source", "tconv_a", "--backbone", str(bundle),
            "--public-key", str(public_key), "--state-dir", str(tmp_path / "node")]
    assert main(["-q", "node", "train", *node, "--json"]) == 0  # stdout: JSON only
    head = json.loads(capsys.readouterr().out)
    assert head["metrics"]["source"] == "tconv_a"
    assert main(["-q", "node", "evaluate", *node, "--json"]) == 0
    ovr = json.loads(capsys.readouterr().out)["clean"]
    assert ovr["n"] == head["metrics"]["counts"]["test"]["total"]
    assert ovr["accuracy"] == head["metrics"]["test"]["calibrated"]["accuracy"]


def test_bench_baseline_dctlinear_and_bad_input(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "dct"
    assert main(["-q", "bench", "baseline", "--model", "dctlinear", "--task", "multiclass", "--data", str(tiny_zoo),
                 "--image-size", "32", "--out", str(out), "--perturbation", "clean", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"][0] == "real" and len(result["classes"]) == 6
    assert result["metrics"]["clean"]["accuracy"] > 0.5  # the easy tiny zoo is linearly separable in log-DCT
    assert (out / "clean_confusion.png").is_file() and (out / "clean_predictions.csv").is_file()

    assert main(["bench", "baseline", "--model", "dctlinear", "--task", "ovr", "--data", str(tiny_zoo),
                 "--out", str(tmp_path / "x")]) == 2
    assert "positive_source" in capsys.readouterr().err
    assert main(["coordinator", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "missing" in capsys.readouterr().err


def test_bench_attribution_of_bundle_and_heads(zoo_bundle, zoo_heads, tiny_zoo, keypair, tmp_path, capsys):
    import csv

    heads = [arg for path in zoo_heads.values() for arg in ("--head", str(path))]
    out = tmp_path / "attribution"
    assert main(["-q", "bench", "attribution", "--backbone", str(zoo_bundle.path), "--public-key", str(keypair[1]),
                 *heads, "--data", str(tiny_zoo), "--perturbation", "clean", "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["clean"]
    with open(out / "clean_multiclass_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    from shared_backbone.data.datasets import load_split
    from attribnet.lab.datasets.zoo import zoo_data_config

    assert len(rows) == metrics["n"] == len(load_split(zoo_data_config(tiny_zoo))[1]["test"])
    for row in rows:  # the paper's rule: the primary's "real" wins, else the head with the best raw score (rank_by)
        if float(row["score_fake_score"]) < 0.5:
            assert row["predicted"] == "real"
        else:
            scores = {s: float(row[f"raw_{s}"]) for s in zoo_heads}
            assert row["predicted"] == max(scores, key=scores.get)
    correct = sum(row["predicted"] == row["truth"] for row in rows)
    assert metrics["multiclass"]["accuracy"] == correct / len(rows)
    assert (out / "clean_multiclass_confusion.png").is_file() and (out / "clean_detection_roc.png").is_file()


def test_pixel_models_learn_fingerprints_on_the_high_pass_residual(tiny_zoo, tmp_path, capsys):
    """On raw pixels gdaconv learns the scenes (0.23 here, chance 1/6); the residual input removes them (0.80)."""
    accuracy = {}
    for mode in ("residual", "pixel"):
        assert main(["-q", "bench", "baseline", "--model", "gdaconv", "--task", "multiclass", "--data", str(tiny_zoo),
                     "--image-size", "32", "--mode", mode, "--out", str(tmp_path / mode), "--perturbation", "clean",
                     "--json"]) == 0
        accuracy[mode] = json.loads(capsys.readouterr().out)["metrics"]["clean"]["accuracy"]
    assert accuracy["residual"] >= 0.6 and accuracy["residual"] >= accuracy["pixel"] + 0.25, accuracy
