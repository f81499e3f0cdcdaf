"""The strict YAML loader: unknown keys and wrong types are errors naming file and key;
defaults < YAML < command-line overrides."""

from __future__ import annotations

import pytest

from coordinator.config import CoordinatorConfig
from node.config import NodeConfig
from shared_backbone.config import ConfigError, DataConfig, load_config, to_dict
from attribnet.lab.datasets.zoo import ZooConfig


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "data:\n  root: zoo\n  real_source: [real]\n")
    with pytest.raises(ConfigError) as error:
        load_config(CoordinatorConfig, path)
    message = str(error.value)
    assert str(path) in message and "data" in message and "'real_source'" in message and "real_sources" in message
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'"):
        load_config(CoordinatorConfig, write(tmp_path, "train:\n  epoch: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'bogus'"):
        load_config(NodeConfig, write(tmp_path, "bogus: 1\n"))


@pytest.mark.parametrize(
    "text, where",
    [
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("train:\n  class_weighting: maybe\n", "train.class_weighting"),
        ("train:\n  learning_rate: true\n", "train.learning_rate"),
        ("data:\n  real_sources: {a: 1}\n", "data.real_sources"),
        ("data: 5\n", "data"),
        ("run_dir: [a, b]\n", "run_dir"),
    ],
)
def test_type_errors_name_the_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(CoordinatorConfig, path)
    assert str(path) in str(error.value) and where in str(error.value)


def test_values_are_coerced_where_unambiguous(tmp_path):
    config = load_config(
        CoordinatorConfig, write(tmp_path, "data:\n  real_sources: real_celeba\n  arch_level: 'yes'\ntrain:\n  learning_rate: 1\n  epochs: 4.0\n")
    )
    assert config.data.real_sources == ["real_celeba"] and config.data.arch_level is True
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.train.epochs == 4 and isinstance(config.train.epochs, int)


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    path = write(tmp_path, "data:\n  root: from-yaml\n  image_size: 32\ntrain:\n  epochs: 7\n")
    defaults = load_config(CoordinatorConfig)
    assert defaults.data.root == "" and defaults.train.epochs == 20 and defaults.data.image_size == 64
    from_yaml = load_config(CoordinatorConfig, path)
    assert from_yaml.data.root == "from-yaml" and from_yaml.train.epochs == 7 and from_yaml.train.batch_size == 64
    overridden = load_config(CoordinatorConfig, path, {"data.root": "from-flag", "train.epochs": None, "train.batch_size": 8})
    assert overridden.data.root == "from-flag"  # flag beats YAML
    assert overridden.train.epochs == 7  # an absent flag (None) leaves the YAML value
    assert overridden.train.batch_size == 8 and overridden.data.image_size == 32
    assert to_dict(overridden)["data"]["root"] == "from-flag"
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(CoordinatorConfig, path, {"data.nope": 1})


def test_a_partial_mapping_keeps_the_defaults_its_field_sets(tmp_path):
    """A nested section given in part keeps what the field's default factory set, not the bare class defaults."""
    from attribnet.bench.accuracy.config import AccuracyConfig

    path = write(tmp_path, "federation:\n  finetune_objective: attribution\nhead:\n  epochs: 4\n")
    config = load_config(AccuracyConfig, path)
    assert config.federation.finetune_objective == "attribution"
    assert (config.federation.finetune_rounds, config.federation.finetune_learning_rate) == (3, 5e-4)  # the factory's
    assert (config.head.epochs, config.head.patience, config.head.batch_size) == (4, 5, 64)
    with pytest.raises(ValueError, match="finetune_objective must be one of detection, attribution"):
        load_config(AccuracyConfig, path, {"federation.finetune_objective": "everything"})


def test_file_problems_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(DataConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"line 2.*invalid YAML"):
        load_config(DataConfig, write(tmp_path, "root: a\n  bad: [\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(DataConfig, write(tmp_path, "- a\n- b\n"))
    assert load_config(DataConfig, write(tmp_path, "")) == DataConfig()
    assert load_config(ZooConfig, write(tmp_path, "per_source: 10\n")).per_source == 10
