"""An out-of-scope corpus: images no generator of the network made, one folder per kind.

Typicality (a node's "is this like my images at all?") is judged on it. Some kinds differ from
the zoo's images in content (gradients, flat shapes, text, plots, UI screenshots, noise); the
derived kinds are content-matched: a source dataset's own real and fake images, resampled
(down then up with bicubic or Lanczos), JPEG'd at quality 60-90, or reduced to 8-16 px and saved
at that size (too small to judge: a server must say so, never upscale silently). Without a source
dataset the content-matched kinds are left out and the manifest says so.

Every image is a pure function of (seed, kind, index, source dataset); the manifest lists the
kinds, their counts and sizes, and every image's parameters.
"""

from __future__ import annotations

import functools
import json
import logging
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared_backbone.data.datasets import IMAGE_SUFFIXES
from shared_backbone.model.preprocessing import load_image

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_FILE = "manifest.json"
SYNTHETIC_KINDS = ("gradient", "flat_shapes", "text", "plot", "ui", "noise")
DERIVED_KINDS = ("resampled_real", "resampled_fake", "jpeg_real", "jpeg_fake")
KINDS = (*SYNTHETIC_KINDS, *DERIVED_KINDS, "tiny")
RESAMPLERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
DOWNSCALE = (1.5, 4.0)  # factor range of the resampled kinds
JPEG_QUALITY = (60, 90)
TINY_SIZE = (8, 16)

Renderer = Callable[[np.random.Generator, int], tuple[np.ndarray, dict]]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def gradient(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """A linear or radial blend between two or three random colours."""
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
    style = str(rng.choice(["linear", "radial"]))
    if style == "linear":
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / np.sqrt(0.5) + 0.5
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.hypot(xs - cx, ys - cy) / np.sqrt(2)
    stops = np.array([_colour(rng) for _ in range(int(rng.integers(2, 4)))], dtype=np.float64)
    t = np.clip(t, 0, 1) * (len(stops) - 1)
    low = np.minimum(t.astype(int), len(stops) - 2)
    frac = (t - low)[..., None]
    image = stops[low] * (1 - frac) + stops[low + 1] * frac
    return np.rint(image).astype(np.uint8), {"style": style, "colours": len(stops)}


def flat_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """Clip-art: flat-colour rectangles, ellipses and triangles with hard (aliased) edges."""
    canvas = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(canvas)
    count = int(rng.integers(2, 9))
    for _ in range(count):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.7, 2) * size
        shape = int(rng.integers(3))
        if shape == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_colour(rng))
        elif shape == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=_colour(rng))
        else:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=_colour(rng))
    return np.asarray(canvas), {"shapes": count}


