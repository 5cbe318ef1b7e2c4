"""The operators compute on their input's device: no tensor of theirs is made without naming one.

There is no GPU here, so the check runs on the CPU. Every tensor that the operator modules create
without naming a device lands on PyTorch's ``meta`` device (tensors without data), as under
``torch.set_default_device("meta")``: mixed with the CPU inputs it raises, and one that reaches an
output fails the comparison with a plain run. A forgotten ``device=`` is a tensor on the CPU while the
tokens are on a GPU; here it fails on any machine. Tensors made by the packet layer
(``streamzip.tokens``, ``streamzip.packets``: on the CPU by contract) are left alone.
tests/gpu/test_cuda.py runs the same operators on a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from streamzip.cli import main as cli_main
from streamzip.errors import ConfigError
from streamzip.operators import atome, framefusion, memory, ttm_learned, window
from streamzip.packets import AUDIO, VIDEO, Gap, Packet, Tokens
from streamzip.pipeline import Pipeline
from streamzip.tokens import take, with_fresh_assignment

OPERATOR_FILES = frozenset(m.__file__ for m in (atome, framefusion, memory, ttm_learned, window))  # type: ignore[misc]


class _MetaDefault(TorchFunctionMode):
    """Factory calls (``torch.zeros``, ``full``, ``arange``, ``tensor``…) made directly from ``files``
    without a device create on ``meta``; the rest of PyTorch, and other modules, are untouched."""

    def __init__(self, files: frozenset[str]) -> None:
        super().__init__()
        self.files = files
        self.redirected = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if (func in _device_constructors() and kwargs.get("device") is None
                and sys._getframe(1).f_code.co_filename in self.files):
            kwargs["device"] = "meta"
            self.redirected += 1
        return func(*args, **kwargs)


@contextmanager
def meta_default(files: frozenset[str] = OPERATOR_FILES) -> Iterator[_MetaDefault]:
    with _MetaDefault(files) as mode:
        yield mode


def on_meta_default(fn: Callable[[], Any]) -> Any:
    """``fn()`` with the operators' undeviced tensors on meta."""
    with meta_default():
        return fn()


# -- comparing results ----------------------------------------------------------------------------

def assert_same(got: Any, want: Any, path: str = "result") -> None:
    """Equal, tensor by tensor (every one on the CPU), through tuples, lists, dicts and dataclasses."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.device.type == "cpu", f"{path} is on {got.device}: a tensor made without a device"
        assert got.dtype == want.dtype and torch.equal(got, want), path
    elif isinstance(want, Tokens) or dataclasses.is_dataclass(want):
        assert type(got) is type(want), path
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name), f"{path}.{f.name}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got), path
    else:
        assert got == want, path


def check(fn: Callable[[], Any]) -> Any:
    """``fn()`` gives the same under the meta default as without it."""
    want = fn()
    assert_same(on_meta_default(fn), want)
    return want


# -- inputs ---------------------------------------------------------------------------------------

def video(frames: torch.Tensor, *, fps: float = 2.0, start_s: float = 0.0, first_id: int = 0,
          score: bool = False) -> Tokens:
    """``(T, P, D)`` frames, patches on one row, fresh provenance."""
    t, p, d = frames.shape
    t0 = (start_s + torch.arange(t, dtype=torch.float64) / fps).repeat_interleave(p)
    pos = torch.stack([torch.zeros(p, dtype=torch.int32), torch.arange(p, dtype=torch.int32)], 1).repeat(t, 1)
    tok = Tokens(stream="s", modality=VIDEO, data=frames.reshape(t * p, d).float(), t0=t0, t1=t0 + 1 / fps, pos=pos,
                 size=torch.ones(t * p, dtype=torch.int64),
                 score=torch.rand(t * p, generator=torch.Generator().manual_seed(5)) if score else None)
    return with_fresh_assignment(tok, first_id)


def drifting(t: int, p: int, d: int, *, seed: int = 0, step: float = 0.15) -> torch.Tensor:
    """Frames whose patches drift slowly (similar neighbours in time), with a cut half way."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(p, d, generator=g)
    frames = []
    for i in range(t):
        if i == t // 2:
            base = torch.randn(p, d, generator=g)
        base = base + step * torch.randn(p, d, generator=g)
        frames.append(base.clone())
    return torch.stack(frames)


