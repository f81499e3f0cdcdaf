"""The accuracy benchmark's settings: which source plays which role, how everything trains, and the profiles.

Roles (the who-sees-what rule, made explicit):
  nodes        one strict node per source: its own images, the reference set, negatives it makes
  late         nodes left out of the late-join detector: they join afterwards with one head each
  coordinator  the coordinator's own generators: in the detector's training and published in the
               reference set (never a node's images)
  held_out     in no training set at all: the open-set generators
Real sources are the dataset's (`data.real_sources`). A role left empty takes the dataset's own
default (`DATASET_ROLES`: the zoo's and the upscalers'); a `folder` dataset must name every role.

Settings (who the coordinator's detector and source-aware trunk train on; `protocols` picks them):
  founding     reals, every node and the coordinator's generators (what `make demo` and the
               offline workflow do today: the trunk has seen every node's source)
  private      reals and the coordinator's own generators only: every node joins late
  private_finetuned  the private backbone after `federation.finetune_rounds` rounds of federated
               fine-tuning by every node (each on its own images vs the reference set's reals; the
               coordinator sees robustly averaged weights, never an image), then a head per node
  lofo-FAMILY  leave one family out: its sources leave the detector, the trunk and the reference
               set, and every node's self-made negatives exclude it; its sources stay nodes
  oracle-KIND  the founding setting trained and tested on a copy of the data perturbed as the test
               perturbation KIND is: the ceiling robust training is judged against (oracle.py)
The `spectral_template` protocol adds methods, not a setting: every node's spectral template from
its own images and reals only, no backbone (`attribnet/lab/baselines/spectral_template.py`), alone
and beside the strict heads (Borda count of the two rankings), in the founding and private settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from coordinator.config import FederationConfig, PretextConfig
from node.config import NegativesConfig
from shared_backbone.config import DataConfig, PerturbConfig, TrainConfig
from attribnet.lab.datasets.upscalers import UpscalersConfig
from attribnet.lab.datasets.zoo import ZooConfig

ZOO_NODES = ["tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a"]
ZOO_COORDINATOR = ["tconv_r", "pixshuffle_r"]
ZOO_HELD_OUT = ["modconv_a"]
ZOO_FAMILIES = ["tconv", "nnconv", "bilinear", "pixshuffle"]  # the node sources' families (text before "_")
# What a run does besides the founding setting's clean models, strict heads and baselines.
PROTOCOLS = ("shared", "robust", "late_join", "private", "private_finetune", "lofo", "out_of_scope", "oracle", "spectral_template")
METHODS = ("detection", "heads_raw", "heads_calibrated", "heads_shared", "gdaconv", "postpool", "dct_linear", "spectral_template",
           "heads_templates_borda")
BASELINES = ("gdaconv", "postpool", "dctlinear")


@dataclass
class Roles:
    nodes: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    coordinator: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)


ROLE_NAMES = tuple(role.name for role in fields(Roles))
DATASET_ROLES = {
    "zoo": Roles(nodes=ZOO_NODES, late=["tconv_b", "pixshuffle_a"], coordinator=ZOO_COORDINATOR, held_out=ZOO_HELD_OUT),
    # Learned upscalers are the nodes (three pairs share an architecture: srvgg x2/x4, cugan se n0/n3,
    # waifu2x upconv7 photo/anime weights);
    # the plain resamplers are the coordinator's own; RRDB (Real-ESRGAN x4plus, its anime variant)
    # is the architecture left out of the default set, so it is the open set's unseen generator.
    "upscalers": Roles(
        nodes=["srvgg_x2", "srvgg_x4", "cugan_se2x_n0", "cugan_se2x_n3", "cugan_pro2x_n0", "w2xcunet_n0",
               "upconv7_photo_n0", "upconv7_anime_n0"],
        late=["srvgg_x4", "cugan_se2x_n3"], coordinator=["bicubic_x2", "lanczos_x4"],
        held_out=["rrdb_x4plus", "rrdb_x4anime"],
    ),
}


DATASET_ROLES["zoo_independent"] = DATASET_ROLES["zoo"]
DATASET_FAMILIES = {"zoo": ZOO_FAMILIES, "zoo_independent": ZOO_FAMILIES}


def resolved_roles(dataset: str, roles: Roles) -> Roles:
    """`roles` with every empty role filled from the dataset's defaults; refuses a folder without them."""
    default = DATASET_ROLES.get(dataset, Roles())
    filled = Roles(**{name: list(getattr(roles, name) or getattr(default, name)) for name in ROLE_NAMES})
    empty = [name for name in ROLE_NAMES if not getattr(filled, name)]
    if empty:
        raise ValueError(f"roles.{empty[0]} is empty: a {dataset} dataset has no default roles, name every source's role")
    return filled


