"""Pins the public API: a change here is a change users see."""

from __future__ import annotations

import streamzip


def test_public_names() -> None:
    assert sorted(streamzip.__all__) == sorted([
        "AUDIO", "VIDEO", "AudioChunk", "BackendError", "Config", "ConfigError", "CorruptMediaError",
        "DecodeConfig", "DependencyError", "End", "FileSource", "Gap", "InputError", "InputNotFoundError", "ModelError",
        "NoStreamError", "NotMediaError", "Operator", "OutputError", "Packet", "Pipeline", "Problem",
        "SnapshotError", "StreamzipError", "TokenError", "Tokens", "VideoFrames", "__version__", "load",
        "load_pipeline", "register",
    ])
    for name in streamzip.__all__:
        assert hasattr(streamzip, name), name


def test_operators_and_pipelines_install_under_streamzip() -> None:
    from pathlib import Path

    import streamzip.operators
    import streamzip.pipelines

    assert Path(streamzip.operators.__file__).parent.name == "operators"
    assert Path(streamzip.pipelines.__file__).parent.name == "pipelines"
    assert "default" in streamzip.pipelines.builtin_names()
