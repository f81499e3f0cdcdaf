"""The out-of-scope corpus: every kind with the right counts and sizes, content that is what its
kind says, determinism, the content-matched kinds drawn from a source dataset, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attribnet.cli import main
from attribnet.lab.datasets.out_of_scope import DERIVED_KINDS, KINDS, SYNTHETIC_KINDS, write_out_of_scope
from attribnet.lab.datasets.zoo_independent import write_independent_zoo

PER_KIND = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oos") / "zoo"
    write_independent_zoo(root, image_size=32, per_source=3, seed=1, sources=("tconv_a", "nnconv_a"))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, source) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("oos") / "corpus"
    return out, write_out_of_scope(out, image_size=32, per_kind=PER_KIND, seed=5, source_dataset=source)


def test_every_kind_is_written_with_its_count_and_size(corpus):
    out, manifest = corpus
    assert tuple(manifest["kinds"]) == KINDS and manifest["omitted_kinds"] == {}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for kind in KINDS:
        files = sorted((out / kind).iterdir())
        assert len(files) == PER_KIND == manifest["kinds"][kind]["count"]
        assert [item["file"] for item in manifest["images"][kind]] == [f.name for f in files]
        for path in files:
            with Image.open(path) as image:
                if kind == "tiny":
                    assert 8 <= image.size[0] == image.size[1] <= 16  # saved that small, never upscaled
                else:
                    assert image.size == (32, 32)
                assert image.format == ("JPEG" if kind.startswith("jpeg") else "PNG")
    for item in manifest["images"]["jpeg_real"] + manifest["images"]["jpeg_fake"]:
        assert 60 <= item["quality"] <= 90
    assert all(item["from"].startswith("real/") for item in manifest["images"]["resampled_real"])
    assert all(not item["from"].startswith("real/") for item in manifest["images"]["resampled_fake"])


def pixels(out: Path, kind: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sorted((out / kind).iterdir())])


def test_each_kind_looks_like_what_it_says(corpus, source):
    out, manifest = corpus
    smoothness = {kind: np.abs(np.diff(pixels(out, kind), axis=2)).mean() for kind in SYNTHETIC_KINDS}
    assert smoothness["gradient"] < 3 < smoothness["noise"]  # gradients are smooth, noise is not
    flat = pixels(out, "flat_shapes").reshape(PER_KIND, -1, 3)
    assert max(len(np.unique(image, axis=0)) for image in flat) <= 9  # flat colours only: background + <= 8 shapes
    for kind in ("resampled_real", "jpeg_fake"):
        for item, image in zip(manifest["images"][kind], pixels(out, kind)):
            original = np.asarray(Image.open(source / item["from"]).convert("RGB"), dtype=np.float64)
            difference = np.abs(image - original).mean()
            assert 0 < difference < 25, (kind, item)  # the source image, changed but recognisable


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed_and_derived_kinds_need_a_source(tmp_path):
    for name in ("a", "b"):
        write_out_of_scope(tmp_path / name, image_size=16, per_kind=2, seed=3)
    manifest = write_out_of_scope(tmp_path / "c", image_size=16, per_kind=2, seed=4)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b and a != c
    assert set(manifest["kinds"]) == set(KINDS) - set(DERIVED_KINDS)
    assert set(manifest["omitted_kinds"]) == set(DERIVED_KINDS)
    assert all(8 <= item["side"] <= 15 for item in manifest["images"]["tiny"])  # smaller than the 16 px corpus


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_corpus_and_errors_are_one_line(tmp_path, capsys, source):
    out = tmp_path / "corpus"
    code, stdout, _ = run(capsys, "data", "out-of-scope", "--out", str(out), "--image-size", "16", "--per-kind", "1",
                          "--seed", "2", "--from", str(source), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert set(summary["kinds"]) == set(KINDS) and all(k["count"] == 1 for k in summary["kinds"].values())
    for argv, message in [
        (("--out", str(tmp_path / "x"), "--image-size", "8"), "image size must be >= 16"),
        (("--out", str(tmp_path / "y"), "--from", str(tmp_path / "missing")), "is not a folder"),
        (("--out", str(out)), "not empty"),
        (("--out", str(tmp_path / "z"), "--per-kind", "0"), "per-kind count"),
    ]:
        code, _, stderr = run(capsys, "data", "out-of-scope", *argv)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