@dataclass
class AccuracyConfig:
    """`attribnet bench accuracy` (YAML: these keys, or an `accuracy:` section of configs/bench.yaml)."""

    # "zoo" / "upscalers": written (or reused) by the benchmark from `zoo` / `upscalers`;
    # "zoo_independent": the separately written zoo (same `zoo` settings), evaluation only: the
    # coordinator's generators are rendered by the coordinator's own code from the dataset's reals;
    # "folder": an existing folder-per-source dataset at data.root
    dataset: str = "zoo"
    zoo: ZooConfig = field(default_factory=lambda: ZooConfig(
        image_size=64, per_source=600, sources=[*ZOO_NODES, *ZOO_COORDINATOR, *ZOO_HELD_OUT]))
    upscalers: UpscalersConfig = field(default_factory=lambda: UpscalersConfig(image_size=64, per_source=1000))
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=64, mode="dct"))
    roles: Roles = field(default_factory=Roles)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    primary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=2e-3, patience=4, min_epochs=4))
    robust_primary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=32, learning_rate=1e-3, patience=3, min_epochs=3))
    head: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=64, learning_rate=1e-3, patience=5, min_epochs=3))
    baseline: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=32, learning_rate=2e-3, patience=4, min_epochs=4))
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)  # the coordinator's own generators for its trunk / detector
    # private_finetune: the fully private setting's backbone after federated fine-tuning by every node (product code)
    federation: FederationConfig = field(default_factory=lambda: FederationConfig(
        finetune_rounds=3, finetune_epochs=2, finetune_learning_rate=5e-4))
    robust: PerturbConfig = field(default_factory=lambda: PerturbConfig(kinds=["multi"]))
    perturb_copies: int = 2
    test_perturbations: dict[str, float] = field(default_factory=lambda: {
        "jpeg": 75, "blur": 1.0, "crop": 0.75, "noise": 0.05, "multi": 0.5})
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    calibration: str = "temperature"
    alpha: float = 0.05
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    lofo_families: list[str] = field(default_factory=list)  # empty: the dataset's (DATASET_FAMILIES)
    out_of_scope_per_kind: int = 24
    out: str = "bench/results"
    workdir: str = ""  # default OUT/work (datasets, bundles, heads, baseline runs)


# --profile quick: every protocol and field of the full benchmark, small enough for 15 minutes on 2 cores.
QUICK = {
    "zoo.per_source": 240,
    "upscalers.per_source": 240,
    "seeds": [0],
    "primary.epochs": 12,
    "robust_primary.epochs": 4,
    "head.epochs": 20,
    "baseline.epochs": 10,
    "negatives.count": 600,
    "perturb_copies": 1,
    "protocols": ["shared", "robust", "late_join", "out_of_scope", "spectral_template"],
}
# --profile lofo-quick: the generalisation protocol (founding, private, leave-one-family-out x4,
# out-of-scope) for one seed in 5-8 minutes on 2 cores (267 s idle, 2026-12-05); no robust retraining, shared heads or
# late-join detector (the private setting is the harder late join).
LOFO_QUICK = {
    "zoo.image_size": 32,
    "data.image_size": 32,
    "zoo.per_source": 200,
    "seeds": [0],
    "primary.epochs": 8,
    "head.epochs": 10,
    "baseline.epochs": 8,
    "negatives.count": 300,
    "negatives.generators": 8,
    "test_perturbations": {"jpeg": 75},
    "baselines": ["gdaconv", "dctlinear"],
    "protocols": ["private", "private_finetune", "lofo", "out_of_scope", "spectral_template"],
    "out_of_scope_per_kind": 48,  # one image 2.1 points: fine enough to read the 5% target (16 was 6.2)
}
# --profile robust-quick: clean-trained, robust-trained and oracle models (trained and tested on perturbed
# data) for JPEG q75 and blur sigma 1, one seed at the quick profile's size.
ROBUST_QUICK = {
    **{k: QUICK[k] for k in ("zoo.per_source", "upscalers.per_source", "seeds", "primary.epochs", "robust_primary.epochs",
                              "head.epochs", "baseline.epochs", "negatives.count", "perturb_copies")},
    "test_perturbations": {"jpeg": 75, "blur": 1.0},
    "baselines": ["gdaconv", "dctlinear"],
    "protocols": ["robust", "oracle"],
}
# --profile res128: the paper's resolution (128 px patches) with the founding setting only (strict heads, gdaconv,
# DCT regression, detection, open set, conformal coverage): 3 seeds of one input mode fit in under 2 hours on 2 cores.
# Compare inputs by running it once per `--mode` (pixel, residual, dct) with one --workdir: the dataset is built once
# and every mode's results are kept apart, so a killed run resumes.
RES128 = {
    "zoo.image_size": 128,
    "upscalers.image_size": 128,
    "data.image_size": 128,
    "zoo.per_source": 300,
    "upscalers.per_source": 300,
    "primary.epochs": 12,
    "head.epochs": 20,
    "baseline.epochs": 12,
    "negatives.count": 600,
    "test_perturbations": {"jpeg": 75, "blur": 1.0},
    "baselines": ["gdaconv", "dctlinear"],
    "protocols": [],
}
PROFILES = {"full": {}, "quick": QUICK, "lofo-quick": LOFO_QUICK, "robust-quick": ROBUST_QUICK, "res128": RES128}
