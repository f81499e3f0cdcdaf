"""A node's config schema: one node.yaml for head training, evaluation, serving and the Flower ClientApp."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_backbone.config import PATH, DataConfig, PerturbConfig, TLSConfig, TrainConfig

# The config names of the bundle and key paths, for messages about them.
BUNDLE_KEYS = ("backbone", "public_key")


@dataclass
class NodeServeConfig:
    """A node's HeadService and its registration with the coordinator (`attribnet node serve`).

    The node proves its identity with a key derived from its own secret (`secret_file`, created
    on first start; default STATE_DIR/node.secret), which never leaves it; its first registration
    also proves the enrolment token the coordinator admin issued for its node id and source
    (`enrolment_token_file`; default STATE_DIR/enrolment.token). Plaintext to a coordinator off
    loopback, or listening off loopback without TLS, needs `insecure`.
    """

    host: str = "127.0.0.1"
    port: int = 50061
    advertise: str = ""  # host:port the coordinator dials; default host:port
    coordinator: str = "127.0.0.1:50051"
    enrolment_token_file: str = field(default="", metadata=PATH)
    insecure: bool = False
    secret_file: str = field(default="", metadata=PATH)
    heartbeat_interval: float = 0.0  # seconds; 0 = what the coordinator asks for at registration
    rpc_timeout: float = 5.0  # deadline of each Register/Heartbeat call
    max_backoff: float = 30.0  # retry delay cap while the coordinator is unreachable
    max_batch: int = 512  # feature rows per Score request
    max_message_mb: int = 32
    workers: int = 8
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
