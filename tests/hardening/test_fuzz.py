"""Fuzzing (Hypothesis) of the two places untrusted bytes enter: opening media, and loading pipelines.

- Media: random bytes (bare, or behind a real container's magic number) and real media with bytes
  flipped, overwritten, deleted, duplicated or cut go to :class:`FileSource`. Each must give packets
  (well-formed, with finite values, times in order, ``End`` last) or an :class:`InputError` naming the
  file: never another exception, never a hang.
- Pipelines: random YAML-ish documents and random plain data go to ``Pipeline.from_yaml`` /
  ``from_dict``, then ``validate()`` and ``build()``: a pipeline whose stages can be built, or a
  :class:`ConfigError` (or, for an hf encoder's model that cannot be loaded, a :class:`ModelError`),
  never another exception.

Examples are bounded (``max_examples``) so that the file runs in about 20 s; raise them locally with
``--hypothesis-seed``/``HYPOTHESIS_PROFILE`` when hunting.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _hardening import bounded
from corpus import write_video
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from streamzip.config import config_fields
from streamzip.errors import ConfigError, InputError, ModelError
from streamzip.packets import AudioChunk, End, VideoFrames
from streamzip.pipeline import Pipeline
from streamzip.registry import available
from streamzip.sources import DecodeConfig, FileSource
from streamzip.synthetic import make_clip

OPEN_TIMEOUT_S = 30
_FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def fuzz(examples: int) -> settings:
    return settings(_FUZZ, max_examples=examples)
_names = itertools.count()


# -- media ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return tmp_path_factory.mktemp("fuzz-media")


class Seeds(dict[str, bytes]):
    def __repr__(self) -> str:  # Hypothesis prints the test's arguments: not 100 kB of bytes
        return f"Seeds({', '.join(f'{k}: {len(v)} bytes' for k, v in self.items())})"


@pytest.fixture(scope="module")
def seeds(media_dir) -> Seeds:  # type: ignore[no-untyped-def]
    """Small valid files in several containers (1 s, 32x32): what the mutations start from."""
    out = Seeds()
    for ext in ("ts", "mkv", "mp4"):
        path = write_video(media_dir / f"seed.{ext}", width=32, height=32, frames=10, audio_rate=16000,
                           fmt="mpegts" if ext == "ts" else None)
        out[ext] = path.read_bytes()
    out["m4a"] = Path(make_clip(media_dir / "seed.m4a", scenes=(("static", 1),), video=False).path).read_bytes()
    out["wav"] = Path(make_clip(media_dir / "seed.wav", scenes=(("static", 1),), video=False,
                                audio_codec="pcm_s16le").path).read_bytes()
    return out


def open_media(path: Path) -> str:
    """Decode ``path`` fully; check what came out. Returns "packets" or the InputError's class name."""
    try:
        packets = list(FileSource(path, DecodeConfig(fps=4, width=32, height=32, batch_frames=4)))
    except InputError as err:
        assert path.name in str(err), f"the error does not name the input: {err}"
        return type(err).__name__
    assert packets and isinstance(packets[-1], End) and not any(isinstance(p, End) for p in packets[:-1])
    last_t = -math.inf
    for p in packets[:-1]:
        if isinstance(p, VideoFrames):
            assert p.frames.dtype == torch.uint8 and tuple(p.frames.shape[1:]) == (32, 32, 3)
            assert bool(torch.isfinite(p.pts_s).all()), "video times must be finite"
            assert float(p.pts_s[0]) >= last_t and bool((p.pts_s[1:] >= p.pts_s[:-1]).all()), "video time order"
            last_t = float(p.pts_s[-1])
        elif isinstance(p, AudioChunk):
            assert p.sample_rate_hz == 16000 and p.samples.dim() == 1 and p.samples.numel() > 0
            assert bool(torch.isfinite(p.samples).all()), "audio samples must be finite"
            assert math.isfinite(p.start_s)
        else:
            raise AssertionError(f"unexpected packet {type(p).__name__}")
    return "packets"


def fuzz_open(media_dir: Path, data: bytes, ext: str) -> str:
    path = media_dir / f"case{next(_names)}.{ext}"
    path.write_bytes(data)
    try:
        return bounded(lambda: open_media(path), OPEN_TIMEOUT_S, f"opening {len(data)} fuzzed bytes as .{ext}")
    finally:
        path.unlink()


MAGIC = [b"", b"\x1a\x45\xdf\xa3", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", b"G\x40\x00\x10",
         b"RIFF\x24\x08\x00\x00WAVEfmt ", b"OggS\x00\x02", b"FLV\x01\x05\x00\x00\x00\x09", b"ID3\x03\x00",
         b"\x00\x00\x00\x01\x67\x42", b"\xff\xf1\x50\x80", b"fLaC"]


@fuzz(300)
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=3000),
       ext=st.sampled_from(["mp4", "mkv", "ts", "wav", "bin"]))
@example(magic=b"", body=b"", ext="mp4")
@example(magic=b"\x1a\x45\xdf\xa3", body=b"\x00" * 64, ext="mkv")
def test_random_bytes_open_as_packets_or_an_input_error(media_dir, magic, body, ext) -> None:  # type: ignore[no-untyped-def]
    event(fuzz_open(media_dir, magic + body, ext))


MUTATIONS = ("flip", "splat", "zero", "delete", "duplicate", "truncate")


