"""Schemas of the commands that wire both roles together (`attribnet predict`, `attribnet demo`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.config import AuditConfig
from shared_backbone.config import PerturbConfig, TrainConfig
from attribnet.lab.datasets.zoo import ZooConfig
from shared_backbone.model.rule import DEFAULT_ALPHA, DEFAULT_FAKE_THRESHOLD, DEFAULT_MARGIN, DEFAULT_TYPICALITY_ALPHA


@dataclass
class PredictConfig:
    """`attribnet predict`: offline attribution with a bundle and local heads."""

    backbone: str = ""
    heads: list[str] = field(default_factory=list)
    public_key: str = ""
    batch_size: int = 32
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD
    alpha: float = DEFAULT_ALPHA  # significance of the conformal prediction set
    tie_margin: float = DEFAULT_MARGIN  # two best sources closer than this in log-odds: "ambiguous"
    typicality_alpha: float = DEFAULT_TYPICALITY_ALPHA  # a winner whose typicality p-value is <= this: "unknown"
    rank_by: str = "raw"  # which head scores order the sources: "raw" (the paper's argmax) or "calibrated"
    heatmap_dir: str = ""


@dataclass
class DemoConfig:
    """`attribnet demo` and the zoo experiment: the paper's workflow end to end on the zoo."""

    zoo: ZooConfig = field(default_factory=lambda: ZooConfig(image_size=32, per_source=480))  # `out` unused: OUT/zoo
    data_root: str = ""  # use an existing zoo instead of writing one into the output folder
    mode: str = "dct"  # input of the primary module (and so of the heads): pixel, residual (high-passed pixels) or dct
    baseline_mode: str = "dct"  # input of the CNN baselines (gdaconv is Frank et al.'s DCT classifier)
    primary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=3e-3, patience=4))
    head: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=32, learning_rate=3e-3, patience=3))
    baseline: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=3e-3, patience=4))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    access: str = "strict"  # the nodes' data access; "shared" = the paper's comparison setting (opt-in)
    calibration: str = "temperature"
    threshold: float = 0.5
    baselines: list[str] = field(default_factory=lambda: ["gdaconv", "dctlinear"])
    perturbations: list[str] = field(default_factory=lambda: ["clean", "jpeg75", "blur1"])
    seeds: list[int] = field(default_factory=lambda: [0])
    audit: AuditConfig = field(default_factory=AuditConfig)  # the served demo's gateway audit (on; private reals: the test split's)


@dataclass
class TransferBenchConfig:
    """The transfer-learning part of `attribnet bench serving`: a head on the frozen trunk vs a full model.

    Both train on the same strict data (the node's own source against real images) with the same
    loop settings (`train`); the trunk comes from a primary module trained on the whole zoo
    (`primary`, the coordinator's shared cost, reported but not compared).
    """

    per_source: int = 1000  # zoo images per source (benchmark preset, bench image size)
    mode: str = "dct"  # input of trunk, head and full model (the zoo workflow's default; normstats from the training split)
    source: str = "tconv_a"  # the node whose head is trained
    zoo_seed: int = 0
    primary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=64, patience=3))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=64, patience=3))


@dataclass
class ServingBenchConfig:
    """`attribnet bench serving`: the in-process limit, the network under closed-loop load, transfer."""

    image_size: int = 64
    nodes: list[int] = field(default_factory=lambda: [1, 4, 16])
    clients: list[int] = field(default_factory=lambda: [1, 8, 32])
    batches: list[int] = field(default_factory=lambda: [1, 16])
    repeats: int = 3  # measured windows per point; the table shows medians
    seconds: float = 6.0  # one measured window
    warmup_seconds: float = 2.0  # load before each window, not counted
    images: int = 256  # distinct preloaded encoded images the clients cycle through
    in_process_batch: int = 64
    request_timeout: float = 30.0  # each load-generator request's deadline
    batch_window_ms: float = 0.0  # the gateway's micro-batch window in the benchmark
    max_inflight_batches: int = 4  # the gateway's batches at the nodes at once
    open_loop_images_per_s: float = 50.0  # offered load of the open-loop tail test (single images), every N alike
    transfer: TransferBenchConfig = field(default_factory=TransferBenchConfig)
    skip_transfer: bool = False
