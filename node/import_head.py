"""A node's side of the paper's weights: an attribution HDF5 file -> a head bound to a verified bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from shared_backbone.model import paper_weights
from shared_backbone.model import bundle, heads, signing
from shared_backbone.model.calibration import Calibration

log = logging.getLogger(__name__)


def import_paper_head(
    h5_path: str | Path,
    backbone_dir: str | Path,
    source: str,
    out_dir: str | Path,
    *,
    public_key_path: str | Path | None = None,
    threshold: float = heads.DEFAULT_THRESHOLD,
) -> heads.Head:
    """Verifies the bundle, refuses a file whose trunk is not the bundle's, saves the head (identity calibration).

    The paper's heads come without held-out data here, so their raw sigmoid is kept as the score.
    """
    if not source:
        raise ValueError("a head needs a source name (--source)")
    out_dir = Path(out_dir)
    if (out_dir / heads.HEAD_META).exists():
        raise FileExistsError(f"{out_dir} already holds a head; choose a new folder")
    if public_key_path:
        key = signing.load_public_key(public_key_path)
    else:
        key = None
        log.warning("no public key given: %s's file digests are checked, its signature is NOT", backbone_dir)
    backbone = bundle.load_bundle(backbone_dir, key)
    model, paper = paper_weights.import_head(h5_path, backbone)
    head = heads.save_head(out_dir, model, source=source, bundle=backbone, calibration=Calibration(), threshold=threshold)
    log.info("wrote head %s for source %s from %s (sha256 %s)", out_dir, source, paper.name, paper.sha256[:12])
    return head