def mutate(data: bytes, ops: list[tuple[str, float, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, length, seed in ops:
        if not buf:
            break
        i = int(where * (len(buf) - 1))
        rng = np.random.default_rng(seed)
        if kind == "flip":
            buf[i] ^= 1 << (seed % 8)
        elif kind == "splat":
            n = min(length, len(buf) - i)
            buf[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == "zero":
            n = min(length, len(buf) - i)
            buf[i:i + n] = bytes(n)
        elif kind == "delete":
            del buf[i:i + length]
        elif kind == "duplicate":
            buf[i:i] = buf[i:i + length]
        else:
            del buf[i:]
    return bytes(buf)


@fuzz(1000)
@given(ext=st.sampled_from(["ts", "mkv", "mp4", "m4a", "wav"]),
       ops=st.lists(st.tuples(st.sampled_from(MUTATIONS), st.floats(0, 1), st.integers(1, 4096),
                              st.integers(0, 2**32 - 1)), min_size=1, max_size=6))
def test_mutated_media_open_as_packets_or_an_input_error(media_dir, seeds, ext, ops) -> None:  # type: ignore[no-untyped-def]
    event(fuzz_open(media_dir, mutate(seeds[ext], ops), ext))


def test_the_seeds_themselves_decode(media_dir, seeds) -> None:  # type: ignore[no-untyped-def]
    outcomes = {ext: fuzz_open(media_dir, data, ext) for ext, data in seeds.items()}
    assert set(outcomes.values()) == {"packets"}, outcomes


# -- pipelines -----------------------------------------------------------------------------------
def load_and_build(make) -> str:  # type: ignore[no-untyped-def]
    """``make()`` gives a Pipeline; validate and build it. Returns "valid", "ConfigError" or "ModelError"
    (an hf encoder's ``model`` that is no model folder and no cached id: typed, naming the fix)."""
    try:
        pipe = make()
        pipe.validate()
        pipe.build("fuzz")
    except ConfigError as err:
        assert err.problems, "a ConfigError lists its problems"
        assert len(str(err)) < 20_000, "a message must stay readable (and bounded)"
        return "ConfigError"
    except ModelError as err:
        assert err.fix and err.stage, "a ModelError names the step and the fix"
        assert len(str(err)) < 20_000, "a message must stay readable (and bounded)"
        return "ModelError"
    return "valid"


STAGES = sorted(available())
OPTIONS = sorted({f for info in available().values() for f in config_fields(info.cls.config_class)})
DECODE_OPTIONS = sorted(config_fields(DecodeConfig))
YAML_BITS = ["name: ", "decode: ", "steps:", "\n", "\n  ", "\n  - ", "- ", "op: ", "id: ", "resources: ",
             "num_cpus: ", "{", "}", "[", "]", ", ", ": ", " ", "&a ", "*a", "<<: ", "? ", "|\n  ", "# c\n",
             "---\n", "...\n", "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary ",
             "!!set ", "~", "null", "true", "no", "1", "-1", "0", "0.5", "1e309", ".nan", "-.inf", "0x1F", "'x'",
             '"y"', "é", "\t", "\x00", "\ufeff", "%YAML 1.1\n", *[f"{s} " for s in STAGES],
             *[f"{o}: " for o in OPTIONS], *[f"{o}: " for o in DECODE_OPTIONS]]


@fuzz(500)
@given(bits=st.lists(st.sampled_from(YAML_BITS), max_size=40))
@example(bits=["steps:", "\n  - ", "op: ", "patch_encoder "])
@example(bits=["[", "[", "*a", "]"])
def test_yaml_ish_text_gives_a_pipeline_or_a_config_error(bits) -> None:  # type: ignore[no-untyped-def]
    text = "".join(bits) + "\n"  # a newline: always YAML text, never taken for a file path
    event(bounded(lambda: load_and_build(lambda: Pipeline.from_yaml(text)), 30, "loading a fuzzed YAML document"))


@fuzz(200)
@given(text=st.text(max_size=200))
def test_any_text_gives_a_pipeline_or_a_config_error(text) -> None:  # type: ignore[no-untyped-def]
    event(bounded(lambda: load_and_build(lambda: Pipeline.from_yaml(text + "\n")), 30, "loading fuzzed text"))


scalars = (st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
           | st.floats(0, 300) | st.integers(0, 300) | st.text(max_size=8)
           | st.sampled_from(["flat", "ivf", "hnsw", "webrtc", "silero", "stack", "pool", "frame", "none",
                              "", ":", ":x", ".a:x", "nope:fn", "math:sqrt", "os.path:join"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=8)
steps = st.fixed_dictionaries(
    {"op": st.sampled_from([*STAGES, "no_such_stage"]) | values},
    optional={"id": st.sampled_from(["a", "b", "a"]) | values,
              "resources": st.dictionaries(st.sampled_from(["num_cpus", "num_gpus", "memory_mb", "x"]), values,
                                           max_size=2) | values,
              **{o: values for o in OPTIONS}})
documents = st.fixed_dictionaries(
    {}, optional={"name": values, "steps": st.lists(steps | values, max_size=5) | values,
                  "decode": st.dictionaries(st.sampled_from([*DECODE_OPTIONS, "nope"]), values, max_size=4) | values,
                  "keep_assignment": values, "description": values, "junk": values}) | values


@fuzz(500)
@given(doc=documents)
@example(doc={"steps": [{"op": "function_encoder", "function": ":x"}]})
@example(doc={"steps": [{"op": "function_encoder", "function": ".a:x"}]})
@example(doc={"steps": [{"op": "patch_encoder", "patch_size": 10**9}]})
@example(doc={"steps": [{"op": "hf_encoder", "model": "nobody/none", "download": True}]})
@example(doc={"steps": [{"op": "hf_audio_encoder", "model": "./no/such/folder"}]})
def test_random_plain_data_gives_a_pipeline_or_a_config_error(doc) -> None:  # type: ignore[no-untyped-def]
    event(bounded(lambda: load_and_build(lambda: Pipeline.from_dict(doc)), 30, "building a fuzzed pipeline"))
