"""The config machinery on OmegaConf: conversions it makes, the lossy ones zarrl refuses."""

from __future__ import annotations

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
