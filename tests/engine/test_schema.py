"""The config machinery on OmegaConf: conversions it makes, the lossy ones zarrl refuses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from zarrl.engine.schema import ConfigError, build


@dataclass
class Inner:
    rate: float = 1.0
    size: int | None = None
    widths: list[int] = field(default_factory=lambda: [4])


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, Any] = field(default_factory=dict)


def test_values_are_converted_as_yaml_readers_expect():
    cfg = build(Outer, {"inner": {"rate": "1e-3", "size": 3, "widths": [8, 16]}, "flag": True})
    assert isinstance(cfg, Outer) and isinstance(cfg.inner, Inner)
    assert cfg.inner.rate == pytest.approx(1e-3) and cfg.inner.widths == [8, 16]
    assert build(Outer, {"inner": {"rate": 2}}).inner.rate == 2.0  # an int where a float goes
    assert build(Outer, {"extra": {"anything": [1, "a"]}}).extra == {"anything": [1, "a"]}
    assert build(Outer, {}).inner.size is None  # defaults fill what is missing


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"flag": 3}, "flag: got 3 (int), expected bool"),  # OmegaConf would make it True
        ({"name": 5}, "name: got 5 (int), expected str"),  # OmegaConf would make it "5"
        ({"inner": {"rate": True}}, "inner.rate: got True (bool), expected float"),
        ({"inner": {"rat": 1.0}}, "inner.rat: unknown key (did you mean inner.rate?)"),
        ({"inner": {"size": "many"}}, "inner.size: got 'many'"),
        ({"inner": {"widths": [4, "a"]}}, "inner.widths[1]: got 'a'"),
        ({"inner": 3}, "inner: got 3, expected a mapping"),
        ({"extra": 3}, "extra: got 3, expected a mapping"),
    ],
)
def test_wrong_values_name_the_dotted_key(data, message):
    with pytest.raises(ConfigError) as info:
        build(Outer, data)
    assert message in str(info.value)


def test_conform_is_the_one_value_against_type_check():
    from typing import Literal

    from zarrl.engine.schema import conform

    assert conform("1e-3", float, "k") == pytest.approx(1e-3)  # YAML 1.1 writes 1e-3 as a string
    assert isinstance(conform(2, float, "k"), float) and conform("7", int, "k") == 7
    assert conform(None, int | None, "k") is None and conform(3, int | None, "k") == 3
    assert conform("a", Literal["a", "b"], "k") == "a" and conform([1, 2], list[int], "k") == [1, 2]
    assert conform({"x": 1}, Any, "k") == {"x": 1}
    refused = [
        (True, float, "k: got True (bool), expected float"),
        (3, bool, "k: got 3 (int), expected bool"),
        (5, str, "k: got 5 (int), expected str"),
        (3.5, int, "k: got 3.5 (float), expected int"),
        ("many", int | None, "k: got 'many' (str), expected int | None"),
        ([1, "a"], list[int], "k[1]: got 'a' (str), expected int"),
        ("c", Literal["a", "b"], "k: got 'c' (str)"),
    ]
    for value, tp, message in refused:
        with pytest.raises(ConfigError) as info:
            conform(value, tp, "k")
        assert str(info.value).startswith(message), str(info.value)


def test_sections_loss_arguments_and_task_options_refuse_alike():
    from zarrl.engine.config import EnvConfig, ModelConfig
    from zarrl.engine.registry import build_loss
    from zarrl.engine.tasks import build_task, task_options

    expected = "got True (bool), expected float"
    with pytest.raises(ConfigError, match=rf"^inner\.rate: {re.escape(expected)}"):
        build(Outer, {"inner": {"rate": True}})
    task = build_task(EnvConfig(task="sequence", name="tree"), ModelConfig())
    networks = {"actor": task.build_actor, "value": task.build_value, "prior": task.build_prior}
    with pytest.raises(ConfigError, match=rf"^loss\.gamma: {re.escape(expected)}"):
        build_loss({"name": "trust_pcl", "gamma": True}, networks)
    with pytest.raises(ConfigError, match=rf"^env\.options\.rate: {re.escape(expected)}"):
        task_options("t", {"rate": True}, {"rate": 1.0})
    assert task_options("t", {"rate": 2}, {"rate": 1.0}) == {"rate": 2.0}
    loss, _ = build_loss({"name": "trust_pcl", "gamma": "0.5"}, networks)
    assert float(loss.gamma) == 0.5
