"""The strict YAML loader, and the building blocks every role's config schema is made of.

Each role owns its own schema (`coordinator/config.py`, `node/config.py`, command-only ones in
`attribnet/config.py`); what they share (data, perturbations, training, TLS) is defined here once.

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


# Field metadata marking a file or folder path, so `resolve_paths` knows which strings to anchor.
PATH = {"path": True}


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names file and key."""


# ----------------------------------------------------------------------------- building blocks


@dataclass
class DataConfig:
    """A folder-per-source dataset and how to split it."""

    root: str = field(default="", metadata=PATH)
    real_sources: list[str] = field(default_factory=lambda: ["real"])
    source_ids: str = field(default="", metadata=PATH)  # optional seed-style source_ids.csv (name,id; real is id 0)
    arch_level: bool = False
    image_size: int = 64
    mode: str = "pixel"
    normstats: str = field(default="", metadata=PATH)  # folder with mean.npy / std_dev.npy (DCT mode)
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


@dataclass
class TLSConfig:
    """Optional TLS / mTLS for one process (PEM file paths); empty `cert` = plaintext.

    `cert`/`key` are the process's identity, used as its server certificate and, towards its
    peers, as its client certificate; `ca` verifies the peers. TLS is all-or-nothing within a
    network: coordinator and nodes either all use it or none does.
    """

    cert: str = field(default="", metadata=PATH)
    key: str = field(default="", metadata=PATH)
    ca: str = field(default="", metadata=PATH)
    require_client_cert: bool = False  # servers: mTLS, refuse clients without a cert signed by `ca`
    server_name: str = ""  # clients: expected name in the server's cert when it differs from the host


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
    known = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(_over_default(known[name], value), hints[name], f"{where}.{name}") for name, value in values.items()}
    return schema(**kwargs)


def _over_default(item: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a nested settings field, over that field's own default: a key it leaves out
    keeps the value the default factory sets (e.g. `federation: {finetune_objective: ...}` keeps the
    factory's rounds), not the nested class's bare default."""
    if not isinstance(value, dict) or item.default_factory is dataclasses.MISSING:
        return value
    default = item.default_factory()
    return {**dataclasses.asdict(default), **value} if dataclasses.is_dataclass(default) else value


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


def read_section(path: str | Path | None, name: str) -> tuple[dict[str, Any], str]:
    """The YAML's `name:` section when it has one (one file can configure several commands), else
    its top level; and where the values came from, for error messages."""
    if not path:
        return {}, "flags"
    values = read_yaml(path)
    if name not in values:
        return values, str(path)
    if not isinstance(values[name], dict):
        raise ConfigError(f"{path}: {name}: expected a mapping")
    return values[name], f"{path}: {name}"


def load_config(schema: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                *, section: str | None = None) -> T:
    """defaults < YAML file (or its `section:`) < overrides (dotted keys like `train.epochs`; None values ignored)."""
    values, where = read_section(path, section) if section else (read_yaml(path) if path else {}, str(path or "config"))
    return build(schema, _merge(values, overrides or {}), where)


def resolve_paths(config: T, base: str | Path) -> T:
    """A copy of `config` whose relative path fields (marked `PATH`, at any depth) are relative to `base`.

    A process started elsewhere (a Flower app, a SuperNode) resolves paths against the folder
    its operator ran from, not its own working directory.
    """
    base = Path(base)
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            changes[item.name] = resolve_paths(value, base)
        elif item.metadata.get("path") and value and not Path(value).is_absolute():
            changes[item.name] = str(base / value)
    return dataclasses.replace(config, **changes)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
