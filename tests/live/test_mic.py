"""The microphone source against a private PulseAudio server whose virtual microphone hears what
plays on its null sink: the tokens of live speech match those of a file of the same speech."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from _live_helpers import LiveRun, Tap, wait_until

from streamzip.packets import AudioChunk, End, Gap, Tokens
from streamzip.pipeline import Pipeline
from streamzip.runtime.local import LocalRuntime
from streamzip.sources.mic import MicConfig, MicError, MicSource

pytestmark = pytest.mark.timeout(90)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).copy(), w.getframerate()


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())


def delay_of(reference: np.ndarray, recording: np.ndarray) -> int:
    """Samples by which ``recording`` lags ``reference`` (FFT cross-correlation)."""
    n = 1 << int(np.ceil(np.log2(len(reference) + len(recording))))
    corr = np.fft.irfft(np.fft.rfft(recording, n) * np.conj(np.fft.rfft(reference, n)), n)
    return int(np.argmax(corr[: len(recording)]))


def tokens_of(packets) -> Tokens:  # type: ignore[no-untyped-def]
    from streamzip.tokens import cat

    return cat([p for p in packets if isinstance(p, Tokens)])


def test_microphone_tokens_match_a_file_of_the_same_speech(pulse, speech_wav, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline("speech", decode={"sample_rate_hz": 16000}).add("fbank_encoder")
    speech, rate = read_wav(speech_wav)
    src = MicSource("pulse:vmic", pipe.decode, MicConfig(max_duration_s=len(speech) / rate + 2.0))
    tap = Tap(src)
    run = LiveRun(pipe, tap).start()
    assert wait_until(lambda: src.stats.state == "connected" or run.error is not None, 15), run.error
    time.sleep(0.3)
    pulse.play(speech_wav).wait(30)
    run.thread.join(30)
    assert run.error is None and not run.thread.is_alive()
    chunks = [p for p in tap.seen if isinstance(p, AudioChunk)]
    assert isinstance(tap.seen[-1], End) and not [p for p in tap.seen if isinstance(p, Gap)]
    # The packets a file gives: 16 kHz mono float chunks, contiguous in stream time, ~0.5 s each.
    assert all(c.sample_rate_hz == 16000 and c.samples.dim() == 1 and c.samples.dtype == torch.float32
               for c in chunks)
    assert all(abs(a.end_s - b.start_s) < 1e-6 for a, b in zip(chunks, chunks[1:]))
    assert all(0.5 <= c.duration_s < 0.55 for c in chunks[:-1])
    assert src.stats.clock == "sender"  # ALSA's timestamps
    recorded = torch.cat([c.samples for c in chunks]).numpy()
    # Where the speech landed in the recording: pad the file with that much silence, so both runs
    # share one token grid, then run the file through the same pipeline.
    ref16 = np.interp(np.arange(0, len(speech) / rate, 1 / 16000), np.arange(len(speech)) / rate, speech / 32768)
    lag_s = delay_of(ref16, recorded) / 16000
    assert 0.0 < lag_s < 3.0
    padded = tmp_path / "padded.wav"
    write_wav(padded, np.concatenate([np.zeros(round(lag_s * rate)), speech]), rate)
    mic, ref = tokens_of(run.packets()), tokens_of(LocalRuntime().run(pipe, [str(padded)]))
    n = min(mic.num_tokens, ref.num_tokens)
    assert n > 50 and torch.allclose(mic.t0[:n], ref.t0[:n])
    # Compare where there is speech (silence is all zeros after per-frame normalisation).
    t0, t1 = mic.t0[:n].numpy(), mic.t1[:n].numpy()
    energy = np.array([np.abs(recorded[int(a * 16000):int(b * 16000)]).mean() for a, b in zip(t0, t1)])
    loud = torch.from_numpy(energy > 0.02)
    assert int(loud.sum()) > 30
    cos = torch.nn.functional.cosine_similarity(mic.data[:n][loud], ref.data[:n][loud], dim=1)
    assert float(cos.median()) > 0.95 and float(cos.mean()) > 0.9, (float(cos.median()), float(cos.mean()))


def test_sounddevice_backend_gives_the_same_packets(pulse, speech_wav) -> None:  # type: ignore[no-untyped-def]
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        pytest.fail("the sounddevice backend needs the live extra: pip install 'streamzip[live]' "
                    "(and apt-get install libportaudio2)")
    src = MicSource("pulse:vmic", None, MicConfig(backend="sounddevice", max_duration_s=2.0))
    player = pulse.play(speech_wav)
    try:
        packets = list(src)
    finally:
        player.kill()
        player.wait(10)
    chunks = [p for p in packets if isinstance(p, AudioChunk)]
    assert isinstance(packets[-1], End) and len(chunks) == 4
    assert all(c.sample_rate_hz == 16000 and c.samples.dim() == 1 for c in chunks)
    assert all(abs(a.end_s - b.start_s) < 1e-6 for a, b in zip(chunks, chunks[1:]))
    assert float(torch.cat([c.samples for c in chunks]).abs().max()) > 0.05  # it heard the speech
    assert src.stats.clock == "arrival" and src.wall_time(0.0) is not None


def test_a_missing_device_is_a_clear_error() -> None:
    src = MicSource("hw:9,9", None, MicConfig(max_retries=0))
    with pytest.raises(MicError, match=r"cannot open the ALSA device 'hw:9,9'.*Fix: list the devices with `arecord -L`"):
        list(src)
    assert src.stats.state == "failed"
