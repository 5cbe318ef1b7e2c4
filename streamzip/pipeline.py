"""The Python DSL and its YAML form.

A :class:`Pipeline` is plain data: decode options and a list of steps, each with a unique id, a
registered stage name and its options. YAML files in ``pipelines/`` map one-to-one to it::

    name: default
    decode: {fps: 2, width: 224, height: 224}
    steps:
      - {id: encode, op: patch_encoder, patch_size: 16}
      - {id: fuse, op: framefusion, threshold: 0.9}

Python::

    Pipeline("default", decode={"fps": 2}).add("patch_encoder", id="encode").add("framefusion", threshold=0.9)

It is validated before it runs, and every problem is listed at once with its path (``steps[1].threshold``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from streamzip.config import Config, join_path, short_repr
from streamzip.errors import ConfigError, Problem, StreamzipError
from streamzip.operator import Operator
from streamzip.packets import Packet, Tokens
from streamzip.registry import get as get_stage
from streamzip.sources.file import DecodeConfig

__all__ = ["Pipeline", "Step", "load_pipeline"]

_RESERVED = ("id", "op", "resources")
#: what a stage may ask of the Ray runtime; fractions let several stage actors share a core.
_RESOURCE_KEYS = {"num_cpus": (0.0, 64.0), "num_gpus": (0.0, 8.0), "memory_mb": (0.0, 1_048_576.0)}


@dataclass
class Step:
    """One step: ``op`` is the registered stage name, ``params`` its options as plain data."""

    id: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)
    #: a Python callable for ``function_encoder`` steps built in the DSL (not expressible in YAML).
    fn: Callable[..., Any] | None = None
    #: overrides of the stage's declared resources (``num_cpus``, ``num_gpus``, ``memory_mb``).
    resources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "op": self.op, **self.params}
        if self.resources:
            out["resources"] = dict(self.resources)
        return out


class Pipeline:
    """A linear chain of stages after a decoder. Build it, validate it, run it.

    Args:
        name: a label for outputs and logs.
        decode: :class:`DecodeConfig` or a mapping of its options.
        keep_assignment: write each original token's representative to the outputs (needed by
            fidelity measures and ``streamzip inspect``).
        query: a text for query-guided compression: every step that takes a query (``hf_encoder``
            with a SigLIP or CLIP model) scores tokens by relevance to it, and FrameFusion's pruning and
            DPC-KNN's weights follow the scores. A step's own ``query`` option wins over it.
    """

    def __init__(self, name: str = "pipeline", *, decode: DecodeConfig | Mapping[str, Any] | None = None,
                 keep_assignment: bool = True, query: str | None = None) -> None:
        self.name = name
        self._decode_raw: Mapping[str, Any] | DecodeConfig = decode if decode is not None else {}
        self.keep_assignment = keep_assignment
        self.query = query
        self.steps: list[Step] = []

    # -- building -----------------------------------------------------------------------------
    def add(self, op: str, *, id: str | None = None, resources: Mapping[str, float] | None = None,  # noqa: A002
            **params: Any) -> Pipeline:
        """Append a step running the stage registered as ``op``; returns the pipeline for chaining.

        ``resources`` overrides what the stage asks of the Ray runtime (``num_cpus``, ``num_gpus``,
        ``memory_mb``); by default each stage declares its own (see :meth:`resources`)."""
        self.steps.append(Step(id=id or self._fresh_id(op), op=op, params=dict(params),
                               resources=dict(resources or {})))
        return self

    def encode_with(self, fn: Callable[..., Any], *, id: str = "encoder") -> Pipeline:  # noqa: A002
        """Append a video encoder that calls ``fn(frames (T,H,W,3) uint8) -> (T,N,D)``."""
        self.steps.append(Step(id=id, op="function_encoder", params={}, fn=fn))
        return self

    def _fresh_id(self, op: str) -> str:
        taken = {s.id for s in self.steps}
        if op not in taken:
            return op
        i = 2
        while f"{op}_{i}" in taken:
            i += 1
        return f"{op}_{i}"

    # -- plain data and YAML ------------------------------------------------------------------
    @property
    def decode(self) -> DecodeConfig:
        if isinstance(self._decode_raw, DecodeConfig):
            return self._decode_raw
        return DecodeConfig.from_mapping(self._decode_raw, "decode")

    def to_dict(self) -> dict[str, Any]:
        decode = self._decode_raw.to_dict() if isinstance(self._decode_raw, DecodeConfig) else dict(self._decode_raw)
        out: dict[str, Any] = {"name": self.name}
        if decode:
            out["decode"] = decode
        if not self.keep_assignment:
            out["keep_assignment"] = False
        if self.query is not None:
            out["query"] = self.query
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Pipeline:
        """Build from plain data; every structural problem is reported at once."""
        problems: list[Problem] = []
        if not isinstance(data, Mapping):
            raise ConfigError([Problem("", f"a pipeline is a mapping with 'steps', got {type(data).__name__}")],
                              input=source)
        allowed = {"name", "decode", "steps", "keep_assignment", "description", "query"}
        for key in data:
            if key not in allowed:
                problems.append(Problem(str(key), f"unknown key; allowed: {', '.join(sorted(allowed))}"))
        name = data.get("name", "pipeline")
        if not isinstance(name, str):
            problems.append(Problem("name", f"expected a string, got {short_repr(name)}"))
            name = "pipeline"
        decode = data.get("decode") or {}
        if not isinstance(decode, Mapping):
            problems.append(Problem("decode", f"expected a mapping, got {short_repr(decode)}"))
            decode = {}
        keep = data.get("keep_assignment", True)
        if not isinstance(keep, bool):
            problems.append(Problem("keep_assignment", f"expected true or false, got {short_repr(keep)}"))
            keep = True
        query = data.get("query")
        if query is not None and not isinstance(query, str):
            problems.append(Problem("query", f"expected a text, got {short_repr(query)}"))
            query = None
        pipe = cls(name, decode=dict(decode), keep_assignment=keep, query=query)
        steps = data.get("steps")
        if not isinstance(steps, list) or not steps:
            problems.append(Problem("steps", "expected a non-empty list of steps"))
            steps = []
        for i, raw in enumerate(steps):
            path = join_path("steps", i)
            if not isinstance(raw, Mapping):
                problems.append(Problem(path, f"a step is a mapping with 'op', got {short_repr(raw)}"))
                continue
            op = raw.get("op")
            if not isinstance(op, str):
                problems.append(Problem(join_path(path, "op"), f"every step needs 'op' (a stage name), got {short_repr(op)}"))
                continue
            sid = raw.get("id", None)
            if sid is not None and not isinstance(sid, str):
                problems.append(Problem(join_path(path, "id"), f"expected a string, got {short_repr(sid)}"))
                sid = None
            params = {k: v for k, v in raw.items() if k not in _RESERVED}
            res = raw.get("resources") or {}
            if not isinstance(res, Mapping):
                problems.append(Problem(join_path(path, "resources"), f"expected a mapping, got {short_repr(res)}"))
                res = {}
            pipe.add(op, id=sid, resources=dict(res), **params)
        if problems:
            raise ConfigError(problems, input=source)
        return pipe

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike[str]) -> Pipeline:
        """From a YAML file path or YAML text (safe loading only)."""
        source = None
        text = os.fspath(text_or_path)
        if "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.exists(text)):
            source = text
            try:
                with open(text, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as err:
                raise ConfigError([Problem("", f"cannot read the pipeline file: {err.strerror}")],
                                  input=source) from err
        try:
            data = yaml.safe_load(io.StringIO(text))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ConfigError([Problem("", f"not valid YAML ({where}{getattr(err, 'problem', err)})")],
                              input=source) from err
        except RecursionError:
            # PyYAML builds nested collections recursively: thousands of `[` must not escape as a crash.
            raise ConfigError([Problem("", "not a pipeline: the YAML nests deeper than it can be read")],
                              input=source) from None
        return cls.from_dict(data, source=source)

    # -- validation ---------------------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """Every problem with this pipeline, each with its path; empty when it can run."""
        problems: list[Problem] = []
        try:
            _ = self.decode
        except ConfigError as err:
            problems.extend(err.problems)
        seen: dict[str, int] = {}
        made: set[str] = set()
        for i, step in enumerate(self.steps):
            path = join_path("steps", i)
            if step.id in seen:
                problems.append(Problem(join_path(path, "id"),
                                        f"duplicate step id {step.id!r} (also steps[{seen[step.id]}]); ids must be unique"))
            seen.setdefault(step.id, i)
            try:
                info = get_stage(step.op, path=join_path(path, "op"))
            except ConfigError as err:
                problems.extend(err.problems)
                continue
            try:
                info.cls.config_class.from_mapping(step.params, path)
            except ConfigError as err:
                problems.extend(err.problems)
            for key, value in step.resources.items():
                rpath = join_path(join_path(path, "resources"), key)
                if key not in _RESOURCE_KEYS:
                    problems.append(Problem(rpath, f"unknown resource; allowed: {', '.join(_RESOURCE_KEYS)}"))
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(Problem(rpath, f"expected a number, got {short_repr(value)}"))
                elif not _RESOURCE_KEYS[key][0] <= value <= _RESOURCE_KEYS[key][1]:
                    lo, hi = _RESOURCE_KEYS[key]
                    problems.append(Problem(rpath, f"must be in [{lo:g}, {hi:g}], got {value}"))
            if step.op == "function_encoder" and step.fn is None and not step.params.get("function"):
                problems.append(Problem(join_path(path, "function"),
                                        "a function_encoder needs 'function: package.module:callable'"))
            wants = info.cls.modalities
            if wants is not None and Tokens in info.cls.accepts and not (set(wants) & made) and not info.cls.produces:
                need = " or ".join(wants)
                problems.append(Problem(path, f"{step.op} takes {need} tokens but no earlier step makes them; "
                                              f"add an encoder for {need} before it"))
            made.update(info.cls.produces)
        if self.query is not None:
            if not isinstance(self.query, str) or not self.query.strip():
                problems.append(Problem("query", f"must be a non-empty text, got {short_repr(self.query)}"))
            elif not self.query_steps():
                problems.append(Problem("query", "no step takes a query; query-guided compression needs an "
                                                 "hf_encoder with a SigLIP or CLIP model (a text tower)"))
        if not self.steps:
            problems.append(Problem("steps", "the pipeline has no steps; add an encoder at least"))
        elif not made:
            problems.append(Problem("steps", "no step makes tokens; add an encoder (e.g. patch_encoder)"))
        return problems

    def validate(self) -> Pipeline:
        """Raise :class:`ConfigError` listing every problem; returns the pipeline when valid."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def query_steps(self) -> list[str]:
        """Ids of the steps that take a text query."""
        out = []
        for step in self.steps:
            try:
                if get_stage(step.op).cls.accepts_query:
                    out.append(step.id)
            except StreamzipError:
                continue
        return out

    # -- running ------------------------------------------------------------------------------
    def modalities(self) -> set[str]:
        """The token modalities the pipeline's encoders make."""
        self.validate()
        return {m for s in self.steps for m in get_stage(s.op).cls.produces}

    def resources(self) -> dict[str, dict[str, float]]:
        """What each step's actor asks of the Ray runtime, by step id: the stage class's declared
        ``resources`` with the step's overrides on top."""
        self.validate()
        out = {}
        for step in self.steps:
            declared = dict(get_stage(step.op).cls.resources)
            declared.update({k: float(v) for k, v in step.resources.items()})
            out[step.id] = declared
        return out

    def build(self, stream: str = "") -> list[Operator]:
        """Fresh stage instances for one stream (stateful stages are one per stream)."""
        self.validate()
        return [self.build_step(i, stream) for i in range(len(self.steps))]

    def build_step(self, index: int, stream: str = "") -> Operator:
        """A fresh instance of step ``index`` for one stream."""
        step = self.steps[index]
        info = get_stage(step.op)
        params = step.params
        if self.query is not None and info.cls.accepts_query and params.get("query") is None:
            params = {**params, "query": self.query}
        config: Config = info.cls.config_class.from_mapping(params, join_path("steps", index))
        kwargs: dict[str, Any] = {"stream": stream, "step_id": step.id}
        if step.fn is not None:
            kwargs["fn"] = step.fn
        return info.cls(config, **kwargs)

    def run(self, inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
            runtime: str = "local", **options: Any) -> Iterator[Packet]:
        """Run on one input or several; yields the final packets (tokens, then ``End`` per input).

        ``runtime``: ``"local"`` (in-process) or ``"ray"``.
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        from streamzip.runtime import get_runtime

        return get_runtime(runtime, **options).run(self, [os.fspath(p) for p in inputs])

    # -- display ------------------------------------------------------------------------------
    def graph(self) -> str:
        """The dataflow as text: decode, then each step with its options and what it takes."""
        lines = [f"pipeline {self.name!r}"]
        try:
            d = self.decode
            lines.append(f"  [decode] fps={d.fps:g} size={d.width}x{d.height} audio={d.sample_rate_hz} Hz mono")
        except StreamzipError:
            lines.append("  [decode] (invalid options)")
        for step in self.steps:
            try:
                info = get_stage(step.op)
                takes = ",".join(info.cls.modalities or ()) or ",".join(c.__name__ for c in info.cls.accepts)
            except StreamzipError:
                takes = "?"
            opts = " ".join(f"{k}={v}" for k, v in step.params.items())
            lines.append(f"    │\n    ▼\n  [{step.id}] {step.op} ({takes}){' ' + opts if opts else ''}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.op for s in self.steps]})"


def load_pipeline(name_or_path: str | os.PathLike[str]) -> Pipeline:
    """A pipeline from a YAML path, or by the name of a built-in one in ``streamzip.pipelines``."""
    text = os.fspath(name_or_path)
    if os.path.exists(text) or text.endswith((".yaml", ".yml")) or "\n" in text:
        return Pipeline.from_yaml(text)
    from streamzip.pipelines import builtin_names, builtin_path

    path = builtin_path(text)
    if path is None:
        known = ", ".join(builtin_names()) or "(none)"
        raise ConfigError([Problem("", f"no pipeline file or built-in pipeline named {text!r}; "
                                       f"built-in: {known}")])
    return Pipeline.from_yaml(path)

