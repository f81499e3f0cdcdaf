"""A node's config schema: one node.yaml for head training, evaluation, serving and the Flower ClientApp."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_backbone.config import PATH, DataConfig, PerturbConfig, TLSConfig, TrainConfig

# The config names of the bundle and key paths, for messages about them.
BUNDLE_KEYS = ("backbone", "public_key")


@dataclass
class NodeServeConfig:
    """A node's HeadService and its registration with the coordinator (`attribnet node serve`).

    The node registers with `coordinator` using the network's registration token (`token` or the
    first line of `token_file`) and its own secret (`secret_file`, created on first start; default
    STATE_DIR/node.secret), which binds its node id so no other node can take over its entry.
    """

    host: str = "127.0.0.1"
    port: int = 50061
    advertise: str = ""  # host:port the coordinator dials; default host:port
    coordinator: str = "127.0.0.1:50051"
    token: str = ""
    token_file: str = field(default="", metadata=PATH)
    secret_file: str = field(default="", metadata=PATH)
    heartbeat_interval: float = 0.0  # seconds; 0 = what the coordinator asks for at registration
    rpc_timeout: float = 5.0  # deadline of each Register/Heartbeat call
    max_backoff: float = 30.0  # retry delay cap while the coordinator is unreachable
    max_batch: int = 512  # feature rows per Score request (and per head run)
    batch_window_ms: float = 0.0  # how long a head run waits for more concurrent Score calls
    max_queue_rows: int = 4096  # feature rows waiting for the head; more is RESOURCE_EXHAUSTED
    request_timeout: float = 30.0  # seconds a Score call may take when the caller set no shorter deadline
    max_message_mb: int = 32
    workers: int = 8  # threads handling RPCs
    max_concurrent_rpcs: int = 64  # RPCs in flight; more is RESOURCE_EXHAUSTED at once
    tf_threads: int = 1  # TensorFlow intra/inter-op threads (`attribnet node serve`); 0 = TensorFlow's default
    metrics_port: int = -1  # Prometheus /metrics port (0 = any free port, -1 = off)
    metrics_host: str = "127.0.0.1"
    access_log: bool = False  # one INFO line per RPC on the attribnet.access logger
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass
class NodeConfig:
    """One node.yaml for `attribnet node train|evaluate|serve` (and the Flower ClientApp).

    Positives are the images of `source` under `data.root`; negatives are every other source
    folder there (local negatives) plus every source of the coordinator's `reference` set.
    """

    source: str = ""
    node_id: str = ""  # defaults to the source name
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    backbone: str = field(default="", metadata=PATH)
    public_key: str = field(default="", metadata=PATH)
    reference: str = field(default="", metadata=PATH)
    calibration: str = "platt"
    threshold: float = 0.5
    state_dir: str = field(default="node-state", metadata=PATH)
    serve: NodeServeConfig = field(default_factory=NodeServeConfig)
