"""Fixtures of the live tests: media, an RTSP server, a private PulseAudio, speech, live runs.

The components themselves are in ``_live_helpers.py`` (importable by the test modules).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _live_helpers import LiveRun, PulseServer, RtspServer, require_debian

from streamzip.pipeline import Pipeline
from streamzip.synthetic import ClipInfo, make_clip


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> ClipInfo:
    """An 8 s 320x240 25 fps H.264 + AAC (16 kHz) clip with speech-like bursts."""
    return make_clip(tmp_path_factory.mktemp("live") / "clip.mp4", scenes=(("static", 3), ("motion", 5)),
                     width=320, height=240)


@pytest.fixture(scope="session")
def rtsp_server(media: ClipInfo) -> Iterator[RtspServer]:
    """One server for the tests that do not disturb it."""
    server = RtspServer(media.path).start()
    yield server
    server.close()


@pytest.fixture
def own_rtsp_server(media: ClipInfo) -> Iterator[RtspServer]:
    """A server of the test's own, to kill or freeze."""
    server = RtspServer(media.path).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def live_pipeline() -> Pipeline:
    """Small and fast: 112 px frames at 2 fps in 16 px patches (49 tokens a frame), fbank audio,
    2 s windows, a 64-token memory."""
    return (Pipeline("live-test", decode={"fps": 2, "width": 112, "height": 112})
            .add("patch_encoder", patch_size=16).add("fbank_encoder")
            .add("window", window_s=2.0).add("memory", max_tokens=64, read_tokens=16))


def _pulse_in_env() -> Iterator[PulseServer]:
    server = PulseServer().start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # the ALSA pulse plugin and PortAudio read these
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.close()


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer]:
    yield from _pulse_in_env()


@pytest.fixture
def own_pulse() -> Iterator[PulseServer]:
    """A PulseAudio server of the test's own, to kill, freeze and restart."""
    yield from _pulse_in_env()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 s of espeak-ng speech (22.05 kHz mono WAV)."""
    require_debian("espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog. "
                    "Live tokens from a virtual microphone."], check=True, timeout=60)
    return path


@pytest.fixture
def live_run():  # type: ignore[no-untyped-def]
    """``live_run(pipeline, source)`` starts a :class:`LiveRun`; every run is stopped at the end."""
    runs: list[LiveRun] = []

    def start(pipeline, source, runtime=None) -> LiveRun:  # type: ignore[no-untyped-def]
        run = LiveRun(pipeline, source, runtime).start()
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.source.close()
        run.thread.join(20)
