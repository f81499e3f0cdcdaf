"""The real-photo corpus: photographs that ship inside Python wheels and Debian packages, so nothing is downloaded.

Twenty photographs of nineteen scenes from scikit-image (the images inside its wheel, never the
ones it fetches with pooch), scikit-learn's sample images, PyWavelets' test images and
matplotlib's sample data (`WHEEL_PHOTOS`), and 181 photographs from four Debian packages of
wallpapers and educational software (`packaged_photos.py`: GCompris, MATE and Lomiri
wallpapers, Tux Paint; installed by `make photos`). Each photo records its licence as its package
states it. They are split into train/val/test by *scene* (the two motorcycle photos are one
stereo pair, one scene; the catalogue leaves out a second photo of a landmark or animal it already
has), so no test patch shares a photograph, or a view of the same scene, with a training patch.

The Python packages are the optional `upscalers` extra; `import_extra` names the Make target when
one is missing, and a missing Debian package names `make photos`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

import numpy as np

from attribnet.lab.datasets import packaged_photos

EXTRA_HINT = "run `make upscalers` (pip install -e '.[upscalers]')"
NATIVE_HINT = "run `make upscalers` as root, or apt-get install -y libvulkan1 libomp5"
SPLITS = ("train", "val", "test")
COLOURS = ("rgb", "grey")


class MissingExtraError(ImportError):
    """A package (or a native library it needs) of the optional `upscalers` extra is missing."""


def import_extra(module: str, distribution: str) -> ModuleType:
    """Imports a module of the `upscalers` extra, or raises one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if ".so" in str(exc) or "DLL" in str(exc):
            raise MissingExtraError(f"{distribution} cannot load a native library ({exc}): {NATIVE_HINT}") from None
        raise MissingExtraError(f"{distribution} is not installed (the optional upscalers extra): {EXTRA_HINT}") from None


def distribution_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Photo:
    """One photograph: where it comes from, its scene (the unit of the split), its colour and licence."""

    name: str
    distribution: str  # the Python distribution or Debian package that ships it
    loader: str  # module:function, or module:function:argument; "debian" for a packaged photo
    scene: str
    colour: str  # "rgb" or "grey"
    licence: str  # as the package states it for this photo


UNSTATED = "not stated per image (package: {})"
WHEEL_PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "scikit-image", "skimage.data:astronaut", "astronaut", "rgb", "Public Domain"),
    Photo("chelsea", "scikit-image", "skimage.data:chelsea", "chelsea", "rgb", "CC0-1.0"),
    Photo("coffee", "scikit-image", "skimage.data:coffee", "coffee", "rgb", "CC0-1.0"),
    Photo("hubble", "scikit-image", "skimage.data:hubble_deep_field", "hubble", "rgb", "Public Domain"),
    Photo("ihc", "scikit-image", "skimage.data:immunohistochemistry", "ihc", "rgb", "no known copyright restrictions"),
    Photo("motorcycleleft", "scikit-image", "skimage.data:stereo_motorcycle:0", "motorcycle", "rgb", UNSTATED.format("BSD-3-Clause")),
    Photo("motorcycleright", "scikit-image", "skimage.data:stereo_motorcycle:1", "motorcycle", "rgb", UNSTATED.format("BSD-3-Clause")),
    Photo("retina", "scikit-image", "skimage.data:retina", "retina", "rgb", "CC0-1.0"),
    Photo("rocket", "scikit-image", "skimage.data:rocket", "rocket", "rgb", "Public Domain"),
    Photo("china", "scikit-learn", "sklearn.datasets:load_sample_image:china.jpg", "china", "rgb", "CC-BY-2.0"),
    Photo("flower", "scikit-learn", "sklearn.datasets:load_sample_image:flower.jpg", "flower", "rgb", "CC-BY-2.0"),
    Photo("gracehopper", "matplotlib", "matplotlib.cbook:get_sample_data:grace_hopper.jpg", "gracehopper", "rgb", "Public Domain"),
    Photo("brick", "scikit-image", "skimage.data:brick", "brick", "grey", "CC0-1.0"),
    Photo("camera", "scikit-image", "skimage.data:camera", "camera", "grey", "CC0-1.0"),
    Photo("coins", "scikit-image", "skimage.data:coins", "coins", "grey", "no known copyright restrictions"),
    Photo("grass", "scikit-image", "skimage.data:grass", "grass", "grey", "CC0-1.0"),
    Photo("gravel", "scikit-image", "skimage.data:gravel", "gravel", "grey", "CC0-1.0"),
    Photo("moon", "scikit-image", "skimage.data:moon", "moon", "grey", UNSTATED.format("BSD-3-Clause")),
    Photo("aero", "PyWavelets", "pywt.data:aero", "aero", "grey", UNSTATED.format("MIT")),
    Photo("ascent", "PyWavelets", "pywt.data:ascent", "ascent", "grey", "Public Domain"),
)
DEBIAN_PHOTOS: tuple[Photo, ...] = tuple(
    Photo(entry["name"], entry["package"], "debian", entry["name"], entry["colour"], entry["licence"])
    for entry in packaged_photos.catalogue()
)
PHOTOS = WHEEL_PHOTOS + DEBIAN_PHOTOS
PHOTO_NAMES = tuple(p.name for p in PHOTOS)
_PACKAGED = {entry["name"]: entry for entry in packaged_photos.catalogue()}
_BY_NAME = {p.name: p for p in PHOTOS}


