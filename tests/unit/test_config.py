from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from streamzip.config import Config
from streamzip.errors import ConfigError


@dataclass(frozen=True)
class Demo(Config):
    threshold: float = 0.9
    k: int = 5
    mode: Literal["a", "b"] = "a"
    size: tuple[int, int] = (224, 224)
    label: str | None = None

    def check(self):  # type: ignore[no-untyped-def]
        if not 0 <= self.threshold <= 1:
            yield "threshold", f"must be in [0, 1], got {self.threshold}"


def test_defaults_and_coercion() -> None:
    c = Demo.from_mapping({"threshold": 1, "size": [64, 32]})
    assert c.threshold == 1.0 and isinstance(c.threshold, float)
    assert c.size == (64, 32)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        Demo().k = 3  # type: ignore[misc]


def test_all_problems_at_once_with_paths() -> None:
    with pytest.raises(ConfigError) as info:
        Demo.from_mapping({"threshhold": 0.5, "k": "five", "mode": "c", "size": [1]}, "steps[2]")
    paths = {p.path for p in info.value.problems}
    assert paths == {"steps[2].threshhold", "steps[2].k", "steps[2].mode", "steps[2].size"}
    text = str(info.value)
    assert "did you mean 'threshold'" in text and "'five'" in text


def test_bool_is_not_a_number_and_range_checks_run() -> None:
    with pytest.raises(ConfigError, match="k: expected int, got True"):
        Demo(k=True)
    with pytest.raises(ConfigError, match=r"threshold: must be in \[0, 1\], got 2.0"):
        Demo(threshold=2.0)


def test_to_dict_round_trips() -> None:
    c = Demo(threshold=0.5, size=(8, 8), label="x")
    assert Demo.from_mapping(c.to_dict()) == c