def speech(n: int, d: int = 8, *, seed: int = 1, token_s: float = 0.04, gaps: tuple[int, ...] = (),
           first_id: int = 0) -> Tokens:
    """Audio tokens tiling the clock, smooth runs with jumps, and a second of silence before ``gaps``."""
    g = torch.Generator().manual_seed(seed)
    steps = 0.2 * torch.randn(n, d, generator=g)
    jumps = torch.arange(0, n, max(1, n // 5))
    steps[jumps] += 3 * torch.randn(jumps.numel(), d, generator=g)
    data = steps.cumsum(0)
    t0 = torch.arange(n, dtype=torch.float64) * token_s
    for i in gaps:
        t0[i:] += 1.0
    tok = Tokens(stream="s", modality=AUDIO, data=data, t0=t0, t1=t0 + token_s,
                 pos=torch.full((n, 2), -1, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def packets(tokens: Tokens, per_packet: int) -> list[Tokens]:
    return [take(tokens, torch.arange(i, min(i + per_packet, tokens.num_tokens)))
            for i in range(0, tokens.num_tokens, per_packet)]


def stream(make_op: Callable[[], Any], inputs: Sequence[Packet]) -> tuple[list[Packet], dict[str, Any]]:
    """Every packet through a fresh operator, then its flush; the outputs and the final state. The state
    also goes through ``load_state_dict`` half way, so restoring runs here too."""
    op = make_op()
    out: list[Packet] = []
    for i, p in enumerate(inputs):
        out += op.on_gap(p) if isinstance(p, Gap) else op.process(p)
        if i == len(inputs) // 2:
            fresh = make_op()
            fresh.load_state_dict(op.state_dict())
            op = fresh
    out += op.flush()
    return out, op.state_dict()


# -- the harness itself ---------------------------------------------------------------------------

def test_the_harness_catches_a_tensor_made_without_a_device(tmp_path: Path) -> None:
    path = tmp_path / "buggy_kernel.py"
    path.write_text("import torch\n\n"
                    "def ok(x):\n    return x + torch.zeros(x.shape, dtype=x.dtype, device=x.device)\n\n"
                    "def bug(x):\n    return x + torch.zeros(x.shape, dtype=x.dtype)\n")
    spec = importlib.util.spec_from_file_location("buggy_kernel", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.ones(3)
    with meta_default(frozenset({str(path)})) as mode:
        assert torch.equal(mod.ok(x), x)
        with pytest.raises(RuntimeError, match="meta"):
            mod.bug(x)
        inside_the_test = torch.zeros(2)  # other files are left alone
    assert mode.redirected == 1 and inside_the_test.device.type == "cpu"
    assert {Path(f).name for f in OPERATOR_FILES} == {"atome.py", "framefusion.py", "memory.py", "ttm_learned.py",
                                                      "window.py"}


# -- kernels --------------------------------------------------------------------------------------

def test_framefusion_kernels() -> None:
    tok = video(drifting(6, 5, 4), score=True)
    one = video(torch.randn(1, 3, 4))
    empty = Tokens.empty("s", VIDEO, 4, with_assignment=True)
    for t in (tok, one, empty):
        check(lambda t=t: framefusion.frame_ids(t.t0))
        check(lambda t=t: framefusion.adjacent_similarity(t))
        check(lambda t=t: framefusion.plan_fusion(t, threshold=0.9))
        check(lambda t=t: framefusion.plan_fusion(t, keep_ratio=0.5))
        check(lambda t=t: framefusion.calibrate_threshold(t))
    zero = torch.zeros(2, 4)
    check(lambda: framefusion.safe_cosine(zero, torch.cat([zero[:1], torch.ones(1, 4)])))
    plan = framefusion.plan_fusion(tok, threshold=0.9)
    assert plan.num_merged > 0
    check(lambda: framefusion.apply_fusion(tok, plan))
    query = torch.randn(4, generator=torch.Generator().manual_seed(2))
    for q in (query, None):
        check(lambda q=q: framefusion.importance(tok, q))
    check(lambda: framefusion.importance(dataclasses.replace(tok, score=None)))
    merged = framefusion.apply_fusion(tok, plan)
    check(lambda: framefusion.prune(merged, 7, framefusion.importance(merged, query)))
    check(lambda: framefusion.keep_only(merged, torch.tensor([0, 2, 3])))


def test_atome_kernels() -> None:
    tok = speech(120, gaps=(50,))
    for t in (tok, speech(1), Tokens.empty("s", AUDIO, 8, with_assignment=True)):
        check(lambda t=t: atome.adjacent_similarity(t.data))
        check(lambda t=t: atome.time_cuts(t.t0, t.t1, 0.02))
        check(lambda t=t: atome.input_cuts(t, threshold=0.8, max_gap_s=0.02))
        for kw in ({"threshold": 0.8}, {"threshold": None, "max_tokens": 10}, {"threshold": 0.5, "ratio": 0.2},
                   {"threshold": 0.9, "max_passes": 1}):
            check(lambda t=t, kw=kw: atome.atome(t, **kw))
    cuts = atome.input_cuts(tok, threshold=0.8, max_gap_s=0.02)
    assert bool(cuts.any()) and not bool(cuts.all())
    plan = check(lambda: atome.plan_merges(tok.data, tok.size, cuts, threshold=0.8))
    assert plan.passes > 1
    scores = atome.adjacent_similarity(tok.data)
    for limit in (None, 5, 0):
        check(lambda limit=limit: atome.greedy_disjoint(scores, scores > 0.5, limit))
    check(lambda: atome._cap_runs(cuts, 7))


def test_window_kernels_on_both_paths() -> None:
    vid = video(drifting(8, 6, 5), score=True)
    aud = speech(150, gaps=(70,))
    for t in (vid, aud):
        for device in (None, torch.device("cpu")):
            check(lambda t=t, device=device: window.reduce_window(t, 11, device=device))
        check(lambda t=t: window.position_major_order(t))
    check(lambda: window.reduce_window(vid, 1000))
    # Both plans: numpy (the CPU's) and torch (any other device's), with every option.
    barrier = (aud.t0 > 2.5).to(torch.int64)
    order = window.position_major_order(vid)
    cases = [(aud, {"t0": aud.t0, "t1": aud.t1, "recency_weight": 1.0, "barrier": barrier, "now_s": 9.0}),
             (aud, {"max_fraction_per_pass": 0.5}), (vid, {"order": order}),
             (vid, {"order": order, "t0": vid.t0, "t1": vid.t1, "recency_weight": 0.5})]
    for t, kw in cases:
        for budget in (1, 9, 40, 500):  # 500: the identity plan
            want = check(lambda t=t, kw=kw, b=budget: window.plan_adjacent_merges(t.data, t.size, b, **kw))
            if budget >= t.num_tokens:
                continue  # the identity plan, made before either path
            got = check(lambda t=t, kw=kw, b=budget: window._plan_torch(
                t.data, t.size, b, **{"order": None, "t0": None, "t1": None, "now_s": None, "recency_weight": 0.0,
                                      "barrier": None, "max_fraction_per_pass": 0.25, **kw}))
            assert_same(got, want)  # the same merges (these tokens have no near ties)


def test_memory_kernels() -> None:
    tok = speech(90, gaps=(40,))
    tok = dataclasses.replace(tok, src=None, assignment=None)
    segment = (torch.arange(90) >= 40).to(torch.int64)
    for device in (None, torch.device("cpu")):
        for budget in (1, 12, 200):
            check(lambda b=budget, d=device: memory.summarise(tok, segment, b, now_s=8.0, recency_weight=1.0,
                                                              device=d))


def test_learned_memory() -> None:
    torch.manual_seed(0)
    mem = ttm_learned.LearnedMemory(8, memory_tokens=4, read_tokens=2, input_tokens=3, hidden_dim=8)
    steps = torch.randn(2, 3, 3, 8)
    with torch.no_grad():
        check(lambda: mem.run(steps))
        check(lambda: mem.initial_memory(2))
        check(lambda: mem(mem.initial_memory(1), steps[:1, 0]))


# -- streaming operators --------------------------------------------------------------------------

FRAMEFUSION_CONFIGS = [{}, {"threshold": 0.9}, {"keep_ratio": 0.5}, {"threshold": 0.8, "max_tokens": 9},
                       {"threshold": 0.8, "prune_ratio": 0.3, "query_embedding": (1.0, 0.0, -1.0, 0.5)},
                       {"calibrate_frames": 30}]


@pytest.mark.parametrize("config", FRAMEFUSION_CONFIGS, ids=str)
def test_framefusion_operator(config: dict[str, Any]) -> None:
    frames = drifting(20, 5, 4, seed=3, step=0.1)
    tok = video(frames, score=True)
    gap = Gap(stream="s", start_s=10.0, end_s=11.0)
    later = video(drifting(6, 5, 4, seed=4, step=0.1), start_s=11.0, first_id=tok.num_tokens)
    inputs: list[Packet] = [*packets(tok, 5 * 3), gap, *packets(later, 5 * 2)]
    for device in ("cpu", "auto"):
        def make(device: str = device) -> framefusion.FrameFusion:
            return framefusion.FrameFusion(framefusion.FrameFusionConfig(**config, device=device))
        check(lambda make=make: stream(make, inputs))


@pytest.mark.parametrize("config", [{"threshold": 0.8}, {"threshold": 0.9, "max_run_tokens": 20},
                                    {"threshold": None, "max_tokens": 20}, {"threshold": 0.5, "ratio": 0.3}], ids=str)
def test_atome_operator(config: dict[str, Any]) -> None:
    tok = speech(300, gaps=(90, 91, 200))
    for device in ("cpu", "auto"):
        def make(device: str = device) -> atome.ATome:
            return atome.ATome(atome.ATomeConfig(**config, device=device))
        out = check(lambda make=make: stream(make, packets(tok, 7)))[0]
        assert sum(o.num_tokens for o in out) < tok.num_tokens


def window_inputs() -> list[Packet]:
    vid = video(drifting(24, 6, 5, seed=6), score=True)  # 12 s at 2 fps, 144 tokens
    aud = speech(300, gaps=(200,))  # 13 s with a gap
    out: list[Packet] = []
    for v, a in zip(packets(vid, 6 * 4), packets(aud, 50)):
        out += [v, a]
    return [*out, Gap(stream="s", start_s=13.0, end_s=14.5)]


def test_window_operator() -> None:
    for device in ("cpu", "auto"):
        def make(device: str = device) -> window.Window:
            return window.Window(window.WindowConfig(max_video_tokens=10, max_audio_tokens=9, device=device))
        out = check(lambda make=make: stream(make, window_inputs()))[0]
        assert any(p.meta.get("tokens_in", 0) > 10 for p in out if isinstance(p, Tokens))


def test_memory_operator() -> None:
    windows = stream(lambda: window.Window(window.WindowConfig(max_video_tokens=10, max_audio_tokens=9,
                                                               device="cpu")), window_inputs())[0]
    for device in ("cpu", "auto"):
        def make(device: str = device) -> memory.TokenMemory:
            return memory.TokenMemory(memory.MemoryConfig(max_tokens=12, read_tokens=5, device=device))
        out = check(lambda make=make: stream(make, windows))[0]
        assert any(p.meta.get("kind") == "memory" and p.num_tokens for p in out if isinstance(p, Tokens))


# -- the device option ----------------------------------------------------------------------------

STAGES = {"framefusion": framefusion.FrameFusion, "atome": atome.ATome, "window": window.Window,
          "memory": memory.TokenMemory}


def test_auto_is_the_cpu_here_and_cuda_without_a_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("auto is CUDA on this machine")
    for name, cls in STAGES.items():
        assert cls().device == torch.device("cpu"), name
        assert cls(cls.config_class(device="cpu")).device == torch.device("cpu"), name
        for device in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match="PyTorch sees no CUDA GPU") as err:
                _ = cls(cls.config_class(device=device), step_id=f"my_{name}").device
            assert [p.path for p in err.value.problems] == [f"my_{name}.device"]


def test_the_yaml_option_validates() -> None:
    good = """
name: gpu
steps:
  - {id: enc, op: patch_encoder}
  - {id: mel, op: fbank_encoder}
  - {id: ff, op: framefusion, threshold: 0.9, device: cpu}
  - {id: am, op: atome, device: auto}
  - {id: win, op: window, device: cuda}
  - {id: mem, op: memory, device: "cuda:0"}
"""
    ops = Pipeline.from_yaml(good).validate().build()  # cuda is resolved at first use, not here
    assert [op.config.device for op in ops[2:]]  # type: ignore[attr-defined] == ["cpu", "auto", "cuda", "cuda:0"]
    bad = good.replace("device: cpu", "device: gpu").replace("device: auto", "device: 3")
    with pytest.raises(ConfigError) as err:
        Pipeline.from_yaml(bad).validate()
    problems = {p.path: p.message for p in err.value.problems}
    assert set(problems) == {"steps[2].device", "steps[3].device"}
    assert "auto, cpu, cuda or cuda:N" in problems["steps[2].device"] and "'gpu'" in problems["steps[2].device"]


def test_steps_lists_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["steps", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in STAGES:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} (operator)"))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
        assert "    device = 'auto'" in lines[start + 1:end], name
