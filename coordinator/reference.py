"""The coordinator's reference set: the images every node may train and calibrate against.

It holds the coordinator's real images and the fakes it chooses to publish: of its own
generators, or of sources whose owners agreed (say which: `reference.json` records every source,
its kind and on whose consent it is published). Images of the coordinator's test split are left
out by default, so no node ever trains on an image the network is evaluated on. `publish
--reference` writes the folder's content digest into the signed bundle manifest, and a node
refuses a reference folder whose content differs.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import load_split
from shared_backbone.data.reference_set import folder_digest

DESCRIPTION = "reference.json"
COORDINATOR_OWN = "coordinator's own generator"


def write_reference_set(
    data: DataConfig,
    out: str | Path,
    *,
    fakes: dict[str, str] | None = None,
    include_test: bool = False,
    max_per_source: int = 0,
) -> dict[str, Any]:
    """Copies the dataset's real sources and the `fakes` it may publish ({source: consent}) into `out`.

    Returns the description (also written to OUT/reference.json) with the folder's digest.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"reference folder {out} is not empty; choose a new one")
    index, splits = load_split(data)
    fakes = dict(fakes or {})
    unknown = sorted(set(fakes) - set(index.sources))
    if unknown:
        raise ValueError(f"{index.root}: no source folder {unknown[0]!r} to publish (have {', '.join(index.sources)})")
    published = sorted(index.real_sources) + sorted(fakes)
    kept = [s for name, split in splits.items() if include_test or name != "test" for s in split if s.source in published]
    sources: dict[str, Any] = {}
    for source in published:
        files = sorted((s.path for s in kept if s.source == source), key=lambda p: p.name)
        files = files[:max_per_source] if max_per_source else files
        (out / source).mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, out / source / path.name)
        sources[source] = {"kind": "real" if index.is_real(source) else "fake", "images": len(files),
                           "consent": "real images" if index.is_real(source) else fakes[source]}
    description = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": str(index.root),
        "split_seed": data.split_seed,
        "excluded_splits": [] if include_test else ["test"],
        "sources": sources,
    }
    (out / DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return {**description, "digest": folder_digest(out)}


def describe_reference_set(folder: str | Path) -> dict[str, Any]:
    """What `publish --reference` signs into the bundle: the folder's digest and its sources."""
    folder = Path(folder)
    path = folder / DESCRIPTION
    try:
        sources = json.loads(path.read_text())["sources"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: not a reference set ({DESCRIPTION} missing; write one with "
                                "`attribnet coordinator reference`)") from None
    return {"digest": folder_digest(folder), "sources": sources}
