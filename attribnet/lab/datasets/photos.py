"""The real-photo corpus: photographs that ship inside Python wheels, so nothing is downloaded.

Twenty photographs of nineteen scenes from scikit-image (the images inside its wheel, never the
ones it fetches with pooch), scikit-learn's sample images, PyWavelets' test images and
matplotlib's sample data. They are split into train/val/test by *scene* (the two motorcycle
photos are one stereo pair, one scene), so no test patch shares a photograph, or a view of the
same scene, with a training patch.

The packages are the optional `upscalers` extra; `import_extra` names the Make target when one
is missing.
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
    """One photograph: where it comes from, its scene (the unit of the split) and its colour."""

    name: str
    distribution: str
    loader: str  # module:function, or module:function:argument
    scene: str
    colour: str  # "rgb" or "grey"


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "scikit-image", "skimage.data:astronaut", "astronaut", "rgb"),
    Photo("chelsea", "scikit-image", "skimage.data:chelsea", "chelsea", "rgb"),
    Photo("coffee", "scikit-image", "skimage.data:coffee", "coffee", "rgb"),
    Photo("hubble", "scikit-image", "skimage.data:hubble_deep_field", "hubble", "rgb"),
    Photo("ihc", "scikit-image", "skimage.data:immunohistochemistry", "ihc", "rgb"),
    Photo("motorcycleleft", "scikit-image", "skimage.data:stereo_motorcycle:0", "motorcycle", "rgb"),
    Photo("motorcycleright", "scikit-image", "skimage.data:stereo_motorcycle:1", "motorcycle", "rgb"),
    Photo("retina", "scikit-image", "skimage.data:retina", "retina", "rgb"),
    Photo("rocket", "scikit-image", "skimage.data:rocket", "rocket", "rgb"),
    Photo("china", "scikit-learn", "sklearn.datasets:load_sample_image:china.jpg", "china", "rgb"),
    Photo("flower", "scikit-learn", "sklearn.datasets:load_sample_image:flower.jpg", "flower", "rgb"),
    Photo("gracehopper", "matplotlib", "matplotlib.cbook:get_sample_data:grace_hopper.jpg", "gracehopper", "rgb"),
    Photo("brick", "scikit-image", "skimage.data:brick", "brick", "grey"),
    Photo("camera", "scikit-image", "skimage.data:camera", "camera", "grey"),
    Photo("coins", "scikit-image", "skimage.data:coins", "coins", "grey"),
    Photo("grass", "scikit-image", "skimage.data:grass", "grass", "grey"),
    Photo("gravel", "scikit-image", "skimage.data:gravel", "gravel", "grey"),
    Photo("moon", "scikit-image", "skimage.data:moon", "moon", "grey"),
    Photo("aero", "PyWavelets", "pywt.data:aero", "aero", "grey"),
    Photo("ascent", "PyWavelets", "pywt.data:ascent", "ascent", "grey"),
)
PHOTO_NAMES = tuple(p.name for p in PHOTOS)
_BY_NAME = {p.name: p for p in PHOTOS}


def photo(name: str) -> Photo:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown photo {name!r} (have {', '.join(PHOTO_NAMES)})") from None


def _call_loader(spec: Photo):
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
    return {
        "distribution": spec.distribution,
        "version": distribution_version(spec.distribution),
        "loader": spec.loader,
        "scene": spec.scene,
        "colour": spec.colour,
        "shape": list(array.shape),
        "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
    }


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
