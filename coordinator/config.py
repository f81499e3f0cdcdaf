"""The coordinator's config schema: one coordinator.yaml for training, publishing, the gateway and Flower runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.validation import DEFAULT_DENY
from shared_backbone.config import PATH, DataConfig, PerturbConfig, TLSConfig, TrainConfig
from shared_backbone.model.rule import DEFAULT_ALPHA, DEFAULT_FAKE_THRESHOLD, DEFAULT_MARGIN, DEFAULT_TYPICALITY_ALPHA


@dataclass
class AuditConfig:
    """Canary audits of the nodes (`coordinator/gateway/audit.py`, `canaries.py`) and the win-rate monitor.

    On by default (needs the coordinator's `reference` set): every batch the nodes score carries
    `per_batch` canaries (fresh views of `reals` real images from `private_reals`, else the
    reference set; `own_generators` fresh renders of them by the coordinator's own random
    generators; the members' private audit sets under `reference`, one sub-folder per source),
    and while no client asks for `interval` seconds, or a node waits for its audit, a
    canary-only batch goes out. A node is quarantined until the admin clears it when the lower
    `confidence` bound of its observed claim rate on the last `window` canaries of one kind not
    its own (once it answered `min_per_kind` of them) exceeds that kind's tolerance, or when its conformal
    reference sits below its own source's deposited canaries: so few of them score at or below one of
    its quantiles (5%, 25%, 50%) that an honest reference would leave so few with probability under
    `reference_significance` / j^2 at its j-th check (at `min_per_kind` of them, twice that, ... then
    once per `window`). A new or restarted registration serves once `min_canaries` canaries not
    of its source passed (the node's self-reported metrics play no part).
    The win-rate monitor flags a source that wins more than `max_win_share` of the last
    `win_window` requests (each request counts once, its answers split evenly; once
    `win_min_answers` requests were seen and at least `win_min_sources` sources answer).
    """

    enabled: bool = True
    reference: str = field(default="", metadata=PATH)  # members' private audit sets: one sub-folder per source
    per_source: int = 64  # images read per deposited source
    private_reals: str = field(default="", metadata=PATH)  # real images no node received ("": the reference set's)
    reals: int = 64  # reference-set reals used as canaries (and re-rendered by the coordinator's generators)
    own_generators: int = 64  # fresh renders by the coordinator's own random generators (0: none)
    per_batch: int = 2  # canaries mixed into every batch the nodes score
    window: int = 200  # canaries of each kind remembered per node
    min_canaries: int = 32  # canaries not of its source a pending node answers before it serves
    min_per_kind: int = 10  # canaries of one kind a node answered before its claim rate on them is judged
    interval: float = 2.0  # seconds without a batch before a canary-only batch goes out
    tolerance_real: float = 0.25  # the claim rate on real canaries an honest head may have
    tolerance_own_generators: float = 0.6  # ... on the coordinator's generators' renders (honest tiny heads: up to 0.34)
    tolerance_per_source: float = 0.6  # ... on another member's canaries, counted where it outranks that member's node
    confidence: float = 0.95  # one-sided confidence of the claim-rate bounds compared with the tolerances
    reference_significance: float = 1e-4  # how unlikely an honest reference's count of own canaries below it must be
    seed: int | None = None  # the canaries' and the coordinator's generators' seed (None: secret, new each start)
    win_window: int = 200
    win_min_answers: int = 50
    max_win_share: float = 0.8
    win_min_sources: int = 3
    quarantine_on_win_rate: bool = False


@dataclass
class DistributionConfig:
    """What the gateway hands a joining node (`DistributionService`, `attribnet node join`).

    The served bundle (`bundle`), the coordinator's public key (`public_key`) and the reference set
    (`reference`), to enrolled nodes only. Files beyond `max_file_mb`, or a catalogue beyond
    `max_total_mb`, are refused (RESOURCE_EXHAUSTED) rather than streamed.
    """

    enabled: bool = True
    max_file_mb: float = 256.0
    max_total_mb: float = 2048.0
    chunk_kb: int = 256  # bytes per streamed chunk (well under the message limit)
    ticket_ttl: float = 900.0  # seconds a fetch ticket from Open stays valid


@dataclass
class GatewayConfig:
    """The coordinator's query gateway and registry server (`attribnet coordinator serve`).

    Nodes register with their own key and, the first time, an enrolment token the admin issued
    (`attribnet coordinator enrol`); queries need the first line of `query_token_file` when one is
    set, and are open otherwise. Plaintext is refused off loopback unless `insecure` (listening,
    and node endpoints the gateway would dial).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    query_token_file: str = field(default="", metadata=PATH)
    insecure: bool = False
    endpoint_allow: list[str] = field(default_factory=list)  # networks / host names nodes may use ([] = any not denied)
    endpoint_deny: list[str] = field(default_factory=lambda: list(DEFAULT_DENY))
    max_message_mb: int = 32  # per gRPC message, both directions
    max_images: int = 64  # per Attribute request
    max_pixels: int = 16_000_000  # per decoded image (width x height, after JPEG draft reduction)
    max_request_pixels: int = 40_000_000  # decoded pixels of all images of one request together
    max_heatmap_images: int = 8  # images per request that ask for heatmaps
    node_timeout: float = 2.0  # seconds a node has to answer Score
    node_cooldown_failures: int = 3  # failed Score calls in a row before a node sits out a cool-down
    node_cooldown_seconds: float = 5.0  # how long it is skipped (listed missing) before one probe
    node_budget_floor: float = 0.25  # seconds the other nodes get, at least, once a quorum of the called nodes answered
    node_budget_factor: float = 2.0  # ... or this many times the quorum's own time, if longer (node_pool.py)
    node_slow_strikes: int = 2  # answers later than that budget in a row before a node sits out a cool-down
    heartbeat_interval: float = 5.0  # told to nodes at registration
    stale_after: float = 20.0  # seconds without heartbeat before a node is stale (not queried)
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD
    alpha: float = DEFAULT_ALPHA  # significance of the conformal prediction set (rule.py)
    tie_margin: float = DEFAULT_MARGIN  # two best sources closer than this in log-odds: "ambiguous"
    typicality_alpha: float = DEFAULT_TYPICALITY_ALPHA  # a winner whose typicality p-value is <= this: "unknown"
    rank_by: str = "raw"  # which head scores order the sources: "raw" (the paper's argmax) or "calibrated"
    batch_window_ms: float = 0.0  # extra wait of a batch for more requests (0: batches form while nodes work)
    max_batch: int = 256  # images per trunk run (and per Score call)
    max_inflight_batches: int = 4  # batches at the nodes at once; requests arriving meanwhile form the next
    max_queue_images: int = 2048  # images waiting for the trunk; more is RESOURCE_EXHAUSTED
    request_timeout: float = 30.0  # seconds a request may take when its client set no shorter deadline
    rate_limit: float = 0.0  # images per second per client (peer address + token); 0 = no limit
    rate_burst: float = 0.0  # bucket size in images (at least rate_limit)
    workers: int = 16  # threads handling RPCs
    max_concurrent_rpcs: int = 64  # RPCs in flight; more is RESOURCE_EXHAUSTED at once
    decode_workers: int = 2  # threads decoding the images of one large request in parallel
    tf_threads: int = 0  # TensorFlow intra/inter-op threads (`attribnet coordinator serve`); 0 = TensorFlow's default
    metrics_port: int = -1  # Prometheus /metrics port (0 = any free port, -1 = off)
    metrics_host: str = "127.0.0.1"
    access_log: bool = False  # one INFO line per RPC on the attribnet.access logger
    tls: TLSConfig = field(default_factory=TLSConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    distribution: DistributionConfig = field(default_factory=DistributionConfig)


@dataclass
class FederationConfig:
    """The Flower run (`attribnet federation run`, coordinator/server_app.py).

    One run sends the signed bundle to every connected node (`train.fit_head`), registers the
    heads that come back and writes `result_file`. With `finetune_rounds > 0` it first runs that
    many rounds of robust federated averaging of the primary module over the nodes that opt in
    (node config `finetune=true`): every update must match the global model's shapes and dtypes
    and be finite, example counts are clipped to `max_examples`, and the aggregate is
    `aggregate` (`trimmed_mean` drops the `trim_fraction` highest and lowest values of every
    coordinate, `median`, or the example-weighted `mean`). The result is published as a new
    bundle version (parent recorded, signed with `private_key`) under `bundles_dir` only when its
    detection accuracy on the coordinator's own held-out data (`data`, split `gate_split`) is at
    most `gate_tolerance` below the current backbone's; otherwise the run keeps the old backbone.
    `finetune_objective` says what the nodes train: `detection` (the primary module, real vs fake) or
    `attribution` (the trunk, on each node's own head task; the coordinator then refits its
    detector's tail on its own data over the averaged trunk before the gate).
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
    finetune_objective: str = "detection"  # or "attribution": nodes train the trunk on their head task (node/finetune.py)
    finetune_min_nodes: int = 1
    aggregate: str = "trimmed_mean"  # trimmed_mean | median | mean
    trim_fraction: float = 0.2
    max_examples: int = 100_000  # per update: a node claiming more counts as this many
    gate_split: str = "val"
    gate_tolerance: float = 0.02  # accuracy the fine-tuned primary may lose on the gate split
    gate_max_images: int = 1024
    bundles_dir: str = field(default="coordinator-state/bundles", metadata=PATH)

    def __post_init__(self) -> None:
        from shared_backbone.protocol.flower_messages import FINETUNE_OBJECTIVES

        if self.finetune_objective not in FINETUNE_OBJECTIVES:
            raise ValueError(f"federation: finetune_objective must be one of {', '.join(FINETUNE_OBJECTIVES)}, "
                             f"got {self.finetune_objective!r}")


@dataclass
class PretextConfig:
    """The coordinator's own random generators (`coordinator/pretext_generators.py`): `generators` random networks
    of the nodes' negative space re-rendering the coordinator's reals (0: none), as extra classes of the
    source-aware trunk's pretraining (`trunk`) and/or, the generative ones, as extra fakes of the detector's training
    (`detector`)."""

    generators: int = 0
    per_generator: int = 0  # images per network and split (0: one per real image)
    trunk: bool = True  # each network one more class of the trunk's pretraining
    detector: bool = False  # the generative networks' images: fakes in the detector's (tail's) training
    exclude_families: list[str] = field(default_factory=list)  # e.g. a benchmark's left-out family
    seed: int = 0  # mixed with train.seed

    def __post_init__(self) -> None:
        from shared_backbone.data.negative_space import FAMILIES

        if self.generators < 0 or self.per_generator < 0:
            raise ValueError(f"pretext: generators and per_generator must be >= 0 (got {self.generators}, {self.per_generator})")
        if self.generators and not (self.trunk or self.detector):
            raise ValueError("pretext: generators given but neither trunk nor detector uses them")
        unknown = sorted(set(self.exclude_families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"pretext: exclude_families has unknown {unknown} (known: {', '.join(FAMILIES)})")


@dataclass
class CoordinatorConfig:
    """One coordinator.yaml for `attribnet coordinator train|evaluate|publish|serve`."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    run_dir: str = field(default="runs/primary", metadata=PATH)
    init_from: str = field(default="", metadata=PATH)  # a run or bundle to retrain from (e.g. on perturbed data)
    source_aware_trunk: bool = True  # train the trunk to tell sources apart first, then the detector's tail on it
    pretext: PretextConfig = field(default_factory=PretextConfig)  # extra generator classes for that pretraining
    private_key: str = field(default="keys/coordinator.key", metadata=PATH)
    public_key: str = field(default="keys/coordinator.pub", metadata=PATH)
    bundle: str = field(default="", metadata=PATH)
    reference: str = field(default="", metadata=PATH)  # the reference set (coordinator reference): signed into bundles, announced to nodes
    registry: str = field(default="coordinator-state/registry.sqlite", metadata=PATH)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
