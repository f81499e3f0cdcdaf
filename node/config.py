"""A node's config schema: one node.yaml for head training, evaluation, serving and the Flower ClientApp."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_backbone.config import PATH, ConfigError, DataConfig, PerturbConfig, TLSConfig, TrainConfig
from shared_backbone.data.negative_space import FAMILIES
from shared_backbone.model.rule import DEFAULT_THRESHOLD

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
class NegativesConfig:
    """Negatives the node makes itself (`shared_backbone.data.negatives`): its own and the reference
    set's images re-rendered by `generators` random networks drawn from `families` (the vocabulary
    of `shared_backbone.data.negative_space.FAMILIES`) minus `exclude_families`."""

    count: int = 1200
    generators: int = 12
    strength: list[float] = field(default_factory=lambda: [0.003, 0.05])  # log-uniform deviation per network (x weight RMS)
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    exclude_families: list[str] = field(default_factory=list)  # e.g. a benchmark's left-out family
    seed: int = 0  # mixed with train.seed and the node's source name
    match_bandwidth: bool = True  # pre-sharpen so negatives keep the bandwidth of the node's own images

    def __post_init__(self) -> None:
        for key in ("families", "exclude_families"):
            unknown = sorted(set(getattr(self, key)) - set(FAMILIES))
            if unknown:
                raise ConfigError(f"negatives.{key}: unknown family {unknown[0]!r} (known: {', '.join(FAMILIES)})")
        if not set(self.families) - set(self.exclude_families):
            raise ConfigError(f"negatives: exclude_families {self.exclude_families} leaves no family of {self.families}")


@dataclass
class NodeConfig:
    """One node.yaml for `attribnet node train|evaluate|serve` (and the Flower ClientApp).

    Strict access (the default, the network's rule): the head trains on the node's own images
    (`data.root/<source>`), the coordinator's reference set (`reference`, verified against the
    digest its signed bundle announces) and negatives it makes itself (`negatives`); other source
    folders under `data.root` are reported and ignored. `access: shared` is the paper's setting
    for comparison only: every other folder under `data.root` is a negative too.
    """

    source: str = ""
    node_id: str = ""  # defaults to the source name
    access: str = "strict"  # or "shared": the paper's comparison setting (opt-in)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=64, patience=5))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    perturb_copies: int = 2  # with perturb.kinds: perturbed versions of each image, besides the clean one
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    calibration_fraction: float = 0.15  # carved out of train: fits calibration + the conformal reference
    backbone: str = field(default="", metadata=PATH)
    public_key: str = field(default="", metadata=PATH)
    reference: str = field(default="", metadata=PATH)
    init_head: str = field(default="", metadata=PATH)  # retrain from this head (e.g. on perturbed data)
    calibration: str = "temperature"
    threshold: float = DEFAULT_THRESHOLD
    state_dir: str = field(default="node-state", metadata=PATH)
    serve: NodeServeConfig = field(default_factory=NodeServeConfig)
