"""The node's Flower `ClientApp`: verify the coordinator's bundle, train the head locally, reply with metrics.

Node settings come from the SuperNode's `--node-config` (TOML values), keys:
  config       node YAML (optional; the keys below override it)
  source       this node's generator folder name          data-dir    folder with that source's images
  state-dir    where heads, received bundles, the secret live   public-key  the coordinator's public key
  reference    local copy of the coordinator's reference set (default: the path in the message)
  endpoint     host:port the gateway dials for HeadService     node-id     registry id (default: source)
  secret-file  identity secret (default STATE_DIR/node.secret)  finetune    true = take part in FedAvg
  access       strict (default: own images, reference set, self-made negatives) or shared (the paper's opt-in)
  enrolment-token-file  the admin's one-time enrolment token (default STATE_DIR/enrolment.token)
  workdir      what relative paths in the settings and the YAML are relative to
In simulation, `make_client_app(nodes)` gives partition i the settings `nodes[i]`.

What leaves the node: the head's digest, calibration, threshold, metrics, endpoint, its public key
and a signature over the coordinator's challenge (plus, the first time, a proof of its enrolment
token) for the registry; never its secret, the token itself, images or head weights. Fine-tuning replies carry the updated
*primary* weights (the shared model), and only from nodes that set `finetune=true`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from node import state
from node.config import NodeConfig
from shared_backbone.config import ConfigError, TrainConfig, build, load_config, resolve_paths
from shared_backbone.data import reference_set
from shared_backbone.model import signing
from shared_backbone.protocol import flower_messages, identity
from shared_backbone.protocol.registration import Registration
from shared_backbone.protocol.flower_messages import (
    FINETUNE_ACTION,
    FINETUNE_RESULT,
    FINETUNE_WEIGHTS,
    FIT_HEAD_ACTION,
    METRICS_RECORD,
    OBJECTIVE_FIELD,
    RESULT_RECORD,
    RUN_RECORD,
    TRAIN_RECORD,
)

log = logging.getLogger(__name__)

ERROR_CODE = 2  # flwr ErrorCode.CLIENT_APP_RAISED_EXCEPTION

NODE_KEYS = {
    "source": "source",
    "node-id": "node_id",
    "access": "access",
    "data-dir": "data.root",
    "state-dir": "state_dir",
    "public-key": "public_key",
    "reference": "reference",
    "endpoint": "serve.advertise",
    "secret-file": "serve.secret_file",
    "enrolment-token-file": "serve.enrolment_token_file",
    "calibration": "calibration",
}
EXTRA_KEYS = {"config", "workdir", "finetune", "partition-id", "num-partitions"}


def node_config_from_settings(settings: Mapping[str, Any]) -> NodeConfig:
    """NodeConfig from node-config keys (see module doc); an unknown key is an error naming it."""
    unknown = sorted(set(settings) - set(NODE_KEYS) - EXTRA_KEYS)
    if unknown:
        raise ConfigError(f"node config: unknown key {unknown[0]!r} (allowed: {', '.join(sorted({*NODE_KEYS, *EXTRA_KEYS}))})")
    overrides = {NODE_KEYS[k]: str(v) for k, v in settings.items() if k in NODE_KEYS and str(v) != ""}
    path = str(settings.get("config", "") or "") or None
    config = load_config(NodeConfig, path, overrides)
    if settings.get("workdir"):
        config = resolve_paths(config, str(settings["workdir"]))
    if not config.public_key:
        raise ConfigError("node config: public-key is not set; a node only trusts bundles signed by the coordinator")
    if not config.source:
        raise ConfigError("node config: source is not set")
    return config


def _endpoint(config: NodeConfig) -> str:
    return config.serve.advertise or f"{config.serve.host}:{config.serve.port}"


def _opted_in(settings: Mapping[str, Any]) -> bool:
    value = settings.get("finetune", False)
    return value is True or str(value).lower() in ("true", "1", "yes")


def receive_bundle(content: RecordDict, config: NodeConfig):
    """Verifies the received bundle against the node's own key; stores it under STATE_DIR/bundles."""
    state_dir = Path(config.state_dir)
    bundle = flower_messages.unpack_bundle(content, state_dir / state.BUNDLES_DIR, signing.load_public_key(config.public_key))
    link = state_dir / state.CURRENT_BUNDLE
    staging = state_dir / f".{state.CURRENT_BUNDLE}.tmp"
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    staging.symlink_to(Path(state.BUNDLES_DIR) / bundle.digest)
    os.replace(staging, link)
    return bundle


def _run_values(content: RecordDict) -> ConfigRecord:
    """The run's settings (RUN_RECORD): calibration method, reference pointer, challenge, round label."""
    return content.config_records.get(RUN_RECORD, ConfigRecord())


def _round_settings(content: RecordDict, run: ConfigRecord, config: NodeConfig) -> NodeConfig:
    """The node config with the run's training settings and reference folder applied.

    The folder is verified against the announced digest once a round: by head training
    (`node.head_data`), or by `finetune` before it reads the folder."""
    train = config.train
    if TRAIN_RECORD in content.config_records:
        train = build(TrainConfig, dict(content.config_records[TRAIN_RECORD]), where="run training config")
    reference = config.reference
    if run.get("reference_digest"):
        reference = reference or str(run["reference_path"])
    calibration = str(run.get("calibration", "") or "") or config.calibration
    return dataclasses.replace(config, train=train, reference=reference, calibration=calibration)


