"""Fixtures of the hardening suite: the generated corpus and good clips (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import build_corpus, good_clips


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every broken-input case of ``corpus.CASES``, written once per session: name -> path."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three valid, different clips."""
    return good_clips(tmp_path_factory.mktemp("good"))
