from __future__ import annotations

import pytest
import torch

from streamzip.encoders import FunctionEncoder, PatchEncoder, PatchEncoderConfig
from streamzip.encoders.patch import patchify
from streamzip.errors import ConfigError
from streamzip.packets import VideoFrames


def frames(t: int, h: int = 32, w: int = 48) -> VideoFrames:
    g = torch.Generator().manual_seed(0)
    return VideoFrames(stream="s", frames=torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g),
                       pts_s=torch.arange(t, dtype=torch.float64) * 0.5, duration_s=0.5)


def test_patches_hold_the_pixels_of_their_cell() -> None:
    f = frames(1)
    x, grid, _ = patchify(f.frames, 16, normalize=False)
    assert grid == (2, 3) and x.shape == (1, 6, 16 * 16 * 3)
    # Patch (row 1, col 2) is pixels [16:32, 32:48].
    expect = f.frames[0, 16:32, 32:48].to(torch.float32).div(255).reshape(-1)
    assert torch.allclose(x[0, 1 * 3 + 2], expect)


def test_encoder_emits_tokens_with_times_positions_and_ids() -> None:
    enc = PatchEncoder(PatchEncoderConfig(patch_size=16))
    a = enc.process(frames(2))[0]
    b = enc.process(frames(1))[0]
    assert a.num_tokens == 12 and a.dim == 768
    assert a.pos[:6].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert a.t0.tolist() == [0.0] * 6 + [0.5] * 6 and a.t1[0] == 0.5
    assert a.src.tolist() == list(range(12)) and b.src.tolist() == list(range(12, 18))
    assert enc.state_dict() == {"next_id": 18}


def test_same_frame_gives_identical_tokens() -> None:
    f = frames(1)
    f2 = VideoFrames("s", f.frames.repeat(2, 1, 1, 1), torch.tensor([0.0, 0.5], dtype=torch.float64), 0.5)
    t = PatchEncoder().process(f2)[0]
    assert torch.equal(t.data[:6], t.data[6:])


def test_frame_smaller_than_a_patch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="smaller than one 16px patch"):
        patchify(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 16)


def test_bad_patch_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        PatchEncoderConfig(patch_size=0)


def test_function_encoder_plugs_any_callable() -> None:
    def mean_colour(x: torch.Tensor):  # (T,H,W,3) -> (T, 4, 3) with a 2x2 grid
        t = x.float().reshape(x.shape[0], 2, x.shape[1] // 2, 2, x.shape[2] // 2, 3).mean((2, 4))
        return t.reshape(x.shape[0], 4, 3), (2, 2)

    enc = FunctionEncoder(fn=mean_colour)
    out = enc.process(frames(3))[0]
    assert out.num_tokens == 12 and out.dim == 3 and out.pos[3].tolist() == [1, 1]


def test_function_encoder_rejects_wrong_shapes() -> None:
    enc = FunctionEncoder(fn=lambda x: torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"must return \(T=2, N, D\)"):
        enc.process(frames(2))
