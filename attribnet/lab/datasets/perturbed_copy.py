"""`attribnet data perturb`: a perturbed copy of a folder-per-source dataset, for fixed test sets."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from shared_backbone.data.datasets import IMAGE_SUFFIXES
from shared_backbone.data.perturbations import perturb_fixed
from shared_backbone.model.preprocessing import ImageDecodeError, decode_image, load_image

log = logging.getLogger(__name__)

PERTURBATION_FILE = "perturbation.json"
# Files keep their names (so a perturbed copy splits exactly like the original: the split hash
# is of the file name) and their format, losslessly except JPEG, which is re-encoded at q100 4:4:4.
_SAVE_AS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 100, "subsampling": 0}),
    ".jpeg": ("JPEG", {"quality": 100, "subsampling": 0}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
    ".webp": ("WEBP", {"lossless": True}),
}


def _dataset_images(root: Path, out: Path) -> list[Path]:
    """Every image of the dataset, after refusing an output folder that would clobber anything."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"output folder {out} must not be inside the dataset {root}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} is not empty")
    sources = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [f for source in sources for f in sorted(source.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{root}: no images found")
    return files


def _write_perturbed(path: Path, relative: Path, out: Path, kind: str, value: float, seed: int, image_size: int) -> None:
    """One image, perturbed with a generator seeded by (seed, relative path): independent of the others."""
    rgb = load_image(path, image_size) if image_size else np.asarray(decode_image(path), dtype=np.uint8)
    key = int.from_bytes(hashlib.sha256(relative.as_posix().encode()).digest()[:8], "big")
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    image_format, options = _SAVE_AS[path.suffix.lower()]
    Image.fromarray(perturb_fixed(rgb, kind, value, np.random.default_rng([seed, key]))).save(target, image_format, **options)


def _copy_descriptions(root: Path, out: Path, setting: dict) -> None:
    """`source_ids.csv` as is; a zoo's `manifest.json` with the perturbation (and new image size) added."""
    if (root / "source_ids.csv").is_file():
        shutil.copy2(root / "source_ids.csv", out / "source_ids.csv")
    if (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["perturbation"] = setting
        if setting["image_size"]:
            manifest["image_size"] = setting["image_size"]
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def perturb_dataset(
    root: str | Path,
    out: str | Path,
    kind: str,
    value: float,
    *,
    seed: int = 0,
    image_size: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Writes a perturbed copy of a folder-per-source dataset: same layout, same file names.

    Each image (centre-cropped and resized to `image_size` first when it is > 0) gets
    `perturb_fixed(kind, value)`. Unreadable files are skipped and listed; `perturbation.json`
    records the setting and any skipped files.
    """
    root, out = Path(root), Path(out)
    files = _dataset_images(root, out)
    perturb_fixed(np.zeros((8, 8, 3), dtype=np.uint8), kind, value)  # a bad kind/value fails before any work
    written, skipped = 0, []
    for done, path in enumerate(files, 1):
        try:
            _write_perturbed(path, path.relative_to(root), out, kind, value, seed, image_size)
            written += 1
        except ImageDecodeError as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            skipped.append({"path": str(path), "reason": str(exc)})
        if progress:
            progress(done, len(files))
    setting = {"kind": kind, "value": value, "seed": seed, "image_size": image_size}
    _copy_descriptions(root, out, setting)
    record = {"source": str(root), **setting, "images": written, "skipped": skipped}
    (out / PERTURBATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