def _flat_metrics(metrics: dict[str, Any]) -> MetricRecord:
    flat: dict[str, float] = {}
    for split in ("calib", "test"):
        for key, value in metrics.get(split, {}).get("calibrated", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{split}_{key}"] = float(value)
    for key in ("train_seconds", "epochs_run", "best_epoch"):
        if isinstance(metrics.get(key), (int, float)):
            flat[key] = float(metrics[key])
    train_counts = metrics.get("counts", {}).get("train", {})
    if "total" in train_counts:
        flat["num_examples"] = float(train_counts["total"])
    return MetricRecord(flat)


def signed_result(values: dict[str, Any], config: NodeConfig, challenge: str) -> dict[str, Any]:
    """The result values with the node's public key, signature and (when it has a token) enrolment proof."""
    key = identity.node_key(state.node_secret(config))
    public = identity.public_key_hex(key)
    values = {**values, flower_messages.PUBLIC_KEY_FIELD: public}
    digest = identity.record_digest(values, flower_messages.PROOF_FIELDS)
    token = state.enrolment_token(config)
    return {
        **values,
        flower_messages.SIGNATURE_FIELD: identity.sign(key, identity.FLOWER_REGISTER, challenge, values["node_id"], digest),
        flower_messages.ENROLMENT_PROOF_FIELD: (
            identity.enrolment_proof(token, challenge, values["node_id"], values["source"], public) if token else ""
        ),
    }


def fit_head(message: Message, settings: Mapping[str, Any]) -> RecordDict:
    """Verifies the bundle, trains + calibrates the head (same code as `attribnet node train`)."""
    from node.train_head import train_head

    config = node_config_from_settings(settings)
    bundle = receive_bundle(message.content, config)
    run = _run_values(message.content)
    config = dataclasses.replace(_round_settings(message.content, run, config), backbone=str(bundle.path))
    log.info("node %s: training head on bundle %s (version %s)", config.source, bundle.short_digest, bundle.version)
    result = train_head(config, bundle, progress=False, announced_reference_digest=str(run.get("reference_digest", "") or ""))
    head = result.head
    registration = Registration(
        node_id=config.node_id or config.source, source=config.source, endpoint=_endpoint(config), head_digest=head.digest,
        backbone_digest=head.backbone_digest, backbone_version=bundle.version, calibration=head.calibration,
        threshold=float(head.threshold), metrics=result.metrics,
    )
    reply = RecordDict()
    challenge = str(run.get(flower_messages.CHALLENGE_FIELD, ""))
    reply[RESULT_RECORD] = ConfigRecord(signed_result(registration.to_json_values(), config, challenge))
    reply[METRICS_RECORD] = _flat_metrics(result.metrics)
    return reply


def finetune(message: Message, settings: Mapping[str, Any]) -> RecordDict:
    """One FedAvg step of the primary module on local data, for nodes that opted in."""
    reply = RecordDict()
    if not _opted_in(settings):
        reply[FINETUNE_RESULT] = ConfigRecord({"declined": True})
        return reply
    from node.finetune import finetune as finetune_round

    config = node_config_from_settings(settings)
    bundle = receive_bundle(message.content, config)
    run = _run_values(message.content)
    config = _round_settings(message.content, run, config)
    if run.get("reference_digest"):
        reference_set.verify_reference(config.reference, str(run["reference_digest"]))
    real_sources = [str(s) for s in run.get("real_sources", ["real"])]
    weights = flower_messages.record_to_weights(message.content.array_records[FINETUNE_WEIGHTS])
    objective = str(run.get(OBJECTIVE_FIELD, "detection"))
    new_weights, num_examples = finetune_round(config, bundle, weights, real_sources, objective)
    reply[FINETUNE_WEIGHTS] = flower_messages.weights_to_record(new_weights)
    reply[FINETUNE_RESULT] = ConfigRecord({"num_examples": int(num_examples), "source": config.source})
    return reply


def _error_reply(message: Message, settings: Mapping[str, Any], exc: Exception) -> Message:
    who = settings.get("source") or settings.get("node-id") or "?"
    log.error("node %s: %s failed: %s", who, message.metadata.message_type, exc, exc_info=not isinstance(exc, ValueError))
    return Message(Error(code=ERROR_CODE, reason=f"node {who}: {type(exc).__name__}: {exc}"), reply_to=message)


def _settings(context: Context, nodes: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    settings = dict(context.node_config)
    if nodes is not None and "partition-id" in settings:
        base = dict(nodes[int(settings["partition-id"])])
        base.update({k: v for k, v in settings.items() if k not in ("partition-id", "num-partitions")})
        settings = base
    return {k: v for k, v in settings.items() if k not in ("partition-id", "num-partitions")}


def make_client_app(nodes: Sequence[Mapping[str, Any]] | None = None) -> ClientApp:
    """The ClientApp; with `nodes`, simulation partition i runs with settings `nodes[i]`."""
    client_app = ClientApp()

    def handle(handler, message: Message, context: Context) -> Message:
        settings: dict[str, Any] = {}
        try:
            settings = _settings(context, nodes)
            return Message(handler(message, settings), reply_to=message)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply naming the node
            return _error_reply(message, settings, exc)

    @client_app.train(FIT_HEAD_ACTION)
    def _fit_head(message: Message, context: Context) -> Message:
        return handle(fit_head, message, context)

    @client_app.train(FINETUNE_ACTION)
    def _finetune(message: Message, context: Context) -> Message:
        return handle(finetune, message, context)

    return client_app


app = make_client_app()
