"""`attribnet predict`: offline attribution of image files with a backbone bundle and local heads.

One backbone pass per batch gives the fake score and the trunk features; every head scores the
float16 wire-format features, exactly as the network gateway does, so offline answers equal online
ones. A file that cannot be read gets an error line and the rest are still answered; the exit code
is 1 when any file failed. An image too small to judge (shorter side below the backbone's input
size) is never upscaled: it is answered `unknown` with an `out_of_scope` reason (not an error).

--json, one object per image: path, fake_score, attribution, reason (the rule's exit that gave it:
`shared_backbone/model/rule.py` REASONS, e.g. `atypical`, `no_candidate`), prediction_set, alpha,
typicality_alpha, rank_by, backbone; `heads` per source: raw, calibrated, p_value (when the head has a
conformal reference), typicality (the image's typicality score, when the head has a typicality
model) and typicality_p_value (when it also has a usable reference); `out_of_scope` instead of
scores for an image too small to judge; `error` for a file that could not be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("attribnet.predict")


@dataclass
class Item:
    """One input file: its decoded image and model input while in flight, or why it could not be read."""

    path: Path
    error: str | None = None
    rgb: Any = None
    model_input: Any = None
    out_of_scope: str = ""  # why it is not judged (too small), answered `unknown`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="offline attribution of image files/folders with a bundle and local heads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--config", help="YAML with PredictConfig keys (backbone, heads, public_key, ...)")
    parser.add_argument("--backbone", help="backbone bundle folder")
    parser.add_argument("--head", dest="heads", action="append", metavar="HEAD", help="head folder (repeat for several)")
    parser.add_argument("--public-key", help="coordinator public key; without it only file digests are checked")
    parser.add_argument("--heatmap", dest="heatmap_dir", metavar="DIR", help="write CAM / Grad-CAM overlay PNGs here")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")
    parser.add_argument("--batch-size", type=int, help="images per backbone pass (default 32)")
    parser.add_argument("--fake-threshold", type=float, help="primary score below which an image is `real` (default 0.5)")
    parser.add_argument("--alpha", type=float, help="significance of the conformal prediction set (default 0.05)")
    parser.add_argument("--typicality-alpha", type=float,
                        help="a winner whose typicality p-value is at most this is `unknown` (default 0.05)")
    parser.set_defaults(handler=run)


def collect_items(paths: list[str]) -> list[Item]:
    """Files as given, folders expanded recursively to their images (sorted); missing paths become errors."""
    from shared_backbone.data.datasets import expand_image_paths

    return [Item(path, error=error) for path, error in expand_image_paths(paths)]


def _heatmap_path(directory: Path, source_path: Path, used: set[Path]) -> Path:
    """`<stem>_heatmap.png`, with `_2`, `_3`... when two inputs share a stem."""
    candidate = directory / f"{source_path.stem}_heatmap.png"
    counter = 2
    while candidate in used:
        candidate = directory / f"{source_path.stem}_heatmap_{counter}.png"
        counter += 1
    used.add(candidate)
    return candidate


def _format_line(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{record['path']}: error: {record['error']}"
    if "out_of_scope" in record:
        return f"{record['path']}: {record['attribution']} (out of scope: {record['out_of_scope']})"
    parts = [f"{record['path']}: fake {record['fake_score']:.4f}"]
    for source, scores in record["heads"].items():
        p_value = f" p {scores['p_value']:.3f}" if "p_value" in scores else ""
        typical = f" typical-p {scores['typicality_p_value']:.3f}" if "typicality_p_value" in scores else ""
        parts.append(f"{source} raw {scores['raw']:.4f} cal {scores['calibrated']:.4f}{p_value}{typical}")
    kept = ", ".join(record["prediction_set"]) or "none"
    line = " | ".join(parts) + f" -> {record['attribution']} [{record['reason']}] (set at alpha {record['alpha']:g}: {kept})"
    if "heatmap" in record:
        line += f"  [{record['heatmap_method']} of {record['heatmap_model']}: {record['heatmap']}]"
    return line


def _emit(record: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(record, sort_keys=True) if as_json else _format_line(record), flush=True)


def _heatmap_targets(answers, heads_by_source) -> list[str]:
    """Which model explains each image: the attributed head, else the best head if the image is fake, else the primary."""
    from shared_backbone.model.rule import REAL

    targets = []
    for answer in answers:
        if answer.attribution in heads_by_source:
            targets.append(answer.attribution)
        elif answer.attribution != REAL and answer.prediction_set:
            targets.append(answer.prediction_set[0])  # the best-scoring source still in the set
        else:
            targets.append("primary")
    return targets


def _write_heatmaps(batch, answers, features, attributor, heads_by_source, directory: Path, used: set[Path]) -> list[dict]:
    import numpy as np

    from shared_backbone.model import heatmaps

    targets = _heatmap_targets(answers, heads_by_source)
    extras: list[dict] = [{} for _ in batch]
    for target in sorted(set(targets)):
        index = [i for i, t in enumerate(targets) if t == target]
        if target == "primary":
            maps, method = heatmaps.compute_heatmaps(attributor.primary, np.stack([batch[i].model_input for i in index]))
        else:
            maps, method = heatmaps.compute_heatmaps(heads_by_source[target].model, features[index].astype(np.float32))
        for heat, i in zip(maps, index):
            path = heatmaps.save_heatmap(
                _heatmap_path(directory, batch[i].path, used), batch[i].rgb, heat, attributor.spec.mode
            )
            extras[i] = {"heatmap": str(path), "heatmap_method": method, "heatmap_model": target}
    return extras


def _head_record(answer, source: str) -> dict[str, float]:
    record = {"raw": answer.raw[source], "calibrated": answer.calibrated[source]}
    if source in answer.p_values:
        record["p_value"] = answer.p_values[source]
    if source in answer.typicality:
        record["typicality"] = answer.typicality[source]
    if source in answer.typicality_p_values:
        record["typicality_p_value"] = answer.typicality_p_values[source]
    return record


def _process_chunk(chunk: list[Item], attributor, heads_by_source, heatmap_dir, used, as_json: bool) -> None:
    """Answers the readable items of a chunk in one backbone pass; emits every item in input order."""
    import numpy as np

    batch = [item for item in chunk if item.error is None and not item.out_of_scope]
    records: dict[int, dict[str, Any]] = {}
    if batch:
        fake_scores, features = attributor.run_backbone(np.stack([item.model_input for item in batch]))
        answers = attributor.attribute_features(fake_scores, features)
        extras = (
            _write_heatmaps(batch, answers, features, attributor, heads_by_source, heatmap_dir, used)
            if heatmap_dir
            else [{} for _ in batch]
        )
        for item, answer, extra in zip(batch, answers, extras):
            records[id(item)] = {
                "path": str(item.path),
                "fake_score": answer.fake_score,
                "heads": {s: _head_record(answer, s) for s in answer.raw},
                "attribution": answer.attribution,
                "reason": answer.reason,
                "prediction_set": answer.prediction_set,
                "alpha": attributor.settings.alpha,
                "typicality_alpha": attributor.settings.typicality_alpha,
                "rank_by": attributor.settings.rank_by,
                "backbone_version": attributor.bundle.version,
                "backbone_digest": attributor.bundle.digest,
                **extra,
            }
    for item in chunk:
        if item.out_of_scope:
            records[id(item)] = _out_of_scope_record(item, attributor)
        _emit(records.get(id(item)) or {"path": str(item.path), "error": item.error}, as_json)
        item.rgb = item.model_input = None


def _out_of_scope_record(item: Item, attributor) -> dict[str, Any]:
    """An image answered without judging it: `unknown` and why (no scores)."""
    from shared_backbone.model.rule import UNKNOWN

    return {"path": str(item.path), "attribution": UNKNOWN, "reason": "out_of_scope", "out_of_scope": item.out_of_scope, "heads": {},
            "prediction_set": [], "backbone_version": attributor.bundle.version,
            "backbone_digest": attributor.bundle.digest}


def _load_config(args: argparse.Namespace):
    from attribnet.config import PredictConfig
    from shared_backbone.config import load_config

    config = load_config(
        PredictConfig,
        args.config,
        {
            "backbone": args.backbone,
            "heads": args.heads,
            "public_key": args.public_key,
            "batch_size": args.batch_size,
            "fake_threshold": args.fake_threshold,
            "alpha": args.alpha,
            "typicality_alpha": args.typicality_alpha,
            "heatmap_dir": args.heatmap_dir,
        },
    )
    if not config.backbone:
        raise ValueError("no backbone bundle given (--backbone or `backbone:` in --config)")
    if config.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {config.batch_size}")
    return config


def _load_attributor(config):
    """The bundle (signature checked when a public key is given) and its heads, ready to decide."""
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import heads as heads_lib
    from shared_backbone.model import signing
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.rule import RuleSettings

    if config.public_key:
        key = signing.load_public_key(config.public_key)
    else:
        key = None
        log.warning("no public key given: %s's file digests are checked, its signature is NOT", config.backbone)
    backbone = bundle_lib.load_bundle(config.backbone, key)
    heads = [heads_lib.load_head(path, backbone) for path in config.heads]
    attributor = OfflineAttributor(backbone, heads, RuleSettings(config.fake_threshold, config.alpha, config.tie_margin,
                                                                       config.typicality_alpha, config.rank_by))
    log.info(
        "backbone %s (%s, %s %dpx), heads: %s", backbone.version, backbone.short_digest, attributor.spec.mode,
        attributor.spec.image_size, ", ".join(head.source for head in heads) or "none",
    )
    return attributor


def _read_chunk(chunk: list[Item], spec) -> None:
    """Decodes and preprocesses every readable item of a chunk; a bad file keeps its error."""
    from shared_backbone.model.preprocessing import ImageDecodeError, ImageTooSmall, load_image, to_model_input

    for item in chunk:
        if item.error is None:
            try:
                item.rgb = load_image(item.path, spec.image_size, refuse_upscaling=True)
                item.model_input = to_model_input(item.rgb, spec)
            except ImageTooSmall as exc:
                item.out_of_scope = str(exc)
            except ImageDecodeError as exc:
                item.error = str(exc)


def run(args: argparse.Namespace) -> int:
    from shared_backbone.runtime.device import configure_tensorflow

    config = _load_config(args)
    configure_tensorflow()
    attributor = _load_attributor(config)
    heads_by_source = {head.source: head for head in attributor.heads}
    heatmap_dir = Path(config.heatmap_dir) if config.heatmap_dir else None
    used: set[Path] = set()
    if heatmap_dir:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    items = collect_items(args.paths)
    for start in range(0, len(items), config.batch_size):
        chunk = items[start : start + config.batch_size]
        _read_chunk(chunk, attributor.spec)
        _process_chunk(chunk, attributor, heads_by_source, heatmap_dir, used, args.json)
    failed = sum(item.error is not None for item in items)
    if failed:
        print(f"attribnet predict: {failed} of {len(items)} file(s) could not be read", file=sys.stderr)
    elif not items:
        print("attribnet predict: no image files found", file=sys.stderr)
        return 1
    log.info("answered %d image(s), %d failed", len(items) - failed, failed)
    return 1 if failed else 0
