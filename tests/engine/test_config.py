"""Config loading: YAML sections, dotted overrides, validation errors naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from zarrl.engine.config import Config, ConfigError, apply_overrides, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_fill_missing_sections_and_keys(tmp_path):
    config = load_config(_write(tmp_path, {"train": {"batch_size": 8}}))
    assert config.train.batch_size == 8
    assert config.train.slice_len == Config().train.slice_len
    assert config.env.name == "CartPole-v1"


def test_dotted_overrides_parse_yaml_scalars():
    data = apply_overrides(
        {"loss": {"name": "trust_pcl"}},
        ["loss.gamma=0.99", "optim.lr_policy=1e-3", "buffer.max_size=null", "env.name=Acrobot-v1"],
    )
    assert data["loss"]["gamma"] == 0.99
    assert data["optim"]["lr_policy"] == pytest.approx(1e-3)
    assert data["buffer"]["max_size"] is None
    config = Config.from_dict(data)
    assert config.env.name == "Acrobot-v1"
    assert config.optim.lr_policy == pytest.approx(1e-3)
    assert config.loss["gamma"] == 0.99


def test_yaml_string_scientific_notation_is_read_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_value: 3e-4\n")
    assert load_config(path).optim.lr_value == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.batch_size=-1", "train.batch_size: got -1"),
        ("train.batch_size=abc", "train.batch_size: got 'abc'"),
        ("train.bach_size=4", "did you mean train.batch_size"),
        ("train.mode=sometimes", "train.mode: got 'sometimes'"),
        ("run.device=tpu", "run.device: got 'tpu'"),
        ("train.slice_len=0", "train.slice_len: got 0"),
        ("model.hidden=[64,0]", "model.hidden"),
        ("log.progress=3", "log.progress: got 3"),
        ("nosection.key=1", "nosection: unknown key"),
        ("train.mode=offline", "buffer.path: got None"),
    ],
)
def test_invalid_values_raise_error_naming_key_and_value(override, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert needle in str(info.value)


def test_offline_mode_requires_update_budget():
    with pytest.raises(ConfigError, match="train.total_updates"):
        load_config(None, ["train.mode=offline", "buffer.path=x.zarr"])


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.batch_size"])


def test_missing_and_non_mapping_config_files_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_loss_section_defaults_to_trust_pcl_and_rejects_bad_names():
    assert Config.from_dict({"loss": {"gamma": 0.9}}).loss == {"name": "trust_pcl", "gamma": 0.9}
    with pytest.raises(ConfigError, match="loss.name: got 3"):
        Config.from_dict({"loss": {"name": 3}})
    with pytest.raises(ConfigError, match="loss: got"):
        Config.from_dict({"loss": [1]})


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(None, ["loss.gamma=0.97", "train.slice_len=8", "buffer.cache=null"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_shipped_configs_are_valid():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert {p.name for p in paths} >= {
        "cartpole_trust_pcl.yaml",
        "acrobot_trust_pcl.yaml",
        "demo.yaml",
    }
    for path in paths:
        load_config(path)
