"""The coordinator's side of the paper's weights: a primary-module HDF5 file -> a signed bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from shared_backbone.model import paper_weights
from shared_backbone.model import bundle, signing

log = logging.getLogger(__name__)


def import_paper_weights(
    h5_path: str | Path,
    out_dir: str | Path,
    private_key_path: str | Path,
    *,
    normstats_dir: str | Path | None = None,
    version: str | None = None,
) -> bundle.Bundle:
    """Publishes the paper's primary module as a bundle whose `source` names the file and its sha256."""
    key = signing.load_private_key(private_key_path)
    primary, spec, paper = paper_weights.import_primary(h5_path, normstats_dir)
    published = bundle.write_bundle(
        out_dir,
        primary,
        spec,
        key,
        version=version or f"paper-{Path(h5_path).stem}",
        source=paper.provenance(),
    )
    log.info("wrote bundle %s (version %s, digest %s)", published.path, published.version, published.short_digest)
    return published
