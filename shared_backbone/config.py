"""Every configurable setting, as dataclasses, and the strict YAML loader that fills them.

Precedence: dataclass defaults < `--config FILE.yaml` < command-line flags. An unknown or
mistyped key is an error naming the file and the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names file and key."""


# ----------------------------------------------------------------------------- data and training


@dataclass
class DataConfig:
    """A folder-per-source dataset and how to split it."""

    root: str = ""
    real_sources: list[str] = field(default_factory=lambda: ["real"])
    source_ids: str = ""  # optional seed-style source_ids.csv (name,id; real is id 0)
    arch_level: bool = False
    image_size: int = 64
    mode: str = "pixel"
    normstats: str = ""  # folder with mean.npy / std_dev.npy (DCT mode)
    split_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_per_source: int = 0  # 0 = all


@dataclass
class PerturbConfig:
    """On-the-fly perturbations; `kinds` from blur, crop, jpeg, noise, multi."""

    kinds: list[str] = field(default_factory=list)
    probability: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.0, 3.0])
    crop_fraction: list[float] = field(default_factory=lambda: [0.5, 1.0])
    jpeg_quality: list[int] = field(default_factory=lambda: [30, 100])
    noise_sigma: list[float] = field(default_factory=lambda: [0.0, 0.1])


@dataclass
class ZooConfig:
    """`attribnet data zoo` (see shared_backbone.zoo.ZooSettings); YAML: these keys or a `zoo:` section."""

    out: str = "zoo"
    image_size: int = 64
    per_source: int = 2000
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: ["tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a"])
    preset: str = "benchmark"  # or "easy": strong fingerprints, sharper reals (quick tests)
    strength: float = 0.0  # fingerprint strength; 0 = the preset's (0.01 benchmark, 0.06 easy)
    workers: int = 2


@dataclass
class TrainConfig:
    """Optimiser and loop settings shared by every trainer."""

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 3
    min_epochs: int = 3
    class_weighting: bool = True
    seed: int = 0
    steps_per_epoch: int = 0  # 0 = whole training split


# ----------------------------------------------------------------------------- network (issue 3 fills these)


@dataclass
class TLSConfig:
    """Optional TLS / mTLS for one process (PEM file paths); empty `cert` = plaintext.

    `cert`/`key` are the process's identity, used as its server certificate and, towards its
    peers, as its client certificate; `ca` verifies the peers. TLS is all-or-nothing within a
    network: coordinator and nodes either all use it or none does.
    """

    cert: str = ""
    key: str = ""
    ca: str = ""
    require_client_cert: bool = False  # servers: mTLS, refuse clients without a cert signed by `ca`
    server_name: str = ""  # clients: expected name in the server's cert when it differs from the host


@dataclass
class GatewayConfig:
    """The coordinator's query gateway and registry server (`attribnet coordinator serve`).

    Registration needs `registration_token` (or the first line of `registration_token_file`);
    queries need `query_token` when one is set, and are open otherwise.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    registration_token: str = ""
    registration_token_file: str = ""
    query_token: str = ""
    query_token_file: str = ""
    max_message_mb: int = 32  # per gRPC message, both directions
    max_images: int = 64  # per Attribute request
    max_pixels: int = 16_000_000  # per decoded image (width x height)
    node_timeout: float = 2.0  # seconds a node has to answer Score
    heartbeat_interval: float = 5.0  # told to nodes at registration
    stale_after: float = 20.0  # seconds without heartbeat before a node is stale (not queried)
    fake_threshold: float = 0.5
    batch_window_ms: float = 5.0  # micro-batching: how long the trunk waits for more requests
    max_batch: int = 256  # images per trunk run
    workers: int = 16
    tls: TLSConfig = field(default_factory=TLSConfig)


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
    token_file: str = ""
    secret_file: str = ""
    heartbeat_interval: float = 0.0  # seconds; 0 = what the coordinator asks for at registration
    rpc_timeout: float = 5.0  # deadline of each Register/Heartbeat call
    max_backoff: float = 30.0  # retry delay cap while the coordinator is unreachable
    max_batch: int = 512  # feature rows per Score request
    max_message_mb: int = 32
    workers: int = 8
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
    reference: str = ""  # folder of reference negatives (one sub-folder per source) nodes may use
    reference_real_sources: list[str] = field(default_factory=lambda: ["real"])
    result_file: str = "coordinator-state/federation-result.json"
    finetune_rounds: int = 0
    finetune_epochs: int = 1
    finetune_learning_rate: float = 1e-4
    finetune_min_nodes: int = 1
    bundles_dir: str = "coordinator-state/bundles"


# ----------------------------------------------------------------------------- role configs


@dataclass
class CoordinatorConfig:
    """One coordinator.yaml for `attribnet coordinator train|evaluate|publish|serve`."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    run_dir: str = "runs/primary"
    private_key: str = "keys/coordinator.key"
    public_key: str = "keys/coordinator.pub"
    bundle: str = ""
    registry: str = "coordinator-state/registry.sqlite"
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)


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
    backbone: str = ""
    public_key: str = ""
    reference: str = ""
    calibration: str = "platt"
    threshold: float = 0.5
    state_dir: str = "node-state"
    serve: NodeServeConfig = field(default_factory=NodeServeConfig)


@dataclass
class BaselineConfig:
    """`attribnet bench baseline`: gdaconv / postpool for detection, ovr or multiclass."""

    model: str = "gdaconv"
    task: str = "multiclass"
    positive_source: str = ""  # for task=ovr
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    out: str = "runs/baseline"


@dataclass
class PredictConfig:
    """`attribnet predict`: offline attribution with a bundle and local heads."""

    backbone: str = ""
    heads: list[str] = field(default_factory=list)
    public_key: str = ""
    batch_size: int = 32
    fake_threshold: float = 0.5
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
    calibration: str = "platt"
    threshold: float = 0.5
    baselines: list[str] = field(default_factory=lambda: ["gdaconv", "dctlinear"])
    perturbations: list[str] = field(default_factory=lambda: ["clean", "jpeg75", "blur1"])
    seeds: list[int] = field(default_factory=lambda: [0])


# ----------------------------------------------------------------------------- loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where)
    if origin is list:
        (item_type,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def build(schema: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Instantiates `schema` from a (nested) mapping, rejecting unknown keys by name."""
    hints = typing.get_type_hints(schema)
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in values.items()}
    return schema(**kwargs)


def _merge(base: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in dotted.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    return data


def load_config(schema: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """defaults < YAML file < overrides (dotted keys like `train.epochs`; None values ignored)."""
    values = read_yaml(path) if path else {}
    where = str(path) if path else "config"
    return build(schema, _merge(values, overrides or {}), where)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
