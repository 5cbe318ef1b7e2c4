from __future__ import annotations

import pickle

import pytest

import streamzip
from streamzip.errors import (
    BackendError,
    ConfigError,
    DependencyError,
    InputError,
    InputNotFoundError,
    NotMediaError,
    OutputError,
    Problem,
    SnapshotError,
    StreamzipError,
    TokenError,
)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(ConfigError, ValueError), (InputError, ValueError), (InputNotFoundError, FileNotFoundError),
     (TokenError, ValueError), (SnapshotError, ValueError), (DependencyError, ImportError),
     (BackendError, RuntimeError), (OutputError, OSError), (NotMediaError, ValueError)],
)
def test_every_error_is_a_streamzip_error_and_its_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, StreamzipError)
    assert issubclass(cls, builtin)


def test_message_names_input_stage_time_and_fix() -> None:
    err = NotMediaError("the file is empty", input="a.mp4", stage="decode", time_s=1.5, fix="re-copy it")
    text = str(err)
    assert "the file is empty" in text and "'a.mp4'" in text and "'decode'" in text
    assert "1.500 s" in text and "Fix: re-copy it" in text


def test_with_context_fills_only_what_is_missing() -> None:
    err = TokenError("bad", stage="fuse")
    err.with_context(input="x.mp4", stage="other", time_s=2.0)
    assert err.stage == "fuse" and err.input == "x.mp4" and err.time_s == 2.0
    assert "'x.mp4'" in str(err) and "'fuse'" in str(err)


def test_config_error_lists_every_problem_with_its_path() -> None:
    err = ConfigError([Problem("steps[1].threshold", "must be in [0, 1]"), Problem("decode.fps", "must be > 0")])
    text = str(err)
    assert "2 problems" in text and "steps[1].threshold: must be in [0, 1]" in text and "decode.fps" in text


@pytest.mark.parametrize("err", [
    NotMediaError("empty", input="a.mp4", stage="decode", fix="x"),
    ConfigError([Problem("steps[0].op", "unknown")]),
])
def test_errors_pickle_with_their_fields(err: StreamzipError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)


def test_errors_are_exported_flat() -> None:
    for name in ("StreamzipError", "ConfigError", "InputError", "TokenError", "SnapshotError"):
        assert getattr(streamzip, name) is getattr(streamzip.errors, name)
