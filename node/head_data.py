"""What a node may train its head on: the who-sees-what rule, enforced and reported.

A node is one organisation. In the default **strict** access mode its head sees
  (a) its own generator's images: `data.root/<source>/` (positives), and public real images it
      holds (`data.root/<real source>/`, negatives),
  (b) the coordinator's reference set (`reference`): real images and the fakes the coordinator
      chose to publish, verified against the digest the signed bundle announces (negatives),
  (c) negatives it makes itself from (a) and (b) (`shared_backbone.data.negatives`).
Another source's folder found under `data.root` is reported and ignored. The paper's setting, in
which every head sees every source, is the explicit opt-in `access: shared` (for comparison):
then every other folder under `data.root` is a negative too.

Splits: the node's and the reference set's images are split by the project's deterministic hash
(train / val / test), and a further `calibration_fraction` of the whole is carved out of train:
`val` selects the epoch, `calib` fits the calibration and the conformal reference (never seen by
training or model selection), `test` is for metrics. Every node carves the reference set the same
way, so its calib split is the network's *common* calibration negatives.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from node.config import NodeConfig
from shared_backbone.data.datasets import DatasetIndex, Sample, scan_dataset, split_off, split_samples
from shared_backbone.data.reference_set import verify_reference
from shared_backbone.model.bundle import Bundle

log = logging.getLogger(__name__)

STRICT, SHARED = "strict", "shared"
ACCESS_MODES = (STRICT, SHARED)
SPLITS = ("train", "val", "calib", "test")


class DataAccessError(ValueError):
    """Data a node may not, or cannot, train on; the message says which and why."""


@dataclass
class HeadData:
    """The node's images per split: own positives, negatives it may use, and the access report."""

    positives: dict[str, list[Sample]]
    negatives: dict[str, list[Sample]]
    report: dict[str, Any] = field(default_factory=dict)
    grouped: bool = False  # the node's dataset declares file groups (photos): its images are exchangeable per group

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {"positives": len(self.positives[s]), "negatives": len(self.negatives[s])} for s in SPLITS}


def scan_node_folder(root: str, config: NodeConfig) -> DatasetIndex:
    """A folder-per-source set as this node sees it; which sources are real does not matter to a head."""
    return scan_dataset(dataclasses.replace(config.data, root=root, real_sources=[], source_ids=""))


def node_splits(index: DatasetIndex, config: NodeConfig) -> dict[str, list[Sample]]:
    """train / val / calib / test of a scanned folder, deterministic for the node's split seed."""
    data = config.data
    splits = split_samples(index, data.split_seed, data.val_fraction, data.test_fraction)
    share = config.calibration_fraction / max(1.0 - data.val_fraction - data.test_fraction, 1e-9)
    splits["train"], splits["calib"] = split_off(splits["train"], share, data.split_seed)
    return splits


def _reference(config: NodeConfig, bundle: Bundle, announced_digest: str) -> DatasetIndex | None:
    """The reference set, only if its content is exactly what the coordinator announced."""
    if not config.reference:
        return None
    signed = (bundle.manifest.get("reference") or {}).get("digest", "")
    if signed and announced_digest and announced_digest != signed:
        raise DataAccessError(
            f"the run announces reference set {announced_digest[:12]}… but bundle {bundle.short_digest} signs "
            f"{signed[:12]}…: the signed one is the coordinator's; refusing both"
        )
    digest = signed or announced_digest
    if not digest:
        raise DataAccessError(
            f"reference {config.reference}: bundle {bundle.short_digest} announces no reference set, so this "
            "folder cannot be verified; use the coordinator's published set (coordinator publish --reference)"
        )
    verify_reference(config.reference, digest)
    return scan_node_folder(config.reference, config)


def _local_negatives(local: DatasetIndex, config: NodeConfig) -> tuple[list[str], list[str]]:
    """(used, ignored) other source folders under data.root.

    Public real images (`data.real_sources`) are the node's to use; another generator's images
    only with `access: shared`.
    """
    reals = [s for s in local.sources if s != config.source and s in config.data.real_sources]
    others = [s for s in local.sources if s != config.source and s not in reals]
    if config.access == SHARED:
        if others:
            log.warning("node %s: access shared (the paper's comparison setting): training on %s as negatives",
                        config.source, ", ".join(others))
        return reals + others, []
    if others:
        log.warning("node %s: %s holds other sources' images (%s); strict access ignores them (a node trains "
                    "only on its own images, public reals, the reference set and negatives it makes)", config.source,
                    local.root, ", ".join(others))
    return reals, others


def head_data(config: NodeConfig, bundle: Bundle, *, announced_reference_digest: str = "") -> HeadData:
    """The node's images per split under its access mode; refuses what it may not or cannot use."""
    if config.access not in ACCESS_MODES:
        raise DataAccessError(f"node config: access must be one of {ACCESS_MODES}, got {config.access!r}")
    if not config.source:
        raise DataAccessError("node config: source (this node's generator folder name) is not set")
    reference = _reference(config, bundle, announced_reference_digest)  # first: a stale copy is the likelier fault
    local = scan_node_folder(config.data.root, config)
    if config.source not in local.sources:
        raise DataAccessError(f"{local.root}: no folder for source {config.source!r} (have {', '.join(local.sources)})")
    used, ignored = _local_negatives(local, config)
    local_splits = node_splits(local, config)
    reference_splits = node_splits(reference, config) if reference else {s: [] for s in SPLITS}
    own_in_reference = reference is not None and config.source in reference.sources
    if own_in_reference:
        log.warning("node %s: the reference set holds this source's own images; they are left out", config.source)
    positives = {s: [x for x in local_splits[s] if x.source == config.source] for s in SPLITS}
    negatives = {
        s: [x for x in local_splits[s] if x.source in used] + [x for x in reference_splits[s] if x.source != config.source]
        for s in SPLITS
    }
    report = {
        "access": config.access,
        "own_source": config.source,
        "reference_sources": sorted(s for s in (reference.sources if reference else []) if s != config.source),
        "reference_digest": (bundle.manifest.get("reference") or {}).get("digest") or announced_reference_digest or None,
        "local_negative_sources": used,
        "ignored_local_sources": ignored,
    }
    return HeadData(positives, negatives, report, grouped=local.group_splits is not None)
