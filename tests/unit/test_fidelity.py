"""Fidelity: mean cosine of originals to their representatives, and token reduction."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamzip.operators.dpc_knn import DPCKNN, DPCKNNConfig
from streamzip.operators.fidelity import FidelityMeter, fidelity
from streamzip.operators.framefusion import FrameFusion, FrameFusionConfig
from streamzip.packets import Tokens
from streamzip.tokens import cat, merge_groups, take, with_fresh_assignment


def make(data: torch.Tensor, *, first_id: int = 0, start_s: float = 0.0) -> Tokens:
    n = data.shape[0]
    t0 = start_s + torch.arange(n, dtype=torch.float64) * 0.5
    tok = Tokens(stream="s", modality="video", data=data.float(), t0=t0, t1=t0 + 0.5,
                 pos=torch.zeros(n, 2, dtype=torch.int32), size=torch.ones(n, dtype=torch.int64))
    return with_fresh_assignment(tok, first_id)


def test_known_answer_with_a_dropped_token() -> None:
    orig = make(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]))
    out = merge_groups(orig, torch.tensor([0, 0, 1, -1]))  # tokens 0,1 merge; 2 alone; 3 dropped
    res = fidelity(orig, [out])
    c = 1 / math.sqrt(2)  # cos([1,0], [.5,.5]) = cos([0,1], [.5,.5])
    assert res["fidelity"] == pytest.approx((c + c + 1.0 + 0.0) / 4)
    assert res["reduction"] == pytest.approx(0.5)
    assert (res["tokens_in"], res["tokens_out"]) == (4, 2)


def test_identity_is_one_and_nothing_is_zero() -> None:
    orig = make(torch.randn(6, 3))
    assert fidelity(orig, [orig]) == {"fidelity": pytest.approx(1.0), "reduction": 0.0, "tokens_in": 6,
                                      "tokens_out": 6}
    res = fidelity(orig, [])
    assert res["fidelity"] == 0.0 and res["reduction"] == 1.0


def test_meter_frees_originals_and_spans_input_packets() -> None:
    a, b = make(torch.randn(4, 3)), make(torch.randn(4, 3), first_id=4, start_s=2.0)
    meter = FidelityMeter()
    meter.add_originals(a)
    meter.add_originals(b)
    assert meter.pending == 8
    both = merge_groups(cat([a, b]), torch.tensor([0, 0, 1, 1, 1, 2, 2, 2]))
    first = take(both, torch.tensor([0, 1]))        # covers all of a and one token of b
    second = take(both, torch.tensor([2]))
    meter.add_outputs(first)
    assert meter.pending == 3 and len(meter._chunks[("s", "video")]) == 1  # a is freed
    meter.add_outputs(second)
    assert meter.pending == 0 and meter._chunks[("s", "video")] == []
    assert meter.result() == fidelity(cat([a, b]), [both])
    meter.add_outputs(second)  # already accounted: not counted twice
    assert meter.unmatched == 3


def test_missing_provenance_gives_no_fidelity() -> None:
    orig = make(torch.randn(3, 2))
    out = make(torch.randn(3, 2))
    out.src = out.assignment = None
    res = fidelity(orig, [out])
    assert res["fidelity"] is None and res["reduction"] == 0.0
    with pytest.raises(ValueError, match="src"):
        FidelityMeter().add_originals(out)


def test_streams_and_modalities_have_separate_ids() -> None:
    v = make(torch.tensor([[1.0, 0.0]]))
    a = make(torch.tensor([[0.0, 1.0]]))
    a.modality = "audio"
    meter = FidelityMeter()
    meter.add_originals(v)
    meter.add_originals(a)
    swapped = make(torch.tensor([[0.0, 1.0]]))  # video id 0 represented by the audio vector
    meter.add_outputs(swapped)
    meter.add_outputs(a)
    assert meter.result()["fidelity"] == pytest.approx(0.5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), budget=st.integers(1, 30), packet=st.integers(1, 6))
def test_meter_matches_the_function_on_a_real_chain(seed: int, budget: int, packet: int) -> None:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(1, 9, 4, generator=g) + 0.2 * torch.randn(12, 9, 4, generator=g)
    t0 = (torch.arange(12, dtype=torch.float64) / 2).repeat_interleave(9)
    orig = with_fresh_assignment(Tokens("s", "video", frames.reshape(-1, 4), t0, t0 + 0.5,
                                        torch.stack([torch.arange(9) // 3, torch.arange(9) % 3], 1)
                                        .repeat(12, 1).int(), torch.ones(108, dtype=torch.int64)), 0)
    ff, dpc = FrameFusion(FrameFusionConfig(threshold=0.8)), DPCKNN(DPCKNNConfig(max_tokens=budget))
    meter, outs = FidelityMeter(), []
    frame = torch.arange(108) // 9
    for s in range(0, 12, packet):
        part = take(orig, ((frame >= s) & (frame < s + packet)).nonzero().squeeze(1))
        meter.add_originals(part)
        for o in [x for p in ff.process(part) for x in dpc.process(p)]:
            meter.add_outputs(o)
            outs.append(o)
    for o in [x for p in ff.flush() for x in dpc.process(p)] + dpc.flush():
        meter.add_outputs(o)
        outs.append(o)
    res = meter.result()
    assert res == pytest.approx(fidelity(orig, outs))
    assert meter.pending == 0 and 0.0 < res["fidelity"] <= 1.0
    assert res["tokens_out"] <= budget * 3
