"""The coordinator's config schema: one coordinator.yaml for training, publishing, the gateway and Flower runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_backbone.config import PATH, DataConfig, PerturbConfig, TLSConfig, TrainConfig
from shared_backbone.model.rule import DEFAULT_ALPHA, DEFAULT_FAKE_THRESHOLD, DEFAULT_MARGIN


@dataclass
class GatewayConfig:
    """The coordinator's query gateway and registry server (`attribnet coordinator serve`).

    Registration needs `registration_token` (or the first line of `registration_token_file`);
    queries need `query_token` when one is set, and are open otherwise.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    registration_token: str = ""
    registration_token_file: str = field(default="", metadata=PATH)
    query_token: str = ""
    query_token_file: str = field(default="", metadata=PATH)
    max_message_mb: int = 32  # per gRPC message, both directions
    max_images: int = 64  # per Attribute request
    max_pixels: int = 16_000_000  # per decoded image (width x height)
    node_timeout: float = 2.0  # seconds a node has to answer Score
    heartbeat_interval: float = 5.0  # told to nodes at registration
    stale_after: float = 20.0  # seconds without heartbeat before a node is stale (not queried)
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD
    alpha: float = DEFAULT_ALPHA  # significance of the conformal prediction set (rule.py)
    tie_margin: float = DEFAULT_MARGIN  # two best sources closer than this in log-odds: "ambiguous"
    batch_window_ms: float = 5.0  # micro-batching: how long the trunk waits for more requests
    max_batch: int = 256  # images per trunk run
    workers: int = 16
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass
class FederationConfig:
    """The Flower run (`attribnet federation run`, coordinator/server_app.py).

    One run sends the signed bundle to every connected node (`train.fit_head`), registers the
    heads that come back and writes `result_file`. With `finetune_rounds > 0` it first runs that
    many FedAvg rounds of the primary module over the nodes that opt in (node config
    `finetune=true`), publishes the average as a new bundle version (parent recorded) under
    `bundles_dir` (signed with the coordinator's `private_key`) and trains the heads on it.
    """

    min_nodes: int = 1
    wait_for_nodes: float = 60.0  # seconds to wait for `min_nodes` to connect before giving up
    round_timeout: float = 900.0  # seconds a round waits for replies; later replies count as timed out
    poll_interval: float = 1.0  # seconds between reply polls
    head_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=32))
    calibration: str = ""  # "" = each node's own setting; platt / temperature
    reference_real_sources: list[str] = field(default_factory=lambda: ["real"])
    result_file: str = field(default="coordinator-state/federation-result.json", metadata=PATH)
    finetune_rounds: int = 0
    finetune_epochs: int = 1
    finetune_learning_rate: float = 1e-4
    finetune_min_nodes: int = 1
    bundles_dir: str = field(default="coordinator-state/bundles", metadata=PATH)


@dataclass
class CoordinatorConfig:
    """One coordinator.yaml for `attribnet coordinator train|evaluate|publish|serve`."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    run_dir: str = field(default="runs/primary", metadata=PATH)
    init_from: str = field(default="", metadata=PATH)  # a run or bundle to retrain from (e.g. on perturbed data)
    source_aware_trunk: bool = True  # train the trunk to tell sources apart first, then the detector's tail on it
    private_key: str = field(default="keys/coordinator.key", metadata=PATH)
    public_key: str = field(default="keys/coordinator.pub", metadata=PATH)
    bundle: str = field(default="", metadata=PATH)
    reference: str = field(default="", metadata=PATH)  # the reference set (coordinator reference): signed into bundles, announced to nodes
    registry: str = field(default="coordinator-state/registry.sqlite", metadata=PATH)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