def _words(rng: np.random.Generator, count: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return " ".join("".join(rng.choice(list(letters), int(rng.integers(2, 8)))) for _ in range(count))


def _font(size: float) -> ImageFont.ImageFont:
    """Pillow's default font at `size` px (its bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=max(6.0, size))
    except (TypeError, OSError):
        return ImageFont.load_default()


def text(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """Lines of random words in Pillow's default font on a plain background."""
    canvas = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(canvas)
    font_size = float(rng.uniform(size / 7, size / 3.5))
    font, ink = _font(font_size), _colour(rng)
    lines = int(size // (font_size * 1.3)) or 1
    for line in range(lines):
        y = rng.uniform(-0.2, 0.2) * font_size + line * font_size * 1.3
        draw.text((rng.uniform(-0.1, 0.2) * size, y), _words(rng, 3), fill=ink, font=font)
    return np.asarray(canvas), {"font_size": round(font_size, 1), "lines": lines}


@functools.lru_cache(maxsize=4)
def _figure(size: int):
    """One Agg figure per size, cleared and reused: a new Figure per image costs more than the plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size / 50, size / 50), dpi=50)
    return figure, FigureCanvasAgg(figure)


def plot(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """A matplotlib chart (line, scatter or bars; Agg backend, no display needed)."""
    figure, canvas = _figure(size)
    figure.clear()
    axes = figure.add_subplot()
    style = str(rng.choice(["line", "scatter", "bars"]))
    x = np.arange(int(rng.integers(5, 30)))
    y = np.cumsum(rng.normal(0, 1, len(x)))
    if style == "line":
        axes.plot(x, y, linewidth=float(rng.uniform(0.5, 2.5)))
    elif style == "scatter":
        axes.scatter(x, y, s=float(rng.uniform(2, 20)))
    else:
        axes.bar(x, np.abs(y))
    axes.tick_params(labelsize=4)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = Image.fromarray(rgba[..., :3].copy()).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image), {"style": style, "points": len(x)}


def ui(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """A screenshot-like window: title bar, panels, rounded buttons, lines of text."""
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(canvas)
    bar = max(3, size // 10)
    draw.rectangle([0, 0, size, bar], fill=_colour(rng))
    panels = int(rng.integers(1, 4))
    for _ in range(panels):
        x0, y0 = rng.uniform(0, 0.6) * size, bar + rng.uniform(0, 0.5) * size
        draw.rectangle([x0, y0, x0 + rng.uniform(0.2, 0.5) * size, y0 + rng.uniform(0.1, 0.4) * size],
                       fill=tuple(int(v) for v in rng.integers(170, 250, 3)), outline=(120, 120, 120))
    buttons = int(rng.integers(1, 4))
    font = _font(size / 12)
    for _ in range(buttons):
        x0, y0 = rng.uniform(0.05, 0.7) * size, rng.uniform(0.6, 0.85) * size
        box = [x0, y0, x0 + size / 4, y0 + size / 9]
        draw.rounded_rectangle(box, radius=max(1, size // 40), fill=_colour(rng), outline=(60, 60, 60))
        draw.text((x0 + 2, y0 + 1), "OK", fill=(255, 255, 255), font=font)
    for line in range(int(rng.integers(2, 6))):
        y = bar + 3 + line * size / 10
        draw.text((size * 0.05, y), _words(rng, 2), fill=(30, 30, 30), font=font)
    return np.asarray(canvas), {"panels": panels, "buttons": buttons}


def noise(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    """Uniform, Gaussian, salt-and-pepper or blocky noise."""
    style = str(rng.choice(["uniform", "gaussian", "salt_pepper", "blocks"]))
    if style == "uniform":
        image = rng.integers(0, 256, (size, size, 3))
    elif style == "gaussian":
        image = rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (size, size, 3))
    elif style == "salt_pepper":
        image = np.where(rng.uniform(size=(size, size, 1)) < 0.5, 0, 255) * np.ones(3)
    else:
        block = int(rng.integers(2, 9))
        cells = rng.integers(0, 256, (-(-size // block), -(-size // block), 3))
        image = cells.repeat(block, 0).repeat(block, 1)[:size, :size]
    return np.clip(image, 0, 255).astype(np.uint8), {"style": style}


SYNTHETIC: dict[str, Renderer] = {
    "gradient": gradient, "flat_shapes": flat_shapes, "text": text, "plot": plot, "ui": ui, "noise": noise,
}


def source_pools(root: str | Path) -> dict[str, list[Path]]:
    """{"real": files, "fake": files} of a dataset: real sources from its manifest (a zoo's
    `real_sources`), else the folders whose names start with `real`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source dataset {root} is not a folder")
    real_sources = None
    if (root / MANIFEST_FILE).is_file():
        try:
            real_sources = set(json.loads((root / MANIFEST_FILE).read_text())["real_sources"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{root / MANIFEST_FILE}: no readable real_sources ({exc})") from None
    pools: dict[str, list[Path]] = {"real": [], "fake": []}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        is_real = folder.name in real_sources if real_sources is not None else folder.name.startswith("real")
        pools["real" if is_real else "fake"] += sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not pools["real"] or not pools["fake"]:
        raise ValueError(f"source dataset {root}: needs real and fake images, found {len(pools['real'])} real and {len(pools['fake'])} fake")
    return pools


def _pick(rng: np.random.Generator, pool: list[Path], size: int, root: Path) -> tuple[Image.Image, dict]:
    path = pool[int(rng.integers(len(pool)))]
    return Image.fromarray(load_image(path, size)), {"from": str(path.relative_to(root))}


def resampled(rng: np.random.Generator, picture: Image.Image, size: int) -> tuple[np.ndarray, dict]:
    """Down by a factor in DOWNSCALE, then back up, each with bicubic or Lanczos."""
    factor = float(rng.uniform(*DOWNSCALE))
    small = max(2, round(size / factor))
    down, up = (str(rng.choice(sorted(RESAMPLERS))) for _ in range(2))
    image = picture.resize((small, small), RESAMPLERS[down]).resize((size, size), RESAMPLERS[up])
    return np.asarray(image), {"factor": round(factor, 3), "down": down, "up": up}


def _render(kind: str, rng: np.random.Generator, size: int, pools: dict | None, root: Path | None) -> tuple[np.ndarray, dict, int | None]:
    """(image, parameters, JPEG quality or None for PNG) of one image of `kind`."""
    if kind in SYNTHETIC:
        image, params = SYNTHETIC[kind](rng, size)
        return image, params, None
    if kind == "tiny":
        return _tiny(rng, size, pools, root)
    origin = kind.rsplit("_", 1)[1]
    picture, params = _pick(rng, pools[origin], size, root)
    if kind.startswith("resampled"):
        image, more = resampled(rng, picture, size)
        return image, {**params, **more}, None
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    return np.asarray(picture), {**params, "quality": quality}, quality


def _tiny(rng: np.random.Generator, size: int, pools: dict | None, root: Path | None) -> tuple[np.ndarray, dict, None]:
    """Another kind's image (or a source image) reduced with Lanczos to 8-16 px, kept that small."""
    contents = [*SYNTHETIC, *(("real", "fake") if pools else ())]
    content = str(rng.choice(contents))
    if content in SYNTHETIC:
        picture, params = Image.fromarray(SYNTHETIC[content](rng, size)[0]), {}
    else:
        picture, params = _pick(rng, pools[content], size, root)
    side = int(rng.integers(TINY_SIZE[0], min(TINY_SIZE[1], size - 1) + 1))
    image = picture.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image), {**params, "content": content, "side": side}, None


def _describe(kind: str) -> str:
    if kind in SYNTHETIC:
        return (SYNTHETIC[kind].__doc__ or "").strip().splitlines()[0]
    if kind == "tiny":
        return (_tiny.__doc__ or "").strip()
    how = "resampled: down then up, bicubic or Lanczos" if kind.startswith("resampled") else f"JPEG quality {JPEG_QUALITY[0]}-{JPEG_QUALITY[1]}"
    return f"the source dataset's {kind.rsplit('_', 1)[1]} images, {how}"


def check_arguments(image_size: int, per_kind: int, seed: int) -> None:
    if image_size < 16:
        raise ValueError(f"out-of-scope corpus: image size must be >= 16 (tiny images are 8-16 px), got {image_size}")
    if per_kind < 1:
        raise ValueError(f"out-of-scope corpus: per-kind count must be >= 1, got {per_kind}")
    if seed < 0:
        raise ValueError(f"out-of-scope corpus: seed must be >= 0, got {seed}")


def write_out_of_scope(
    out: str | Path,
    *,
    image_size: int = 64,
    per_kind: int = 100,
    seed: int = 0,
    source_dataset: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Writes `out/<kind>/NNNNN.png` (`.jpg` for the JPEG kinds) and `out/manifest.json`; returns
    the manifest. The content-matched kinds need `source_dataset` (e.g. a zoo) and are omitted
    without it. Refuses a non-empty `out`."""
    check_arguments(image_size, per_kind, seed)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose an empty folder for the out-of-scope corpus")
    root = Path(source_dataset) if source_dataset is not None else None
    pools = source_pools(root) if root is not None else None
    kinds = KINDS if pools else tuple(k for k in KINDS if k not in DERIVED_KINDS)
    images: dict[str, list[dict]] = {}
    total = len(kinds) * per_kind
    for position, kind in enumerate(kinds):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        images[kind] = []
        for index in range(per_kind):
            rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), index])
            image, params, quality = _render(kind, rng, image_size, pools, root)
            name = f"{index:05d}.{'jpg' if quality else 'png'}"
            Image.fromarray(image).save(folder / name, **({"format": "JPEG", "quality": quality} if quality else {"format": "PNG"}))
            images[kind].append({"file": name, **params})
            if progress:
                progress(position * per_kind + index + 1, total)
        log.info("out-of-scope: %s done (%d images)", kind, per_kind)
    manifest = {
        "format": FORMAT,
        "dataset": "out_of_scope",
        "image_size": image_size,
        "per_kind": per_kind,
        "seed": seed,
        "source_dataset": str(root) if root is not None else None,
        "kinds": {kind: _kind_entry(kind, images[kind], image_size) for kind in kinds},
        "omitted_kinds": {} if pools else {kind: "no source dataset given" for kind in DERIVED_KINDS},
        "images": images,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _kind_entry(kind: str, images: list[dict], image_size: int) -> dict:
    sides = [item["side"] for item in images] if kind == "tiny" else [image_size]
    return {"count": len(images), "min_size": min(sides), "max_size": max(sides), "description": _describe(kind)}
