"""Schemas of the commands that wire both roles together (`attribnet predict`, `attribnet demo`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_backbone.config import PerturbConfig, TrainConfig
from shared_backbone.data.zoo import ZooConfig
from shared_backbone.model.rule import DEFAULT_ALPHA, DEFAULT_FAKE_THRESHOLD, DEFAULT_MARGIN


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
    heatmap_dir: str = ""


@dataclass
class DemoConfig:
    """`attribnet demo` and the zoo experiment: the paper's workflow end to end on the zoo."""

    zoo: ZooConfig = field(default_factory=lambda: ZooConfig(image_size=32, per_source=480))  # `out` unused: OUT/zoo
    data_root: str = ""  # use an existing zoo instead of writing one into the output folder
    mode: str = "dct"  # input of the primary module (and so of the heads): pixel or dct
    baseline_mode: str = "dct"  # input of the CNN baselines (gdaconv is Frank et al.'s DCT classifier)
    primary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=3e-3, patience=4))
    head: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=32, learning_rate=3e-3, patience=3))
    baseline: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=3e-3, patience=4))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    access: str = "strict"  # the nodes' data access; "shared" = the paper's comparison setting (opt-in)
    calibration: str = "platt"
    threshold: float = 0.5
    baselines: list[str] = field(default_factory=lambda: ["gdaconv", "dctlinear"])
    perturbations: list[str] = field(default_factory=lambda: ["clean", "jpeg75", "blur1"])
    seeds: list[int] = field(default_factory=lambda: [0])
