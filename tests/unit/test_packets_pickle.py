"""Packets pickle with their CPU tensors as NumPy arrays, out of band (what Ray's store takes
without torch's slow ``torch.save`` path), and come back equal, writable and independent."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from streamzip.packets import AudioChunk, Gap, Tokens, VideoFrames, wire
from streamzip.tokens import with_fresh_assignment


def tokens(n: int = 50, d: int = 16) -> Tokens:
    t0 = torch.arange(n, dtype=torch.float64) * 0.5
    tok = Tokens(stream="cam", modality="video", data=torch.randn(n, d), t0=t0, t1=t0 + 0.5,
                 pos=torch.randint(0, 14, (n, 2), dtype=torch.int32), size=torch.ones(n, dtype=torch.int64),
                 score=torch.rand(n), meta={"window": 3, "kind": "tokens"})
    return with_fresh_assignment(tok, 100)


def packets() -> list[object]:
    return [
        tokens(),
        VideoFrames(stream="cam", frames=torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8),
                    pts_s=torch.arange(4, dtype=torch.float64) / 2, duration_s=0.5),
        AudioChunk(stream="mic", samples=torch.rand(1600) * 2 - 1, sample_rate_hz=16000, start_s=1.25),
    ]


def same(a: object, b: object) -> None:
    assert type(a) is type(b)
    for name, va in vars(a).items():
        vb = getattr(b, name)
        if isinstance(va, torch.Tensor):
            assert isinstance(vb, torch.Tensor) and vb.dtype == va.dtype and torch.equal(va, vb), name
        else:
            assert va == vb, name


@pytest.mark.parametrize("packet", packets(), ids=lambda p: type(p).__name__)
def test_round_trip_and_tensors_travel_out_of_band(packet: object) -> None:
    buffers: list[pickle.PickleBuffer] = []
    blob = pickle.dumps(packet, protocol=5, buffer_callback=buffers.append)
    tensors = [v for v in vars(packet).values() if isinstance(v, torch.Tensor)]
    # every tensor is one out-of-band buffer: the pickle stream itself holds none of the data
    assert len(buffers) == len(tensors)
    assert len(blob) < 2000
    same(packet, pickle.loads(blob, buffers=buffers))
    same(packet, pickle.loads(pickle.dumps(packet)))  # in band too (plain pickle)


def test_read_only_buffers_are_copied_so_stages_can_write() -> None:
    tok = tokens()
    buffers: list[pickle.PickleBuffer] = []
    blob = pickle.dumps(tok, protocol=5, buffer_callback=buffers.append)
    # A shared store hands out read-only memory, as Ray's does.
    frozen = [np.frombuffer(b.raw(), dtype=np.uint8).copy() for b in buffers]
    for f in frozen:
        f.flags.writeable = False
    out = pickle.loads(blob, buffers=frozen)
    out.data[0, 0] = 1e6  # no error: the read-only array was copied
    out.size += 1
    again = pickle.loads(blob, buffers=frozen)
    same(tok, again)


def test_copies_and_odd_tensors_keep_their_meaning() -> None:
    tok = tokens()
    dup = copy.deepcopy(tok)
    dup.data[0, 0] = 123.0
    assert tok.data[0, 0] != 123.0
    shallow = copy.copy(tok)  # shares the tensors, as a shallow copy does
    assert all(getattr(shallow, k) is None or getattr(shallow, k).data_ptr() == v.data_ptr()
               for k, v in vars(tok).items() if isinstance(v, torch.Tensor))
    # bfloat16 has no NumPy twin, a grad-tracking tensor must not lose its graph silently
    odd = copy.copy(tok)
    odd.data = tok.data.to(torch.bfloat16)
    odd.score = tok.score.clone().requires_grad_(True)  # type: ignore[union-attr]
    back = pickle.loads(pickle.dumps(odd))
    assert back.data.dtype == torch.bfloat16 and torch.equal(back.data, odd.data)
    assert back.score.requires_grad and torch.equal(back.score.detach(), odd.score.detach())
    assert back.t0.dtype == torch.float64  # the others still as arrays
    # non-contiguous views come back equal
    view = copy.copy(tok)
    view.data = tok.data.t().contiguous().t()
    same(view, pickle.loads(pickle.dumps(view, protocol=5)))


def test_packets_without_tensors_pickle_as_before() -> None:
    gap = Gap(stream="cam", start_s=1.0, end_s=2.5, reason="reconnect")
    assert pickle.loads(pickle.dumps(gap)) == gap


def test_wire_sends_the_tensors_of_a_nested_state_out_of_band() -> None:
    state = {"threshold": 0.9, "held": [{"data": torch.randn(40, 8), "t0": torch.arange(40.0)}],
             "pending": None, "pair": (torch.ones(3, dtype=torch.int64), "x"),
             "half": torch.ones(2, dtype=torch.bfloat16)}
    buffers: list[pickle.PickleBuffer] = []
    blob = pickle.dumps(wire(state), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 3  # the bfloat16 tensor keeps torch's pickling
    back = pickle.loads(blob, buffers=buffers)
    assert back["threshold"] == 0.9 and back["pending"] is None and back["pair"][1] == "x"
    assert isinstance(back["pair"], tuple) and torch.equal(back["pair"][0], state["pair"][0])
    assert torch.equal(back["held"][0]["data"], state["held"][0]["data"])
    assert back["half"].dtype == torch.bfloat16
    assert wire(state)["held"][0]["t0"] is not state["held"][0]["t0"]  # a copy of the tree, not the state
    assert state["held"][0]["t0"].dtype == torch.float32  # the state itself is untouched
