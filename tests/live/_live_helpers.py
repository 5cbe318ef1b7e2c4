"""Real live components for the live tests, started by the tests themselves, on loopback only.

- :class:`RtspServer`: GStreamer's gst-rtsp-server (``gst_rtsp_server.py`` beside this file, run with
  Debian's ``/usr/bin/python3`` and its ``python3-gi``), serving a generated H.264 + AAC file at
  ``/file`` and live test patterns at ``/live``, ``/cam1``, ``/cam2``. Tests kill, freeze (SIGSTOP)
  and restart it.
- :class:`PulseServer`: a private PulseAudio daemon on a socket in a temporary folder, with a null
  sink ``vsink`` and a virtual microphone ``vmic`` that records whatever plays on ``vsink``. Tests
  kill, freeze and restart it (on the same socket).

A missing Debian package fails the test with the ``apt-get install`` line to run (these tests are
the proof that live ingestion works; skipping them would hide it). ``.ci/sysdeps`` installs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from streamzip.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"

#: Debian packages these tests need, and what each one is for.
DEBIAN_PACKAGES = {
    "python3-gi": "GObject bindings for Debian's python3 (runs the RTSP server)",
    "gir1.2-gst-rtsp-server-1.0": "gst-rtsp-server's introspection data",
    "gstreamer1.0-rtsp": "gst-rtsp-server",
    "gstreamer1.0-plugins-base": "videotestsrc, audiotestsrc, opusenc",
    "gstreamer1.0-plugins-good": "qtdemux, rtph264pay, rtpmp4gpay, aacparse, rtpopuspay",
    "gstreamer1.0-plugins-bad": "h264parse",
    "gstreamer1.0-plugins-ugly": "x264enc",
    "pulseaudio": "the private sound server behind the virtual microphone",
    "pulseaudio-utils": "pactl and paplay",
    "libasound2-plugins": "ALSA's pulse PCM (PyAV's alsa input reaches PulseAudio through it)",
    "libportaudio2": "PortAudio, for the sounddevice backend",
    "espeak-ng": "speech for the microphone",
}

INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)


def _installed(pkg: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "install ok installed" in out.stdout


def require_debian(*pkgs: str) -> None:
    """Fail (not skip) with the install line when a Debian package is missing."""
    missing = [p for p in pkgs if not _installed(p)]
    if missing:
        pytest.fail(f"the live tests need Debian packages that are missing: {' '.join(missing)}. "
                    f"Install them with: {INSTALL_HINT} (or run `make test` as root: .ci/sysdeps does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond, timeout_s: float, step_s: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``cond()`` until true or ``timeout_s`` passes; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


class Daemon:
    """A server process (``self.proc``) that tests kill, freeze and thaw."""

    proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-stream."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the server hangs (its sockets stay open, nothing answers)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


# -- RTSP ---------------------------------------------------------------------------------------
class RtspServer(Daemon):
    """A gst-rtsp-server process on 127.0.0.1 that tests can kill, freeze and restart."""

    def __init__(self, media: str | None = None, *, auth: str | None = None, port: int | None = None) -> None:
        require_debian("python3-gi", "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-rtsp", "gstreamer1.0-plugins-base",
                       "gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad", "gstreamer1.0-plugins-ugly")
        self.media, self.auth = media, auth
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.ready_mono: float | None = None  # when the last start began listening

    def url(self, path: str, userinfo: str | None = None) -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"rtsp://{at}127.0.0.1:{self.port}{path}"

    def start(self, timeout_s: float = 15.0) -> RtspServer:
        argv = [SYSTEM_PYTHON, str(HERE / "gst_rtsp_server.py"), "--port", str(self.port)]
        if self.media:
            argv += ["--file", self.media]
        if self.auth:
            argv += ["--auth", self.auth]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("serving"):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"the GStreamer RTSP server did not start on port {self.port}: {err[-2000:]}")
        self.ready_mono = time.monotonic()
        return self

    def close(self) -> None:
        self.kill()  # clients see a normal end of stream
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()


# -- PulseAudio ---------------------------------------------------------------------------------
class PulseServer(Daemon):
    """A private PulseAudio daemon: null sink ``vsink``; ``vmic`` records what plays on it."""

    def __init__(self) -> None:
        require_debian("pulseaudio", "pulseaudio-utils", "libasound2-plugins")
        self.dir = Path(tempfile.mkdtemp(prefix="streamzip-pulse-"))
        (self.dir / "rt").mkdir(mode=0o700)
        self.socket = self.dir / "pulse.sock"
        self.env = {"XDG_RUNTIME_DIR": str(self.dir / "rt"), "HOME": str(self.dir / "rt"),
                    "PULSE_SERVER": f"unix:{self.socket}"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PulseServer:
        argv = ["pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--use-pid-file=no",
                "--log-target=stderr", "--disallow-module-loading=no",
                "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                "-L", "module-null-sink sink_name=vsink rate=16000 channels=1",
                "-L", "module-remap-source master=vsink.monitor source_name=vmic"]
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ok = wait_until(lambda: subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0, 15.0, 0.05)
        if not ok:
            self.close()
            pytest.fail("the private PulseAudio server did not start")
        return self

    def kill(self) -> None:
        """SIGKILL: the sound server dies mid-stream (``start()`` brings it back on the same socket)."""
        super().kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def play(self, wav: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
        """Play a file on the speaker (vsink), in real time; the microphone (vmic) hears it."""
        return subprocess.Popen(["paplay", "-d", "vsink", os.fspath(wav)], env={**os.environ, **self.env})

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- running a live source ----------------------------------------------------------------------
class Tap:
    """Keeps the packets a source yields on their way to the runtime, with their arrival times
    (``time.monotonic()``)."""

    def __init__(self, source) -> None:  # type: ignore[no-untyped-def]
        self.source, self.name, self.stream, self.stats = source, source.name, source.stream, source.stats
        self.seen: list[object] = []
        self.arrived: list[float] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        for p in self.source:
            self.arrived.append(time.monotonic())
            self.seen.append(p)
            yield p

    def close(self) -> None:
        self.source.close()


class LiveRun:
    """A live source run through a runtime in a thread; outputs kept with their arrival times."""

    def __init__(self, pipeline: Pipeline, source, runtime=None) -> None:  # type: ignore[no-untyped-def]
        from streamzip.runtime.local import LocalRuntime
        from streamzip.stats import InputResult

        self.pipeline, self.source = pipeline, source
        self.runtime = runtime or LocalRuntime()
        self.result = InputResult(input=source.name, stream=source.stream)
        self.outputs: list[tuple[float, object]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for out in self.runtime.run_source(self.pipeline, self.source, self.result, live=True):
                self.outputs.append((time.monotonic(), out))
        except BaseException as err:  # noqa: BLE001 - the test reads it
            self.error = err

    def start(self) -> LiveRun:
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 20.0) -> LiveRun:
        self.source.close()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the live run did not stop"
        return self

    def packets(self, kind: str | None = None, modality: str | None = None) -> list:  # type: ignore[type-arg]
        from streamzip.packets import Tokens

        out = []
        for _, p in self.outputs:
            if kind is None:
                out.append(p)
            elif isinstance(p, Tokens) and p.meta.get("kind") == kind and (modality is None or p.modality == modality):
                out.append(p)
        return out

    def wait_for(self, cond, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
        return wait_until(lambda: cond(self) or self.error is not None or not self.thread.is_alive(), timeout_s)
