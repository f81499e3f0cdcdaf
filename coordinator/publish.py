"""Publishing a trained primary module as a signed backbone bundle."""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.reference import describe_reference_set
from coordinator.train_primary import read_run
from shared_backbone.training.fit import timestamp
from shared_backbone.model import signing
from shared_backbone.model.bundle import Bundle, write_bundle

log = logging.getLogger(__name__)


def publish(
    run_dir: str | Path,
    out_dir: str | Path,
    private_key_path: str | Path,
    *,
    version: str | None = None,
    parent: str | None = None,
    reference: str | Path | None = None,
) -> Bundle:
    """Reads the run's primary module and writes it, signed, as a bundle in out_dir.

    The manifest carries the run's validation/test metrics so nodes can see what they get, and,
    with `reference` (a folder written by `write_reference_set`), the reference set's digest and
    sources, so every node can verify its copy.
    """
    model, spec, metrics = read_run(run_dir)
    key = signing.load_private_key(private_key_path)
    version = version or timestamp()
    bundle = write_bundle(
        out_dir, model, spec, key, version=version, parent=parent, metrics=metrics,
        source={"run_dir": str(Path(run_dir).resolve())},
        reference=describe_reference_set(reference) if reference else None,
    )
    log.info("published bundle %s version %s (digest %s)", bundle.path, bundle.version, bundle.short_digest)
    return bundle
