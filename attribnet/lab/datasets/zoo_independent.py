"""A second fingerprint zoo, written independently of `zoo.py`: for evaluation only.

Same source names (FAMILY_INSTANCE, `real` the real source), same families, same folder layout
and manifest keys, but another code path everywhere: Keras generator layers with Keys-cubic
starting kernels (`independent_generators`), a polygon-and-pyramid-texture real-image model
(`independent_scenes`), its own seeding. A model whose training data or negatives came from
`zoo.py` is judged on this zoo to see how its fingerprints generalise to code it never shared
(measured once: strict heads 0.97 -> 0.79 on an outside zoo while a centralized CNN kept 0.977).
This package imports nothing from `zoo.py`; a test checks it.

Every image is a pure function of (seed, source, index). Images are rendered in fixed chunks of
CHUNK (one Keras call each), so an interrupted build resumes chunk by chunk and gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from attribnet.lab.datasets.independent_scenes import SceneModel, generator_input, real_image

log = logging.getLogger(__name__)

IMPLEMENTATION = "independent"
REAL_SOURCE = "real"
MANIFEST_FILE = "manifest.json"
FORMAT = 1
FAMILIES = ("tconv", "nnconv", "bilinear", "pixshuffle", "modconv")
DEFAULT_SOURCES = ("tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a")
DEFAULT_STRENGTH = 0.01  # std of every weight's deviation from its interpolation kernel
EASY_STRENGTH = 0.04
EASY_BLUR_SIGMA = (0.3, 0.5)  # sharper reals than fakes: an easy detection task for quick tests
CHUNK = 64

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IndependentZooSettings:
    """Everything an independent zoo is a function of; written into its manifest."""

    image_size: int = 64
    per_source: int = 360
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES
    strength: float = DEFAULT_STRENGTH
    scenes: SceneModel = SceneModel()

    @property
    def match_bandwidth(self) -> bool:
        return self.scenes.blur_sigma == SceneModel().blur_sigma


def easy_settings(**values) -> IndependentZooSettings:
    """Strong fingerprints and reals sharper than fakes: learnable in seconds, for quick tests."""
    return IndependentZooSettings(strength=EASY_STRENGTH, scenes=SceneModel(blur_sigma=EASY_BLUR_SIGMA), **values)


def check_settings(settings: IndependentZooSettings) -> None:
    """One-line errors for settings no zoo can be built from."""
    if settings.image_size < 8 or settings.image_size % 2:
        raise ValueError(f"independent zoo: image size must be an even number >= 8, got {settings.image_size}")
    if settings.per_source < 1:
        raise ValueError(f"independent zoo: per-source count must be >= 1, got {settings.per_source}")
    if settings.seed < 0:
        raise ValueError(f"independent zoo: seed must be >= 0, got {settings.seed}")
    if settings.strength < 0:
        raise ValueError(f"independent zoo: strength must be >= 0, got {settings.strength}")
    if not settings.sources or len(set(settings.sources)) != len(settings.sources) or REAL_SOURCE in settings.sources:
        raise ValueError(f"independent zoo: sources must be distinct generator names, got {list(settings.sources)}")
    for name in settings.sources:
        family, _, instance = name.partition("_")
        if family not in FAMILIES or not instance:
            raise ValueError(f"independent zoo: source {name!r} must be FAMILY_INSTANCE with FAMILY in {FAMILIES}")


def image_rng(seed: int, source: str, index: int) -> np.random.Generator:
    """The one random stream of image `index` of `source`: scene, blur, style, noise."""
    return np.random.default_rng([seed, zlib.crc32(source.encode()), index])


def _to_uint8(image: np.ndarray, low: float) -> np.ndarray:
    """[low, 1] floats to uint8 pixels, rounded."""
    scaled = (image - low) / (1 - low) * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def render_reals(settings: IndependentZooSettings, indices: Sequence[int]) -> np.ndarray:
    """(N, S, S, 3) uint8 real images."""
    rngs = [image_rng(settings.seed, REAL_SOURCE, i) for i in indices]
    return np.stack([_to_uint8(real_image(rng, settings.image_size, settings.scenes), 0.0) for rng in rngs])


def render_fakes(settings: IndependentZooSettings, generator, indices: Sequence[int]) -> np.ndarray:
    """(N, S, S, 3) uint8 images of one generator: its network on half-size scenes, one Keras call."""
    from attribnet.lab.datasets.independent_generators import style_inputs, upsample

    rngs = [image_rng(settings.seed, generator.name, i) for i in indices]
    lows = np.stack([generator_input(rng, settings.image_size, settings.scenes) for rng in rngs]) * 2 - 1
    styles = noise = None
    if generator.needs_style:
        drawn = [style_inputs(rng, settings.image_size // 2) for rng in rngs]
        styles, noise = np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn])
    return _to_uint8(upsample(generator, lows, styles, noise), -1.0)


def manifest_for(settings: IndependentZooSettings, generators: dict) -> dict:
    real = {"kind": "real", "architecture": REAL_SOURCE, "instance_seed": settings.seed, "parameters": asdict(settings.scenes)}
    return {
        "format": FORMAT,
        "dataset": "zoo",
        "implementation": IMPLEMENTATION,
        "image_size": settings.image_size,
        "per_source": settings.per_source,
        "seed": settings.seed,
        "strength": settings.strength,
        "match_bandwidth": settings.match_bandwidth,
        "real_sources": [REAL_SOURCE],
        "sources": {REAL_SOURCE: real, **{name: g.describe() for name, g in generators.items()}},
    }


def _write_manifest(out: Path, manifest: dict) -> None:
    """Through a temporary file and a rename: an interrupted write leaves the previous manifest."""
    temporary = out / f".{MANIFEST_FILE}.partial"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out / MANIFEST_FILE)


def _check_target(out: Path, manifest: dict) -> None:
    """Refuses a non-empty folder unless it holds (part of) this very zoo."""
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        existing = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        existing = None
    if not isinstance(existing, dict) or {k: v for k, v in existing.items() if k != "complete"} != json.loads(json.dumps(manifest)):
        raise FileExistsError(f"{out} is not empty and holds no independent zoo with these settings; choose an empty folder")


def _chunks(settings: IndependentZooSettings) -> list[range]:
    return [range(start, min(start + CHUNK, settings.per_source)) for start in range(0, settings.per_source, CHUNK)]


def _write_source(out: Path, settings: IndependentZooSettings, name: str, generator, report: Callable[[int], None]) -> int:
    """Writes the missing chunks of one source; returns how many images it rendered."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rendered = 0
    for chunk in _chunks(settings):
        paths = [folder / f"{i:05d}.png" for i in chunk]
        if not all(p.is_file() for p in paths):
            images = render_reals(settings, chunk) if generator is None else render_fakes(settings, generator, chunk)
            for path, image in zip(paths, images):
                temporary = path.with_name(f".{path.name}")
                Image.fromarray(image).save(temporary, format="PNG")
                os.replace(temporary, path)
            rendered += len(chunk)
        report(len(chunk))
    return rendered


