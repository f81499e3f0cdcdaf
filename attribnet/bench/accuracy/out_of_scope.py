"""Images that are none of the network's sources, answered by the full open-set rule.

The corpus (`attribnet.lab.datasets.out_of_scope`: noise, text, shapes, plots, gradients, photo
crops, tiny images, ...) goes through `OfflineAttributor`, the same backbone + heads + rule code
`attribnet predict` runs and the gateway's answers are tested against. A named source for such an
image is a pinned answer: the network claimed what no node made. The known sources' test images
go through the same code, for the accuracy and conformal coverage the rule keeps on them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbone.config import DataConfig
from shared_backbone.model.attributor import OfflineAttributor
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.heads import Head
from shared_backbone.model.preprocessing import load_image, to_model_inputs
from shared_backbone.model.rule import AMBIGUOUS, REAL, UNKNOWN, RuleSettings

log = logging.getLogger(__name__)

CORPUS = "out_of_scope"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NOT_NAMED = (REAL, UNKNOWN, AMBIGUOUS)


def corpus(workdir: Path, image_size: int, per_kind: int, source_dataset: DataConfig) -> Path:
    """The out-of-scope corpus at WORKDIR/out_of_scope, written once (its manifest, written last, marks it done).

    `source_dataset` is what the content-matched kinds (resampled and JPEG'd reals and fakes) start
    from: a view of the reals and the held-out generators, so no known source's image counts as
    out of scope.
    """
    from attribnet.lab.datasets.out_of_scope import MANIFEST_FILE, write_out_of_scope

    out = workdir / CORPUS
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        if (manifest["image_size"], manifest["per_kind"]) == (image_size, per_kind):
            return out
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    shutil.rmtree(out, ignore_errors=True)  # another size, or a killed run's partial corpus
    write_out_of_scope(out, image_size=image_size, per_kind=per_kind, seed=0, source_dataset=source_dataset.root)
    return out


def corpus_files(root: Path) -> dict[str, list[Path]]:
    """{kind: image files}: the corpus holds one folder per kind."""
    from attribnet.lab.datasets.out_of_scope import KINDS

    files = {kind: sorted(p for p in (root / kind).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for kind in KINDS
             if (root / kind).is_dir()}
    if not any(files.values()):
        raise ValueError(f"{root}: no out-of-scope images (expected one folder per kind of {', '.join(KINDS)})")
    return files


def kind_answers(attributor: OfflineAttributor, paths: list[Path], size: int) -> list[str]:
    """Every image's answer, decoded as the gateway decodes it: an image it answers out of scope (too
    small to judge without upscaling) or refuses (too big) is `refused`, never upscaled and judged."""
    answers: list[str | None] = []
    images = []
    for path in paths:
        try:
            images.append(load_image(path, size, refuse_upscaling=True))
            answers.append(None)
        except ValueError as exc:
            log.info("out of scope: %s refused (%s)", path.name, exc)
            answers.append("refused")
    decided = iter(r.attribution for r in attributor.attribute(to_model_inputs(images, attributor.spec))) if images else iter(())
    return [a if a is not None else next(decided) for a in answers]


def out_of_scope_metrics(bundle: Bundle, heads: list[Head], root: Path, settings: RuleSettings) -> dict[str, dict[str, Any]]:
    """{kind: pinned_rate (answered with a named source), unknown/real/ambiguous/refused rates, images}."""
    attributor = OfflineAttributor(bundle, heads, settings)
    table: dict[str, dict[str, Any]] = {}
    for kind, paths in corpus_files(root).items():
        answers = kind_answers(attributor, paths, bundle.input_spec.image_size)
        rate = lambda name: float(np.mean([a == name for a in answers])) if answers else float("nan")  # noqa: E731
        table[kind] = {
            "images": len(answers),
            "pinned_rate": float(np.mean([a not in (*NOT_NAMED, "refused") for a in answers])) if answers else float("nan"),
            "unknown_rate": rate(UNKNOWN), "answered_real_rate": rate(REAL), "ambiguous_rate": rate(AMBIGUOUS),
            "refused_rate": rate("refused"),
        }
    return table


def known_metrics(bundle: Bundle, heads: list[Head], images: list[np.ndarray], truth: list[str], nodes: list[str],
                  settings: RuleSettings) -> dict[str, float]:
    """The same rule on the known sources' test images: accuracy over real + nodes, and conformal coverage."""
    attributor = OfflineAttributor(bundle, heads, settings)
    results = attributor.attribute(to_model_inputs(images, attributor.spec))
    fakes = [t in nodes for t in truth]
    return {
        "alpha": settings.alpha,
        "known_accuracy": float(np.mean([r.attribution == t for r, t in zip(results, truth)])),
        "coverage": float(np.mean([t in r.prediction_set for r, t, f in zip(results, truth, fakes) if f])),
    }