def photo(name: str) -> Photo:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown photo {name!r} (have {', '.join(PHOTO_NAMES)})") from None


def _call_loader(spec: Photo):
    if spec.loader == "debian":
        try:
            return packaged_photos.load(_PACKAGED[spec.name])
        except packaged_photos.MissingPackageError as exc:
            raise MissingExtraError(str(exc)) from None
    module_name, function, *argument = spec.loader.split(":")
    module = import_extra(module_name, spec.distribution)
    if module_name == "matplotlib.cbook":
        from PIL import Image

        with Image.open(module.get_sample_data(argument[0], asfileobj=False)) as image:
            return np.asarray(image.convert("RGB"))
    loaded = getattr(module, function)
    if not argument:
        return loaded()
    if argument[0].isdigit():
        return loaded()[int(argument[0])]
    return loaded(argument[0])


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The photograph as uint8 HxWx3 (grey photos with three equal channels); read-only."""
    spec = photo(name)
    array = np.asarray(_call_loader(spec))
    if array.dtype != np.uint8:
        raise ValueError(f"photo {name}: expected uint8 pixels, got {array.dtype}")
    if spec.colour == "grey":
        array = np.repeat((array if array.ndim == 2 else array[..., 0])[..., None], 3, axis=2)
    array = np.ascontiguousarray(array[..., :3])
    array.setflags(write=False)
    return array


def photo_record(name: str) -> dict:
    """What the manifest says of a photo: origin, package version, shape and a digest of its pixels."""
    spec = photo(name)
    array = load_photo(name)
    packaged = spec.loader == "debian"
    record = {
        "distribution": spec.distribution,
        "version": (packaged_photos.package_version if packaged else distribution_version)(spec.distribution),
        "loader": spec.loader,
        "scene": spec.scene,
        "colour": spec.colour,
        "licence": spec.licence,
        "shape": list(array.shape),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
    }
    if packaged:
        entry = _PACKAGED[name]
        record.update(registry="debian", file=entry["path"], member=entry["member"], author=entry["author"],
                      licence_source=entry["licence_source"], file_sha256=entry["sha256"])
    return record


def split_photos(names: Sequence[str], seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15) -> dict[str, str]:
    """Photo -> split, decided per scene: a seeded shuffle of the scenes of each colour, the first
    share to test, the next to val, the rest to train (at least one scene each when there are
    three or more), so both colours reach every split and no scene is in two splits."""
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    specs = [photo(n) for n in names]
    scenes_of = {c: sorted({p.scene for p in specs if p.colour == c}) for c in COLOURS}
    if len({p.scene for p in specs}) < 3:
        raise ValueError(f"a photo split needs photos of at least 3 scenes, got {sorted({p.scene for p in specs})}")
    rng = np.random.default_rng([seed, 0x5CE7E])
    split_of_scene: dict[str, str] = {}
    for colour in COLOURS:
        scenes = [scenes_of[colour][i] for i in rng.permutation(len(scenes_of[colour]))]
        n_test = max(1, round(len(scenes) * test_fraction)) if len(scenes) >= 3 else 0
        n_val = max(1, round(len(scenes) * val_fraction)) if len(scenes) >= 3 else 0
        for position, scene in enumerate(scenes):
            split_of_scene[scene] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    _ensure_every_split(split_of_scene)
    return {p.name: split_of_scene[p.scene] for p in specs}


def _ensure_every_split(split_of_scene: dict[str, str]) -> None:
    """With few scenes of one colour, move train scenes (in name order) so every split has one."""
    for name in ("test", "val"):
        if name not in split_of_scene.values():
            train = sorted(s for s, split in split_of_scene.items() if split == "train")
            split_of_scene[train[0]] = name
