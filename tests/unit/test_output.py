from __future__ import annotations

import json
import os

import pytest
import torch

from streamzip import output as out_mod
from streamzip.errors import InputError, OutputError
from streamzip.output import load, output_name, write_output
from streamzip.packets import Tokens
from streamzip.tokens import merge_groups, with_fresh_assignment


def packet(modality: str, n: int, first_id: int, kind: str | None = None) -> Tokens:
    t0 = torch.arange(n, dtype=torch.float64) + first_id
    tok = Tokens(stream="s", modality=modality, data=torch.randn(n, 4), t0=t0, t1=t0 + 1,
                 pos=torch.arange(2 * n, dtype=torch.int32).reshape(n, 2), size=torch.ones(n, dtype=torch.int64),
                 meta={"kind": kind} if kind else {"window": first_id})
    return with_fresh_assignment(tok, first_id)


def test_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = merge_groups(packet("video", 4, 0), torch.tensor([0, 0, 1, -1]))
    b = packet("video", 2, 4)
    c = packet("audio", 3, 0)
    folder = write_output(tmp_path, "clip.mp4", [a, c, b], manifest={"input": "clip.mp4"})
    res = load(folder)
    assert set(res.groups) == {"tokens/video", "tokens/audio"}
    video = res.tokens("tokens/video")
    assert torch.equal(video.data, torch.cat([a.data, b.data]))
    assert video.assignment.tolist() == [0, 0, 1, -1, 2, 3]
    pk = res.packets("tokens/video")
    assert len(pk) == 2 and pk[1].meta == {"window": 4} and torch.equal(pk[1].data, b.data)
    assert pk[0].assignment.tolist() == [0, 0, 1, -1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input"] == "clip.mp4" and manifest["versions"]["streamzip"]


def test_no_partial_output_is_ever_visible(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(out_mod, "save_file", boom)
    with pytest.raises(OutputError, match="No space left"):
        write_output(tmp_path, "x", [packet("video", 2, 0)])
    assert os.listdir(tmp_path) == []


def test_rewrite_replaces_atomically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_output(tmp_path, "x", [packet("video", 2, 0)])
    write_output(tmp_path, "x", [packet("video", 3, 0)])
    assert load(tmp_path / "x").tokens().num_tokens == 3
    assert sorted(os.listdir(tmp_path)) == ["x"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path.mp4", "a\0b.mp4", "..", "", "x" * 500,
                                  "clip?.mp4", "C:\\video\\a.mp4"])
def test_output_names_cannot_escape(name: str) -> None:
    safe = output_name(name)
    assert "/" not in safe and "\\" not in safe and "\0" not in safe
    assert not safe.startswith(".") and 0 < len(safe) <= 120


def test_load_of_a_non_output_is_an_input_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="no streamzip output here"):
        load(tmp_path)


def test_unwritable_output_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        write_output(blocker / "sub", "x", [packet("video", 1, 0)])


def test_assignment_offsets_across_packets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Three video packets of 2, 3 and 1 tokens (4, 3 and 2 originals) among audio packets: each one's
    # assignment is shifted by the video tokens before it (0, 2, 5) — not by originals, not by the
    # previous packet alone, not by the tokens of another group.
    a = merge_groups(packet("video", 4, 0), torch.tensor([0, 0, 1, -1]))
    b = packet("video", 3, 4)
    c = merge_groups(packet("video", 2, 7), torch.tensor([-1, 0]))
    res = load(write_output(tmp_path, "x", [a, packet("audio", 3, 0), b, packet("audio", 2, 3), c]))
    video = res.tokens("tokens/video")
    assert video.src.tolist() == list(range(9))
    assert video.assignment.tolist() == [0, 0, 1, -1, 2, 3, 4, -1, 5]
    for p in (a, b, c):  # every original still points at the token that represents it
        live = p.assignment >= 0
        assert torch.equal(video.data[video.assignment[p.src[live]]], p.data[p.assignment[live]])
    back = res.packets("tokens/video")
    assert [q.assignment.tolist() for q in back] == [p.assignment.tolist() for p in (a, b, c)]
    assert all(torch.equal(q.data, p.data) for q, p in zip(back, (a, b, c)))
