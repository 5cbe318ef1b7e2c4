"""The reference semantics of the local runtime, with toy stages (no media)."""

from __future__ import annotations

import torch

from streamzip.operator import Operator
from streamzip.packets import AudioChunk, End, Gap, Packet, Tokens
from streamzip.runtime.local import StageRunner
from streamzip.stats import InputResult
from streamzip.tokens import with_fresh_assignment


def tokens(modality: str, n: int, t: float = 0.0) -> Tokens:
    tok = Tokens(stream="s", modality=modality, data=torch.ones(n, 2), t0=torch.full((n,), t, dtype=torch.float64),
                 t1=torch.full((n,), t + 1, dtype=torch.float64), pos=torch.zeros(n, 2, dtype=torch.int32),
                 size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, 0)


class Buffer(Operator):
    """Holds video tokens until flush; records what it saw."""

    modalities = ("video",)

    def __init__(self, **kw):  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.held: list[Tokens] = []
        self.gaps = 0

    def process(self, packet: Packet) -> list[Packet]:
        self.held.append(packet)  # type: ignore[arg-type]
        return []

    def flush(self) -> list[Packet]:
        out, self.held = self.held, []
        return out  # type: ignore[return-value]


class Tag(Operator):
    """Marks every token packet it takes."""

    def process(self, packet: Packet) -> list[Packet]:
        assert isinstance(packet, Tokens)
        packet.meta["tagged"] = True
        return [packet]


def run(stages: list[Operator], packets: list[Packet]) -> list[Packet]:
    runner = StageRunner(stages, InputResult(input="x", stream="s"))
    return [out for p in packets for out in runner.push(p)]


def test_other_modalities_pass_straight_through() -> None:
    audio = tokens("audio", 3)
    out = run([Buffer(step_id="b")], [audio])
    assert out == [audio]


def test_flush_output_goes_down_the_chain_before_end() -> None:
    v = tokens("video", 2)
    out = run([Buffer(step_id="b"), Tag(step_id="t")], [v, End("s")])
    assert isinstance(out[0], Tokens) and out[0].meta["tagged"] and isinstance(out[1], End)


def test_gap_flushes_by_default_and_is_passed_on() -> None:
    v = tokens("video", 2)
    gap = Gap("s", 1.0, 2.0)
    out = run([Buffer(step_id="b")], [v, gap])
    assert out[0] is v and out[1] is gap


def test_non_token_packets_skip_token_stages() -> None:
    chunk = AudioChunk("s", torch.zeros(160), 16000, 0.0)
    assert run([Tag(step_id="t")], [chunk]) == [chunk]


def test_stage_stats_count_tokens() -> None:
    runner = StageRunner([Tag(step_id="t")], InputResult(input="x", stream="s"))
    list(runner.push(tokens("video", 5)))
    assert runner.stats[0].tokens_in == 5 and runner.stats[0].packets_in == 1


class Threads(Operator):
    """Records torch's thread count in each call."""

    def __init__(self, **kw):  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.seen: list[int] = []

    def process(self, packet: Packet) -> list[Packet]:
        self.seen.append(torch.get_num_threads())
        return [packet]


class OneThread(Threads):
    threads = 1


def test_a_stage_computes_with_its_declared_threads_and_the_caller_keeps_its_own() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        light, other = OneThread(step_id="light"), Threads(step_id="other")
        run([light, other], [tokens("video", 2), tokens("video", 1)])
        assert light.seen == [1, 1]        # small ops: one thread
        assert other.seen == [3, 3]        # threads None: the caller's setting, restored between stages
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_failing_stage_still_gives_the_threads_back() -> None:
    class Fails(OneThread):
        def process(self, packet: Packet) -> list[Packet]:
            raise RuntimeError("boom")

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        try:
            run([Fails(step_id="f")], [tokens("video", 1)])
        except RuntimeError:
            pass
        else:
            raise AssertionError("the stage's error was swallowed")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_built_in_small_op_stages_run_on_one_thread() -> None:
    from streamzip.registry import get as get_stage

    for name in ("patch_encoder", "fbank_encoder", "framefusion", "atome", "vad", "window", "memory", "tome"):
        assert get_stage(name).cls.threads == 1, name
    for name in ("hf_encoder", "hf_audio_encoder", "function_encoder", "dpc_knn"):  # models; DPC-KNN runs its own pool of threads
        assert get_stage(name).cls.threads is None, name
