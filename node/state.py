"""The layout of a node's state folder (STATE_DIR): what the node keeps, and where.

  head/             the trained head (head.weights.h5 + head.json), what `node serve` loads
  runs/             one folder per head-training run (config, history, checkpoints)
  finetune-runs/    one folder per FedAvg fine-tuning step
  bundles/<digest>  every bundle received through Flower, verified; `bundle` links the last one
  node.secret       the node's identity secret (0600, never sent anywhere), created on first use
  enrolment.token   the one-time enrolment token the coordinator admin issued for this node (0600)
  coordinator.pub   the coordinator's public key, fetched by `node join` and checked against its fingerprint
  reference/<digest> the reference set fetched by `node join`, verified against the bundle's signed digest
  data/<source>     `node join`: a link to the organisation's own images (when --images is not already such a root)
  node.yaml         `node join`: the node's config (`attribnet node serve --config STATE_DIR/node.yaml`)
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from node.config import NodeConfig
from shared_backbone.model.signing import write_private

log = logging.getLogger(__name__)

HEAD_DIR = "head"
RUNS_DIR = "runs"
FINETUNE_RUNS_DIR = "finetune-runs"
BUNDLES_DIR = "bundles"
CURRENT_BUNDLE = "bundle"  # STATE_DIR/bundle -> bundles/<digest>, the last verified bundle
SECRET_FILE = "node.secret"
ENROLMENT_TOKEN_FILE = "enrolment.token"
COORDINATOR_KEY_FILE = "coordinator.pub"
REFERENCE_DIR = "reference"
DATA_DIR = "data"
NODE_CONFIG_FILE = "node.yaml"


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
    value = secrets.token_urlsafe(32)
    try:
        write_private(path, (value + "\n").encode())
    except FileExistsError:  # another process of this node created it first: use that one
        return node_secret(config)
    log.info("created node secret %s", path)
    return value


def enrolment_token_path(config: NodeConfig) -> Path:
    return Path(config.serve.enrolment_token_file or Path(config.state_dir) / ENROLMENT_TOKEN_FILE)


def enrolment_token(config: NodeConfig) -> str:
    """The admin's enrolment token for this node ("" when there is none: the node id must be bound already)."""
    path = enrolment_token_path(config)
    if not path.is_file():
        if config.serve.enrolment_token_file:
            raise StateError(f"serve.enrolment_token_file {path}: not found")
        return ""
    value = path.read_text().strip()
    if not value:
        raise StateError(f"enrolment token file {path}: empty")
    return value
