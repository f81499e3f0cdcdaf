"""The paper's transfer-learning claim, measured: a head on the frozen trunk vs a full model from scratch.

On a benchmark-preset zoo: the coordinator's primary module is trained on every source (the
shared trunk; its time is the network's one-off cost, reported apart). Then, on the same strict
data, the node's own source against real images and nothing else, with the same loop settings:
  head        `node.train_head.train_head`: the frozen trunk + a head, as a node trains it;
  full model  `coordinator.train_primary.train_primary` on the strict folder: the whole primary
              architecture from scratch, whose "fake" class is then exactly the node's source.
Both are scored on the same test split (one-vs-rest accuracy at 0.5, before calibration). Time to
accuracy: from each run's per-epoch history (`fit.json`), the training time until the head's
validation accuracy first comes within 1 point of the full model's at its kept epoch (fit seconds
x epochs needed / epochs run), against the full model's whole training time.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from attribnet.config import TransferBenchConfig

log = logging.getLogger(__name__)

REAL = "real"


def _zoo(out: Path, config: TransferBenchConfig, image_size: int) -> Path:
    from attribnet.lab.datasets.zoo import ZooSettings, write_zoo

    zoo = out / "zoo"
    if not (zoo / "manifest.json").is_file():
        write_zoo(zoo, ZooSettings(image_size=image_size, per_source=config.per_source, seed=config.zoo_seed), workers=2)
    return zoo


def _strict_folder(zoo: Path, out: Path, source: str) -> Path:
    """A dataset of the node's own source and the real images only (links, no copies)."""
    strict = out / "strict"
    strict.mkdir(parents=True, exist_ok=True)
    for name in (REAL, source):
        link = strict / name
        if not link.exists():
            link.symlink_to((zoo / name).resolve(), target_is_directory=True)
    return strict


def _trunk_bundle(zoo: Path, out: Path, config: TransferBenchConfig) -> tuple[Any, float, dict]:
    """The coordinator's bundle trained on the whole zoo, (bundle, seconds, detector metrics)."""
    from coordinator.config import CoordinatorConfig
    from coordinator.publish import publish
    from coordinator.train_primary import train_primary
    from attribnet.lab.datasets.zoo import zoo_data_config
    from shared_backbone.model.bundle import load_bundle
    from shared_backbone.model.signing import generate_keypair, load_public_key

    private_key, public_key = generate_keypair(out / "keys", overwrite=True)
    began = time.monotonic()
    data = zoo_data_config(zoo, mode=config.mode)
    result = train_primary(CoordinatorConfig(data=data, train=config.primary, run_dir=str(out / "trunk-run")), progress=False)
    seconds = time.monotonic() - began
    bundle_dir = out / "bundle"
    if not bundle_dir.exists():
        publish(result.run_dir, bundle_dir, private_key, version="bench-transfer")
    return load_bundle(bundle_dir, load_public_key(public_key)), seconds, result.metrics.get("test", {})


def _history(fit_json: Path) -> dict[str, Any]:
    """What `training.fit` wrote after a run: per-epoch history, best epoch, seconds."""
    return json.loads(fit_json.read_text())


def time_to_accuracy(head_fit: dict[str, Any], full_fit: dict[str, Any], tolerance: float = 0.01) -> dict[str, Any]:
    """Head training seconds until its val accuracy is within `tolerance` of the full model's (kept epoch)."""
    full_val = full_fit["history"]["val_accuracy"]
    target = full_val[max(full_fit["best_epoch"], 1) - 1] - tolerance
    head_val = head_fit["history"]["val_accuracy"]
    epoch = next((i + 1 for i, value in enumerate(head_val) if value >= target), None)
    seconds = None if epoch is None else head_fit["seconds"] * epoch / len(head_val)
    return {"target_val_accuracy": target, "head_epochs_to_target": epoch, "head_seconds_to_target": seconds}


def run_transfer(out: str | Path, config: TransferBenchConfig, image_size: int,
                 progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Trains trunk, head and full model; returns `{head_train_s, full_train_s, head_accuracy, full_accuracy, ...}`."""
    from coordinator.config import CoordinatorConfig
    from coordinator.train_primary import train_primary
    from node.config import NegativesConfig, NodeConfig
    from node.state import RUNS_DIR
    from node.train_head import train_head
    from shared_backbone.config import DataConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("trunk-run", "full-run", "bundle", "node"):  # an earlier run's; the zoo is kept
        shutil.rmtree(out / stale, ignore_errors=True)
    progress(f"transfer: writing a {image_size} px benchmark zoo, {config.per_source} images per source")
    zoo = _zoo(out, config, image_size)
    progress("transfer: training the shared trunk (primary module on every zoo source)")
    bundle, trunk_seconds, trunk_metrics = _trunk_bundle(zoo, out, config)
    strict = DataConfig(root=str(_strict_folder(zoo, out, config.source)), real_sources=[REAL], image_size=image_size,
                        mode=config.mode)
    progress(f"transfer: training the {config.source} head on the frozen trunk ({config.source} vs {REAL})")
    began = time.monotonic()
    # No self-made negatives: head and full model learn from exactly the same images.
    head = train_head(NodeConfig(source=config.source, data=strict, train=config.train, state_dir=str(out / "node"),
                                 negatives=NegativesConfig(count=0)), bundle, progress=False)
    head_seconds = time.monotonic() - began
    progress(f"transfer: training the full model from scratch ({config.source} vs {REAL})")
    began = time.monotonic()
    full = train_primary(CoordinatorConfig(data=strict, train=config.train, run_dir=str(out / "full-run"),
                                           source_aware_trunk=False), progress=False)
    full_seconds = time.monotonic() - began
    head_test, full_test = head.metrics["test"]["raw"], full.metrics["test"]
    head_fit = sorted((out / "node" / RUNS_DIR).glob("*/fit.json"))[-1]
    reach = time_to_accuracy(_history(head_fit), _history(out / "full-run" / "fit.json"))
    return {
        **reach,
        "source": config.source, "data": f"{config.source} vs {REAL} (strict: the node's own images only)",
        "per_source": config.per_source, "image_size": image_size, "mode": config.mode,
        "head_train_s": head_seconds, "full_train_s": full_seconds,
        "head_fit_s": head.metrics["train_seconds"], "full_fit_s": full.metrics["train_seconds"],
        "head_epochs": head.metrics["epochs_run"], "full_epochs": full.metrics["epochs_run"],
        "head_accuracy": head_test["accuracy"], "full_accuracy": full_test["accuracy"],
        "head_auc": head_test["roc_auc"], "full_auc": full_test["roc_auc"],
        "trunk_train_s": trunk_seconds, "trunk_test_accuracy": trunk_metrics.get("accuracy"),
        "test_images": head.metrics["counts"]["test"]["total"],
    }
