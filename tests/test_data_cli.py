"""`attribnet data zoo | normstats | perturb | info`, run in-process through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from attribnet.cli import main
from shared_backbone.data.datasets import load_split
from attribnet.lab.datasets.zoo import read_manifest, zoo_data_config
from shared_backbone.model.preprocessing import Normstats, NormstatsAccumulator, load_image
from tests.fixtures_data import TINY_ZOO_PER_SOURCE


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_zoo_command_with_flags_config_and_json(tmp_path, capsys):
    out = tmp_path / "zoo"
    code, stdout, _ = run(capsys, "data", "zoo", "--out", str(out), "--image-size", "16", "--per-source", "3", "--seed", "5", "--workers", "1")
    assert code == 0 and "wrote 18 images" in stdout
    manifest = read_manifest(out)
    assert manifest["seed"] == 5 and manifest["image_size"] == 16 and len(list((out / "real").glob("*.png"))) == 3
    # --config with a zoo: section; a flag overrides the file.
    config = tmp_path / "zoo.yaml"
    config.write_text(f"zoo:\n  out: {tmp_path / 'from_yaml'}\n  image_size: 16\n  per_source: 2\n  sources: [nnconv_a, pixshuffle_b]\n  preset: easy\n  workers: 1\n")
    code, stdout, _ = run(capsys, "data", "zoo", "--config", str(config), "--per-source", "4", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["per_source"] == 4 and set(summary["sources"]) == {"real", "nnconv_a", "pixshuffle_b"}
    assert summary["strength"] == 0.06 and summary["match_bandwidth"] is False
    assert len(list((tmp_path / "from_yaml" / "pixshuffle_b").glob("*.png"))) == 4


def test_zoo_command_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "zoo.yaml"
    config.write_text("zoo:\n  per_sorce: 3\n")
    code, _, stderr = run(capsys, "data", "zoo", "--config", str(config), "--out", str(tmp_path / "z"))
    assert code == 2 and f"{config}: zoo: unknown key 'per_sorce'" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run(capsys, "data", "zoo", "--out", str(tmp_path / "z"), "--sources", "gan_a", "--per-source", "1")
    assert code == 2 and "gan_a" in stderr


def test_info_reports_sources_splits_and_every_unreadable_file(tiny_zoo, tmp_path, capsys):
    code, stdout, _ = run(capsys, "data", "info", "--data", str(tiny_zoo), "--arch-level", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["images"] == 6 * TINY_ZOO_PER_SOURCE and summary["unreadable"] == [] and summary["zoo"]["image_size"] == 32
    assert summary["classes"] == ["real", "bilinear", "nnconv", "pixshuffle", "tconv"]
    by_name = {s["name"]: s for s in summary["sources"]}
    assert by_name["real"]["kind"] == "real" and by_name["tconv_b"]["class"] == "tconv" and by_name["tconv_b"]["count"] == TINY_ZOO_PER_SOURCE
    assert sum(summary["splits"].values()) == 6 * TINY_ZOO_PER_SOURCE
    assert sum(by_name["real"]["splits"].values()) == TINY_ZOO_PER_SOURCE
    # A copy with an empty, a truncated and a non-image file: all three reported with their paths.
    root = tmp_path / "d"
    for source in ("real", "tconv_a"):
        shutil.copytree(tiny_zoo / source, root / source)
    (root / "real" / "empty.png").write_bytes(b"")
    (root / "tconv_a" / "cut.png").write_bytes((tiny_zoo / "tconv_a" / "00000.png").read_bytes()[:50])
    (root / "tconv_a" / "notes.jpg").write_text("not an image")
    code, stdout, _ = run(capsys, "data", "info", "--data", str(root))
    assert code == 1
    assert "3 unreadable file(s)" in stdout
    for name in ("real/empty.png", "tconv_a/cut.png", "tconv_a/notes.jpg"):
        assert str(root / name) in stdout
    assert "empty input" in stdout


def test_info_reads_the_data_section_of_a_role_config(tiny_zoo, tmp_path, capsys):
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"data:\n  root: {tiny_zoo}\n  image_size: 32\n  split_seed: 4\ntrain:\n  epochs: 3\n")
    code, stdout, _ = run(capsys, "data", "info", "--config", str(config), "--no-check", "--json")
    assert code == 0 and json.loads(stdout)["split_seed"] == 4
    config.write_text(f"data:\n  root: {tiny_zoo}\n  imagesize: 32\n")
    code, _, stderr = run(capsys, "data", "info", "--config", str(config))
    assert code == 2 and "unknown key 'imagesize'" in stderr
    code, _, stderr = run(capsys, "data", "info")
    assert code == 2 and "--data" in stderr


def test_perturb_writes_a_perturbed_copy_with_the_same_layout(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "jpeg75"
    code, stdout, _ = run(capsys, "data", "perturb", "--data", str(tiny_zoo), "--out", str(out), "--kind", "jpeg", "--value", "75", "--json")
    assert code == 0 and json.loads(stdout)["images"] == 6 * TINY_ZOO_PER_SOURCE
    originals = sorted(p.relative_to(tiny_zoo) for p in tiny_zoo.rglob("*.png"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == originals
    copied = json.loads((out / "manifest.json").read_text())
    assert copied.pop("perturbation") == {"kind": "jpeg", "value": 75.0, "seed": 0, "image_size": 0}
    assert copied == read_manifest(tiny_zoo)
    assert json.loads((out / "perturbation.json").read_text())["kind"] == "jpeg"
    before = np.asarray(Image.open(tiny_zoo / originals[0]).convert("RGB"))
    after = np.asarray(Image.open(out / originals[0]).convert("RGB"))
    assert after.shape == before.shape and 0.5 < np.abs(after.astype(int) - before.astype(int)).mean() < 20
    # Blur at a fixed sigma, resized on the way: smaller, and smoother than the original.
    code, _, _ = run(capsys, "data", "perturb", "--data", str(tiny_zoo), "--out", str(tmp_path / "blur"), "--kind", "blur", "--value", "2", "--image-size", "16")
    assert code == 0
    blurred = np.asarray(Image.open(tmp_path / "blur" / originals[0]), dtype=float)
    assert blurred.shape == (16, 16, 3) and read_manifest(tmp_path / "blur")["image_size"] == 16
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(load_image(tiny_zoo / originals[0], 16).astype(float), axis=1)).mean()
    code, _, stderr = run(capsys, "data", "perturb", "--data", str(tiny_zoo), "--out", str(out), "--kind", "jpeg", "--value", "75")
    assert code == 2 and "not empty" in stderr
    code, _, stderr = run(capsys, "data", "perturb", "--data", str(tiny_zoo), "--out", str(tmp_path / "q"), "--kind", "jpeg", "--value", "0")
    assert code == 2 and "quality" in stderr and not (tmp_path / "q").exists()


def test_normstats_streams_the_train_split(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "normstats"
    # No --image-size: a zoo's own size (32) is the default.
    code, stdout, _ = run(capsys, "data", "normstats", "--data", str(tiny_zoo), "--out", str(out), "--json")
    assert code == 0
    _, splits = load_split(zoo_data_config(tiny_zoo))
    assert json.loads(stdout)["images"] == len(splits["train"])
    expected = NormstatsAccumulator(32)
    for sample in splits["train"]:
        expected.add(load_image(sample.path, 32))
    written = Normstats.load(out)
    assert np.allclose(written.mean, expected.result().mean) and np.allclose(written.std, expected.result().std)
    assert written.mean.shape == (32, 32)
    code, _, _ = run(capsys, "data", "normstats", "--data", str(tiny_zoo), "--image-size", "16", "--split", "all", "--out", str(tmp_path / "ns16"))
    assert code == 0 and Normstats.load(tmp_path / "ns16").mean.shape == (16, 16)


def test_perturbed_copy_keeps_names_formats_and_splits(tiny_zoo, tmp_path, capsys):
    """JPEG files stay JPEG under the same name, so the copy's test split is the original's."""
    root = tmp_path / "photos"
    for source in ("real", "nnconv_a"):
        (root / source).mkdir(parents=True)
        for path in sorted((tiny_zoo / source).glob("*.png"))[:12]:
            Image.open(path).save(root / source / f"{path.stem}.jpg", quality=95)
    (root / "real" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "noisy"
    code, stdout, _ = run(capsys, "data", "perturb", "--data", str(root), "--out", str(out), "--kind", "noise", "--value", "0.05")
    assert code == 0 and f"skipped unreadable {root / 'real' / 'bad.jpg'}" in stdout
    assert sorted(p.relative_to(out) for p in out.rglob("*.jpg")) == sorted(p.relative_to(root) for p in root.rglob("*.jpg") if p.name != "bad.jpg")
    with Image.open(out / "real" / "00000.jpg") as image:
        assert image.format == "JPEG"
    from shared_backbone.config import DataConfig

    def names_in_test(folder: Path) -> set[str]:
        _, splits = load_split(DataConfig(root=str(folder), image_size=32, split_seed=2))
        return {f"{s.source}/{s.path.name}" for s in splits["test"]}

    assert names_in_test(out) == names_in_test(root) - {"real/bad.jpg"}
