"""The one error hierarchy of streamzip.

Every error streamzip raises on purpose is a :class:`StreamzipError`. Each one also subclasses the
builtin a caller would naturally catch (as PyAV does), so ``except ValueError`` keeps working::

    StreamzipError
    ├── ConfigError            (ValueError)         a pipeline, YAML file or option is wrong
    ├── InputError             (ValueError)         an input cannot be used
    │   ├── InputNotFoundError (FileNotFoundError)  the path does not exist
    │   ├── NotMediaError                           no container FFmpeg can read (random bytes, empty file)
    │   ├── NoStreamError                           the container lacks a stream the pipeline needs
    │   ├── CorruptMediaError                       the media broke while decoding and nothing usable came out
    │   ├── RtspError (streamzip.sources.rtsp)      a camera: StreamNotFoundError, StreamAuthError,
    │   │                                           SourceUnreachableError, StreamTimeoutError
    │   └── MicError (streamzip.sources.mic)        a microphone device cannot be opened
    ├── TokenError             (ValueError)         tokens an operator cannot take (NaN, a changed dimension…)
    ├── SnapshotError          (ValueError)         a state_dict from another config or version
    ├── ModelError             (ValueError)         a model folder or id that cannot be used (missing, not
    │                                               cached while offline, the wrong kind of model…)
    ├── DependencyError        (ImportError)        an optional dependency is missing; names the extra
    ├── BackendError           (RuntimeError)       the runtime failed (no Ray cluster at that address…)
    └── OutputError            (OSError)            an output cannot be written (folder not writable…)

A message says what was wrong, the bad value, the allowed values and what to do, and names the input,
the step and the stream time when they are known: ``str(err)`` puts them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BackendError",
    "ConfigError",
    "CorruptMediaError",
    "DependencyError",
    "InputError",
    "InputNotFoundError",
    "ModelError",
    "NoStreamError",
    "NotMediaError",
    "OutputError",
    "Problem",
    "SnapshotError",
    "StreamzipError",
    "TokenError",
]


class StreamzipError(Exception):
    """Base of every error streamzip raises on purpose.

    Args:
        message: what was wrong, with the bad value.
        input: the input (file, URL with credentials already redacted) it concerns.
        stage: the pipeline step id or stage name.
        time_s: the stream time in seconds where it happened.
        fix: what the user should do.
    """

    def __init__(
        self,
        message: str,
        *,
        input: str | None = None,  # noqa: A002 - the public name users read in messages
        stage: str | None = None,
        time_s: float | None = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.input = input
        self.stage = stage
        self.time_s = time_s
        self.fix = fix
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = []
        if self.input is not None:
            where.append(f"input {self.input!r}")
        if self.stage is not None:
            where.append(f"stage {self.stage!r}")
        if self.time_s is not None:
            where.append(f"at {self.time_s:.3f} s")
        text = self.message
        if where:
            text = f"{text} ({', '.join(where)})"
        if self.fix:
            text = f"{text}. Fix: {self.fix}"
        return text

    def with_context(
        self, *, input: str | None = None, stage: str | None = None, time_s: float | None = None  # noqa: A002
    ) -> StreamzipError:
        """Fill in context the raiser did not know; keeps what it did know. Returns self."""
        self.input = self.input if self.input is not None else input
        self.stage = self.stage if self.stage is not None else stage
        self.time_s = self.time_s if self.time_s is not None else time_s
        self.args = (self._compose(),)
        return self

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Errors cross process boundaries (Ray workers): keep the keyword fields.
        return (_rebuild, (type(self), self.message, self.input, self.stage, self.time_s, self.fix,
                           getattr(self, "problems", None)))

    def __str__(self) -> str:
        return self._compose()


def _rebuild(cls, message, input, stage, time_s, fix, problems):  # type: ignore[no-untyped-def]  # noqa: A002
    if cls is ConfigError or (isinstance(cls, type) and issubclass(cls, ConfigError)):
        err = cls(problems or [Problem("", message)])
    else:
        err = cls(message, input=input, stage=stage, time_s=time_s, fix=fix)
    return err


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, at a path such as ``steps[2].threshold``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(StreamzipError, ValueError):
    """A pipeline, YAML file or option is wrong. ``problems`` lists every problem found at once."""

    def __init__(self, problems: Sequence[Problem] | str, *, input: str | None = None) -> None:  # noqa: A002
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"invalid configuration: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid configuration, {len(self.problems)} problems:\n{lines}"
        super().__init__(message, input=input)


class InputError(StreamzipError, ValueError):
    """An input cannot be used."""


class InputNotFoundError(InputError, FileNotFoundError):
    """The input path does not exist."""


class NotMediaError(InputError):
    """The input is not a container FFmpeg can read."""


class NoStreamError(InputError):
    """The input lacks a stream the pipeline needs."""


class CorruptMediaError(InputError):
    """The media broke while decoding and nothing usable came out."""


class TokenError(StreamzipError, ValueError):
    """Tokens an operator cannot take: NaN/inf, a dimension that changed mid-stream, and so on."""


class SnapshotError(StreamzipError, ValueError):
    """A snapshot (state_dict) from another config or version."""


class ModelError(StreamzipError, ValueError):
    """A model (a folder or a Hugging Face id) that cannot be used: missing, not in the cache while
    downloads are off or the machine is offline, no weights, or the wrong kind of model."""


class DependencyError(StreamzipError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class BackendError(StreamzipError, RuntimeError):
    """The runtime failed: no Ray cluster at the address, a worker lost for good, and so on."""


class OutputError(StreamzipError, OSError):
    """An output cannot be written."""