def write_settings(out: str | Path, settings: IndependentZooSettings, *, progress: Progress | None = None) -> dict:
    """Writes `out/<source>/NNNNN.png` for `real` and every generator, and `out/manifest.json`.

    The same settings again resume an interrupted build (finished chunks are kept); a non-empty
    folder holding anything else is refused.
    """
    from attribnet.lab.datasets.independent_generators import make_generator

    check_settings(settings)
    out = Path(out)
    generators = {name: make_generator(name, settings.seed, settings.strength) for name in settings.sources}
    manifest = manifest_for(settings, generators)
    _check_target(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, {**manifest, "complete": False})
    total, done, rendered = (len(settings.sources) + 1) * settings.per_source, 0, 0
    started = time.monotonic()

    def report(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, total)

    for name in (REAL_SOURCE, *settings.sources):
        rendered += _write_source(out, settings, name, generators.get(name), report)
        log.info("independent zoo: %s done (%d/%d images)", name, done, total)
    _write_manifest(out, {**manifest, "complete": True})
    log.info("independent zoo: %d images (%d rendered now) in %s, %.1fs", total, rendered, out, time.monotonic() - started)
    return manifest


def write_independent_zoo(
    out: str | Path,
    *,
    image_size: int = 64,
    per_source: int = 360,
    seed: int = 0,
    sources: Sequence[str] = DEFAULT_SOURCES,
    strength: float | None = None,
    easy: bool = False,
    progress: Progress | None = None,
) -> dict:
    """The independent zoo at `out` (see `write_settings`); returns its manifest.

    `easy`: strong fingerprints and sharper reals (quick tests). `strength` (None: the preset's)
    is the std of the generators' weight deviations.
    """
    values = {"image_size": image_size, "per_source": per_source, "seed": seed, "sources": tuple(sources)}
    settings = easy_settings(**values) if easy else IndependentZooSettings(**values)
    if strength is not None:
        settings = replace(settings, strength=strength)
    return write_settings(out, settings, progress=progress)
