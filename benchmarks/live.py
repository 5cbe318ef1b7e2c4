"""Live ingestion: capture-to-token latency, and how many 720p25 RTSP cameras this machine keeps up with.

Setup, all on loopback: GStreamer's RTSP server (``tests/live/gst_rtsp_server.py``, Debian's python3-gi)
serves a generated 1280x720 25 fps H.264 file (noisy test pattern at ~3 Mb/s, 2 s GOP, no B-frames,
like a camera) to every client, each with its own session, in real time without re-encoding. The
engine runs N streams at once through the live endpoint (:mod:`streamzip.live`): PyAV decode, 2 fps
sampling at 224x224, 16 px patch encoder, 2 s windows, a 256-token memory; one WebSocket client per
stream receives the window packets.

Measured per N, after a warm-up, over ``--seconds``:

- **latency** of each window at the WebSocket client: receive wall time minus the capture wall time of
  the window's end (= capture of its start + the window length), from the server's RTCP sender
  reports; p50/p95 over all streams. Baseline in the same run: the capture-to-decoded-frame latency of
  the sampled frames at the source (the floor set by the network, the decoder and the sampler).
- **keeps up**: no packet dropped at the source queue (stages too slow) or skipped undecoded (decode
  too slow, :attr:`RtspConfig.max_lag_s`), the encoder saw >= 95 % of the 2 fps × N frames due, and
  window p95 latency < 2.5 s. Above the largest N that keeps up, the drop rate (the share of the
  frames due that never reached the encoder) says how much is lost.

N doubles until a level fails, then the levels between the last good and the first bad are tried
(bounded by ``--max-streams`` and ``--max-levels``). Results: ``benchmarks/results/live.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from streamzip.live import LiveConfig, LiveServer  # noqa: E402
from streamzip.packets import VideoFrames  # noqa: E402
from streamzip.pipeline import Pipeline  # noqa: E402
from streamzip.sources.rtsp import RtspConfig, RtspSource  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "live" / "gst_rtsp_server.py"
FPS = 2.0
WINDOW_S = 2.0


def make_media(path: Path, seconds: float, bitrate: int = 3_000_000) -> None:
    """A camera-like 720p25 H.264 + AAC mp4: moving test pattern with temporal noise (so it costs
    bits and decode time like real video), constant bitrate, 2 s GOP, no B-frames."""
    graph = f"testsrc2=size=1280x720:rate=25:duration={seconds},noise=alls=12:allf=t"
    with av.open(graph, format="lavfi") as src, av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "tune": "zerolatency",
                                                        "x264-params": "keyint=50:min-keyint=50:bframes=0"})
        v.width, v.height, v.pix_fmt, v.bit_rate = 1280, 720, "yuv420p", bitrate
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        n_audio = 0
        for frame in src.decode(video=0):
            frame.pts = None
            out.mux(v.encode(frame))
            # 40 ms of a quiet tone per video frame keeps the mux interleaved.
            t = (np.arange(640) + n_audio) / 16000
            af = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :],
                                            format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = 16000, n_audio, Fraction(1, 16000)
            n_audio += 640
            out.mux(a.encode(af))
        out.mux(v.encode(None))
        out.mux(a.encode(None))


class Tap:
    """Wraps a source; records capture-to-decoded latency of the sampled video frames."""

    def __init__(self, source: RtspSource) -> None:
        self.source, self.name, self.stream, self.stats = source, source.name, source.stream, source.stats
        self.frame_latency: list[tuple[float, float]] = []  # (arrival wall, latency)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for p in self.source:
            if isinstance(p, VideoFrames):
                now = time.time()
                w = self.source.wall_time(float(p.pts_s[-1]))
                if w is not None:
                    self.frame_latency.append((now, now - w))
            yield p

    def close(self) -> None:
        self.source.close()

    def wall_time(self, t: float) -> float | None:
        return self.source.wall_time(t)


def _header(blob: bytes) -> dict[str, Any]:
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n]).get("__metadata__", {})
    return json.loads(meta["packets"])[0]


class Clients:
    """One WebSocket client per stream, in a thread; keeps (receive wall, latency) per window."""

    def __init__(self, url: str, ids: list[str]) -> None:
        self.url, self.ids = url, ids
        self.latency: list[tuple[float, float]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks = [asyncio.run_coroutine_threadsafe(self._client(i), self.loop) for i in ids]

    async def _client(self, sid: str) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(f"{self.url}/streams/{sid}/ws") as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                now = time.time()
                end = _header(msg.data).get("capture_end_wall_s")
                if end is not None:
                    self.latency.append((now, now - end))

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def run_level(n: int, port: int, pipe: Pipeline, warmup_s: float, seconds: float, runtime: str) -> dict[str, Any]:
    taps = [Tap(RtspSource(f"rtsp://127.0.0.1:{port}/file", pipe.decode, RtspConfig(), stream=f"cam{i}",
                           want_audio=False)) for i in range(n)]
    server = LiveServer(pipe, taps, LiveConfig(port=0, runtime=runtime)).start()  # type: ignore[arg-type]
    clients = Clients(server.url.replace("http", "ws"), list(server.streams))
    try:
        time.sleep(warmup_s)
        streams = list(server.streams.values())

        def snap() -> dict[str, float]:
            return {"t": time.time(), "cpu": _cpu_s(),
                    "sampled": sum(s.source.stats.frames_sampled for s in streams),
                    # The local runtime counts stage input live; under Ray the counters come at the end.
                    "encoded": (sum(s.result.stages[0].frames_in for s in streams if s.result.stages)
                                if runtime == "local" else sum(s.source.stats.frames_sampled - s.result.drops
                                                               for s in streams)),
                    "drops": sum(s.result.drops for s in streams),
                    "skipped": sum(s.source.stats.skipped_packets for s in streams),
                    "reconnects": sum(s.source.stats.reconnects for s in streams)}

        a = snap()
        time.sleep(seconds)
        b = snap()
    finally:
        server.stop()
        clients.close()
    wall = b["t"] - a["t"]
    lat = [x for w, x in clients.latency if a["t"] <= w <= b["t"]]
    flat = [x for tap in taps for w, x in tap.frame_latency if a["t"] <= w <= b["t"]]
    due = FPS * n * wall
    sampled, encoded, drops = b["sampled"] - a["sampled"], b["encoded"] - a["encoded"], b["drops"] - a["drops"]
    skipped = b["skipped"] - a["skipped"]
    # Frames due at 2 fps that never reached the encoder: dropped at the source queue (stages too slow)
    # or skipped undecoded (decode too slow). Counters are read between frames: ±1 frame a stream.
    drop_rate = max(0.0, 1.0 - encoded / due)
    p95 = pct(lat, 0.95)
    keeps_up = bool(drops == 0 and skipped == 0 and encoded >= 0.95 * due and p95 is not None and p95 < 2.5)
    row = {"streams": n, "seconds": round(wall, 2), "frames_due": round(due, 1), "frames_sampled": sampled,
           "frames_encoded": encoded, "queue_drops": drops, "skipped_packets": skipped,
           "drop_rate": round(drop_rate, 4),
           "window_latency_s": {"p50": pct(lat, 0.5), "p95": p95, "n": len(lat)},
           "frame_latency_s": {"p50": pct(flat, 0.5), "p95": pct(flat, 0.95), "n": len(flat)},
           "cpu_cores_used": round((b["cpu"] - a["cpu"]) / wall, 2),
           "reconnects": b["reconnects"] - a["reconnects"], "load_avg_1m": round(os.getloadavg()[0], 2),
           "keeps_up": keeps_up}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (open, first window)")
    ap.add_argument("--max-streams", type=int, default=32)
    ap.add_argument("--max-levels", type=int, default=8, help="bound on the levels tried (the run's length)")
    ap.add_argument("--runtime", choices=("local", "ray"), default="local")
    args = ap.parse_args()
    if not os.path.exists("/usr/bin/python3") or subprocess.run(
            ["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
            capture_output=True).returncode:
        sys.exit("needs Debian's python3-gi and gst-rtsp-server: see tests/live/conftest.py DEBIAN_PACKAGES")
    media_s = args.warmup + args.seconds + 10
    pipe = (Pipeline("live-bench", decode={"fps": FPS, "width": 224, "height": 224})
            .add("patch_encoder", patch_size=16).add("window", window_s=WINDOW_S).add("memory", max_tokens=256))
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "cam720.mp4"
        t = time.perf_counter()
        make_media(media, media_s)
        print(f"made {media_s:.0f} s of 720p25 in {time.perf_counter() - t:.1f} s", flush=True)
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), "--port", str(port), "--file", str(media)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("serving")
            rows: dict[int, dict[str, Any]] = {}
            n, good, bad = 1, 0, None
            while len(rows) < args.max_levels:
                rows[n] = run_level(n, port, pipe, args.warmup, args.seconds, args.runtime)
                if rows[n]["keeps_up"]:
                    good = max(good, n)
                else:
                    bad = n if bad is None else min(bad, n)
                if bad is None:
                    if n >= args.max_streams:
                        break
                    n = min(n * 2, args.max_streams)
                else:
                    if bad - good <= 1:
                        break
                    n = (good + bad) // 2
                if n in rows:
                    break
        finally:
            proc.kill()
            proc.wait(10)
    levels = [rows[k] for k in sorted(rows)]
    above = [r for r in levels if r["streams"] > good]
    one = rows.get(1, {})
    write_result("live", {
        "setup": {"source": "gst-rtsp-server over RTSP/TCP on loopback, one session per stream",
                  "media": "1280x720 25 fps H.264 (x264 veryfast, ~3 Mb/s CBR, 2 s GOP, no B-frames), video only",
                  "pipeline": f"decode fps={FPS:g} 224x224 → patch_encoder 16 px → window {WINDOW_S:g} s → memory 256",
                  "runtime": args.runtime, "measured_s_per_level": args.seconds, "warmup_s": args.warmup,
                  "keeps_up": "no queue drop or skipped packet, encoder frames >= 95 % of due, window p95 latency < 2.5 s",
                  "note": "2 shared cores, other jobs running: CPU contention lowers the numbers",
                  "latency": "WebSocket receive wall time − capture wall time of the window's end (RTCP clock)"},
        "latency_one_stream_s": {"window_p50": one.get("window_latency_s", {}).get("p50"),
                                 "window_p95": one.get("window_latency_s", {}).get("p95"),
                                 "baseline_frame_p50": one.get("frame_latency_s", {}).get("p50"),
                                 "baseline_frame_p95": one.get("frame_latency_s", {}).get("p95")},
        "max_streams_real_time": good,
        "drop_rate_above": {str(r["streams"]): r["drop_rate"] for r in above},
        "levels": levels,
        "median_cores_per_stream": statistics.median([r["cpu_cores_used"] / r["streams"] for r in levels]),
    })


if __name__ == "__main__":
    main()
