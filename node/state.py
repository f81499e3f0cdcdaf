"""The layout of a node's state folder (STATE_DIR): what the node keeps, and where.

  head/             the trained head (head.weights.h5 + head.json), what `node serve` loads
  runs/             one folder per head-training run (config, history, checkpoints)
  finetune-runs/    one folder per FedAvg fine-tuning step
  bundles/<digest>  every bundle received through Flower, verified; `bundle` links the last one
  node.secret       the node's identity secret (0600), created on first use
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from node.config import NodeConfig

log = logging.getLogger(__name__)

HEAD_DIR = "head"
RUNS_DIR = "runs"
FINETUNE_RUNS_DIR = "finetune-runs"
BUNDLES_DIR = "bundles"
CURRENT_BUNDLE = "bundle"  # STATE_DIR/bundle -> bundles/<digest>, the last verified bundle
SECRET_FILE = "node.secret"


class StateError(ValueError):
    """A state folder entry that cannot be used (an empty secret file); the message names it."""


def head_dir(config: NodeConfig) -> Path:
    """Where this node's head lives (written by training, read by serving)."""
    return Path(config.state_dir) / HEAD_DIR


def node_secret(config: NodeConfig) -> str:
    """The node's identity secret; created (0600) on first start so restarts keep the same identity."""
    path = Path(config.serve.secret_file or Path(config.state_dir) / SECRET_FILE)
    if path.is_file():
        value = path.read_text().strip()
        if not value:
            raise StateError(f"serve.secret_file {path}: empty")
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    log.info("created node secret %s", path)
    return value
