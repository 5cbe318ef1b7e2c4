"""The live endpoint: several cameras and microphones at once, their current context served over HTTP.

Each input runs in its own thread (``runtime.run_source(..., live=True)``: the source drops its oldest
media packets when the stages fall behind, so latency stays bounded). The endpoint keeps, per stream,
the last memory packet and the last window packet of each modality, which is what a consumer (an
MLLM answering a question) needs "now" — ingest and question answering stay decoupled, as in
Flash-VStream or Dispider. Routes (aiohttp, in a thread of its own)::

    GET /health                      200 {"status": "ok"|"degraded"}, 503 when a stream failed
    GET /metrics                     Prometheus text: frames, tokens, drops, reconnects, latency…
    GET /streams                     the stream ids
    GET /streams/{id}                one stream's counters and state
    GET /streams/{id}/context        memory + last window, as safetensors bytes (:func:`unpack_tokens`)
    GET /streams/{id}/windows        server-sent events, one JSON event per window packet (the tokens as
                                     base64 safetensors; ``?payload=0``: the times and counts only)
    GET /streams/{id}/ws             WebSocket, one binary safetensors message per window packet
    POST /streams/{id}/query         {"query": "a question"} weights the following windows by relevance to it
                                     (query-guided compression; {"query": null} drops it); 400 when the
                                     pipeline has no step that takes a query
    POST /query                      the same, for every stream

A bearer token (``Authorization: Bearer …``) guards every route when given, and is *required* to bind
anything but a loopback address. Credentials in camera URLs never appear in any reply, log line or
manifest: every name is the redacted one (``rtsp://***@host/path``).

Latency of a window = the time its packet is available here minus the capture wall time of the
window's end (the capture time of its start plus the window length), using the source's wall clock
(RTCP sender reports for cameras that send them, ALSA timestamps, else arrival times).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from streamzip.config import Config
from streamzip.errors import ConfigError, DependencyError, InputError, Problem, StreamzipError
from streamzip.output import plain_data as _plain
from streamzip.packets import Gap, Packet, Tokens
from streamzip.sources._names import redact, stream_name
from streamzip.sources.mic import MicConfig, MicSource, parse_mic
from streamzip.sources.rtsp import SCHEMES, RtspConfig, RtspSource, with_credentials
from streamzip.stats import InputResult

__all__ = ["LiveConfig", "LiveServer", "add_cli", "is_loopback", "pack_tokens", "run_live", "serve",
           "unpack_tokens"]

log = logging.getLogger(__name__)

FORMAT = "streamzip-live"
FORMAT_VERSION = "1"
#: Environment variables the live command reads (the Kubernetes Secret sets them).
ENV_TOKEN = "STREAMZIP_LIVE_TOKEN"
ENV_RTSP_USERNAME = "STREAMZIP_RTSP_USERNAME"
ENV_RTSP_PASSWORD = "STREAMZIP_RTSP_PASSWORD"
MIN_TOKEN_CHARS = 16
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$")  # ID=URL
_QUANTILES = (0.5, 0.95)


@dataclass(frozen=True)
class LiveConfig(Config):
    # Loopback: nothing leaves this machine unless asked (and then a token is required).
    host: str = "127.0.0.1"
    # 8000: the port the Kubernetes manifests expose (streamzip.k8s.LIVE_PORT); 0 = any free port.
    port: int = 8000
    runtime: Literal["local", "ray"] = "local"
    # A Ray cluster to join (ray runtime); None = Ray embedded on this machine.
    address: str | None = None
    # Ray runtime: actors per encoder step, shared by every camera (0: an encoder actor per camera).
    encoder_pool: int = 1
    # Window packets queued per WebSocket/SSE client; a slower client loses the oldest.
    subscriber_queue: int = 32
    # Latency samples kept per stream for the p50/p95 in /metrics.
    latency_samples: int = 512
    # Seconds to wait for a stream to finish after close (a blocked read ends within read_timeout_s).
    stop_timeout_s: float = 15.0

    def check(self):  # type: ignore[no-untyped-def]
        if not 0 <= self.port <= 65535:
            yield "port", f"must be in [0, 65535], got {self.port}"
        if self.encoder_pool < 0:
            yield "encoder_pool", f"must be >= 0 (actors per encoder step; 0: one per stream), got {self.encoder_pool}"
        if not 1 <= self.subscriber_queue <= 10_000:
            yield "subscriber_queue", f"must be in [1, 10000], got {self.subscriber_queue}"
        if not 1 <= self.latency_samples <= 1_000_000:
            yield "latency_samples", f"must be in [1, 1000000], got {self.latency_samples}"
        if not self.stop_timeout_s > 0:
            yield "stop_timeout_s", f"must be > 0, got {self.stop_timeout_s}"


# -- wire format ----------------------------------------------------------------------------------


def pack_tokens(packets: Sequence[Tokens], extra: Sequence[dict[str, Any]] | None = None,
                **header: Any) -> bytes:
    """Token packets as safetensors bytes: tensors ``{i}.data``, ``{i}.t0``, ``{i}.t1``, ``{i}.pos``,
    ``{i}.size`` (and ``src``/``assignment``/``score`` when present) for packet ``i``; the metadata
    holds ``format``, the ``header`` values and ``packets`` (JSON: kind, modality, meta, and ``extra[i]``)."""
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, p in enumerate(packets):
        for key in ("data", "t0", "t1", "pos", "size", "src", "assignment", "score"):
            value = getattr(p, key)
            if value is not None:
                tensors[f"{i}.{key}"] = value.contiguous()
        entry = {"index": i, "stream": p.stream, "modality": p.modality, "kind": p.meta.get("kind", "tokens"),
                 "num_tokens": p.num_tokens, "meta": _plain(p.meta)}
        if extra is not None:
            entry.update(extra[i])
        entries.append(entry)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "packets": json.dumps(entries)}
    meta.update({k: json.dumps(_plain(v)) for k, v in header.items()})
    return st_save(tensors, metadata=meta)


def unpack_tokens(blob: bytes) -> tuple[list[Tokens], dict[str, Any]]:
    """The inverse of :func:`pack_tokens`: the packets and the header (``packets`` = their entries)."""
    tensors = st_load(blob)
    header = _read_metadata(blob)
    entries = json.loads(header.pop("packets", "[]"))
    out = []
    for e in entries:
        i = e["index"]
        out.append(Tokens(stream=e["stream"], modality=e["modality"], data=tensors[f"{i}.data"],
                          t0=tensors[f"{i}.t0"], t1=tensors[f"{i}.t1"], pos=tensors[f"{i}.pos"],
                          size=tensors[f"{i}.size"], src=tensors.get(f"{i}.src"),
                          assignment=tensors.get(f"{i}.assignment"), score=tensors.get(f"{i}.score"),
                          meta=dict(e["meta"])))
    parsed: dict[str, Any] = {k: (v if k in ("format", "format_version") else json.loads(v)) for k, v in header.items()}
    parsed["packets"] = entries
    return out, parsed


def _read_metadata(blob: bytes) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8:8 + n]).get("__metadata__", {}))


# -- one stream -----------------------------------------------------------------------------------
class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, item: Any) -> None:  # on the loop
        while self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)


@dataclass
class _Item:
    blob: bytes
    event: dict[str, Any]


class LiveStream:
    """One input run live: its source, runtime, latest context and counters."""

    def __init__(self, stream_id: str, source: Any, runtime: Any, pipeline: Any, cfg: LiveConfig,
                 windows_as: str) -> None:
        self.id, self.source, self.runtime, self.pipeline, self.cfg = stream_id, source, runtime, pipeline, cfg
        self.result = InputResult(input=source.name, stream=stream_id)
        self.windows_as = windows_as  # the packet kind treated as "window" ("window", or "tokens" without one)
        self.lock = threading.Lock()
        self.last_memory: dict[str, Tokens] = {}
        self.last_window: dict[str, Tokens] = {}
        self.last_window_extra: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, int] = {}
        self.window_tokens: dict[str, int] = {}
        self.latency_s: deque[float] = deque(maxlen=cfg.latency_samples)
        self.latency_sum_s = 0.0
        self.latency_count = 0
        self.gaps_seen = 0
        self.query: str | None = pipeline.query
        self.query_changes = 0
        self.status = "starting"
        self.error: str | None = None
        self.subscribers: set[_Subscriber] = set()
        self.thread = threading.Thread(target=self._run, name=f"streamzip-live-{stream_id}", daemon=True)

    # -- the run thread -----------------------------------------------------------------------
    def _run(self) -> None:
        self.status = "running"
        try:
            for out in self.runtime.run_source(self.pipeline, self.source, self.result, live=True):
                self._take(out)
            self.status = "ended"
        except StreamzipError as err:
            self._fail(redact(str(err)))
        except Exception as err:  # noqa: BLE001 - one stream's failure must not stop the others
            self._fail(f"{type(err).__name__}: {redact(str(err))}")
        finally:
            self._broadcast(None)

    def _fail(self, message: str) -> None:
        self.status, self.error = "failed", message
        self.result.ok, self.result.error = False, message
        log.error("stream %s failed: %s", self.id, message)

    def _take(self, packet: Packet) -> None:
        if not isinstance(packet, Tokens):
            if isinstance(packet, Gap):
                self.gaps_seen += 1
            return
        kind = packet.meta.get("kind", "tokens")
        m = packet.modality
        if kind == "memory":
            with self.lock:
                self.last_memory[m] = packet
            return
        if kind != self.windows_as:
            return
        now = time.time()
        extra = self._times(packet, now)
        with self.lock:
            self.last_window[m], self.last_window_extra[m] = packet, extra
            self.windows[m] = self.windows.get(m, 0) + 1
            self.window_tokens[m] = self.window_tokens.get(m, 0) + packet.num_tokens
            lat = extra.get("latency_s")
            if lat is not None and lat >= 0:
                self.latency_s.append(lat)
                self.latency_sum_s += lat
                self.latency_count += 1
        if self.subscribers:
            blob = pack_tokens([packet], [extra], stream=self.id)
            event = {"stream": self.id, "modality": m, "kind": kind, "num_tokens": packet.num_tokens,
                     "dim": packet.dim, **{k: packet.meta.get(k) for k in ("window", "window_start_s", "window_end_s")},
                     **extra, "safetensors_b64": base64.b64encode(blob).decode()}
            self._broadcast(_Item(blob, event))

    def _times(self, packet: Tokens, now: float) -> dict[str, Any]:
        start = packet.meta.get("window_start_s", float(packet.t0.min()) if packet.num_tokens else None)
        end = packet.meta.get("window_end_s", float(packet.t1.max()) if packet.num_tokens else None)
        wall = getattr(self.source, "wall_time", None)
        out: dict[str, Any] = {"available_wall_s": now}
        if wall is not None and start is not None and end is not None:
            ws, we = wall(float(start)), wall(float(end))
            out["capture_start_wall_s"], out["capture_end_wall_s"] = ws, we
            if we is not None:
                out["latency_s"] = now - we
        return out

    def _broadcast(self, item: _Item | None) -> None:
        for sub in list(self.subscribers):
            try:
                sub.loop.call_soon_threadsafe(sub.offer, item)
            except RuntimeError:  # the loop is closed
                self.subscribers.discard(sub)

    def set_query(self, text: str | None) -> list[str]:
        """Weight the windows that follow by relevance to ``text`` (the runtime's running stages take
        it from their next packet on); the ids of the steps that took it."""
        if not self.pipeline.query_steps():
            raise ConfigError([Problem("query", f"pipeline {self.pipeline.name!r} has no step that takes a "
                                                "query; query-guided compression needs an hf_encoder with a "
                                                "SigLIP or CLIP model")])
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ConfigError([Problem("query", "must be a non-empty text, or null to drop the query")])
        setter = getattr(self.runtime, "set_query", None)
        if setter is None:  # pragma: no cover - both runtimes have it
            raise ConfigError([Problem("query", f"the {self.cfg.runtime} runtime cannot change a query live")])
        took = setter(text)
        with self.lock:
            self.query = text
            self.query_changes += 1
        return list(took)

    # -- views (any thread) -------------------------------------------------------------------
    def context_packets(self) -> tuple[list[Tokens], list[dict[str, Any]]]:
        """Per modality (video first): the last memory packet, then the last window packet."""
        with self.lock:
            mods = sorted(set(self.last_memory) | set(self.last_window), key=lambda m: (m != "video", m))
            packets: list[Tokens] = []
            extra: list[dict[str, Any]] = []
            for m in mods:
                if m in self.last_memory:
                    packets.append(self.last_memory[m])
                    extra.append({})
                if m in self.last_window:
                    packets.append(self.last_window[m])
                    extra.append(self.last_window_extra[m])
            return packets, extra

    def context_bytes(self) -> bytes:
        packets, extra = self.context_packets()
        return pack_tokens(packets, extra, stream=self.id, input=self.source.name, created_wall_s=time.time())

    def latency_quantiles(self) -> dict[float, float]:
        with self.lock:
            values = sorted(self.latency_s)
        if not values:
            return {}
        return {q: values[min(len(values) - 1, int(round(q * (len(values) - 1))))] for q in _QUANTILES}

    def info(self) -> dict[str, Any]:
        stats = self.source.stats
        src = stats.to_dict() if hasattr(stats, "to_dict") else {"frames_sampled": stats.frames_sampled}
        with self.lock:
            windows, tokens = dict(self.windows), dict(self.window_tokens)
        return {"id": self.id, "input": self.source.name, "status": self.status, "error": self.error,
                "source": src, "frames": self.result.frames, "drops": self.result.drops,
                "stage_restarts": self.result.restarts, "windows": windows, "window_tokens": tokens,
                "query": self.query,
                "latency_s": {str(q): v for q, v in self.latency_quantiles().items()},
                "subscribers": len(self.subscribers)}


# -- the server -----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_token(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a bearer token (and refuse short tokens)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError([Problem("token", f"the bearer token is {len(token)} characters; at least "
                                            f"{MIN_TOKEN_CHARS} are needed (e.g. `openssl rand -hex 24`)")])
    if token is None and not is_loopback(host):
        raise ConfigError([Problem("host", f"serving on {host!r} reaches beyond this machine, so a bearer token "
                                           f"is required: give --token-file PATH (or set {ENV_TOKEN}), or bind "
                                           f"127.0.0.1")])


class LiveServer:
    """Runs live inputs and serves their context. Use :func:`serve` to build and start one.

    Args:
        pipeline: the pipeline every stream runs (a window step, and a memory step, make the context).
        inputs: RTSP URLs (``rtsp://…``), microphones (``mic``, ``mic:DEVICE``, ``alsa:DEVICE``,
            ``sounddevice:DEVICE``), optionally named ``ID=URL``; or source objects.
        config: :class:`LiveConfig` (host, port, runtime).
        token: the bearer token; required unless ``config.host`` is loopback.
        rtsp / mic: source configs.
        credentials: (username, password) added to RTSP URLs that carry none.
        output: a folder where each stream's final context and manifest are written at stop.
    """

    def __init__(self, pipeline: Any, inputs: Sequence[Any], config: LiveConfig | None = None, *,
                 token: str | None = None, rtsp: RtspConfig | None = None, mic: MicConfig | None = None,
                 credentials: tuple[str | None, str | None] = (None, None),
                 output: str | os.PathLike[str] | None = None) -> None:
        self.cfg = config or LiveConfig()
        check_token(self.cfg.host, token)
        if not inputs:
            raise ConfigError([Problem("inputs", "no live input: give at least one rtsp:// URL or mic")])
        self.pipeline = pipeline.validate()
        self._token = token
        self.output = output
        ops = {s.op for s in pipeline.steps}
        windows_as = "window" if "window" in ops else "tokens"
        if windows_as == "tokens":
            log.warning("pipeline %r has no window step: the context is the last token packet per modality",
                        pipeline.name)
        self.streams: dict[str, LiveStream] = {}
        for item in inputs:
            stream_id, source = self._source(item, rtsp, mic, credentials)
            self.streams[stream_id] = LiveStream(stream_id, source, self._runtime(), pipeline, self.cfg, windows_as)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._http_thread: threading.Thread | None = None
        self.port: int | None = None
        self._started = self._stopped = False

    # -- building -----------------------------------------------------------------------------
    def _unique(self, wanted: str) -> str:
        sid, i = wanted, 2
        while sid in self.streams:
            sid, i = f"{wanted}-{i}", i + 1
        return sid

    def _source(self, item: Any, rtsp: RtspConfig | None, mic: MicConfig | None,
                credentials: tuple[str | None, str | None]) -> tuple[str, Any]:
        mods = self.pipeline.modalities()
        if not isinstance(item, str):
            return self._unique(item.stream), item
        named = _NAMED.match(item)
        wanted, spec = (named.group(1), named.group(2)) if named else (None, item)
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
        if scheme in SCHEMES:
            sid = self._unique(wanted or stream_name(spec))
            url = with_credentials(spec, *credentials)
            return sid, RtspSource(url, self.pipeline.decode, rtsp, stream=sid, want_video="video" in mods,
                                   want_audio="audio" in mods)
        parsed = parse_mic(spec)
        if parsed is not None:
            if "audio" not in mods:
                raise ConfigError([Problem("inputs", f"{spec!r} is a microphone but pipeline {self.pipeline.name!r} "
                                                     f"has no audio encoder; add one (fbank_encoder)")])
            backend, device = parsed
            base = mic or MicConfig()
            sid = self._unique(wanted or "mic")
            cfg = MicConfig.from_mapping({**base.to_dict(), "backend": backend, "device": device})
            return sid, MicSource(None, self.pipeline.decode, cfg, stream=sid)
        raise InputError(f"not a live input: {redact(spec)!r}", stage="source",
                         fix="give rtsp://[user:password@]host[:port]/path, mic, mic:DEVICE, alsa:DEVICE or "
                             "sounddevice:DEVICE (name one with ID=…)")

    def _runtime(self) -> Any:
        if self.cfg.runtime == "ray":
            from streamzip.runtime.ray import RayRuntime

            return RayRuntime(address=self.cfg.address, encoder_pool=self.cfg.encoder_pool)
        from streamzip.runtime.local import LocalRuntime

        return LocalRuntime()

    # -- start / stop -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.cfg.host if ":" not in self.cfg.host else f"[{self.cfg.host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> LiveServer:
        """Start serving, then start every stream; returns once the port listens."""
        if self._started:
            return self
        self._started = True
        try:
            from aiohttp import web  # noqa: F401
        except ImportError as err:
            raise DependencyError(f"the live endpoint needs aiohttp ({err})", stage="live",
                                  fix="pip install 'streamzip[live]'") from None
        if self.cfg.runtime == "ray":
            from streamzip.runtime.ray import init_ray

            init_ray(self.cfg.address)  # once, before the stream threads (init is not thread-safe)
        ready = threading.Event()
        failure: list[BaseException] = []
        self._http_thread = threading.Thread(target=self._serve_http, args=(ready, failure),
                                             name="streamzip-live-http", daemon=True)
        self._http_thread.start()
        ready.wait(30)
        if failure:
            why = failure[0]
            raise ConfigError([Problem("port", f"cannot listen on {self.cfg.host}:{self.cfg.port} ({why}); "
                                               f"choose another --serve port")]) from None
        for s in self.streams.values():
            s.thread.start()
        log.info("serving %s (streams: %s)", self.url, ", ".join(self.streams))
        return self

    def stop(self) -> list[InputResult]:
        """Close every source, wait for the streams to flush, write outputs, stop serving."""
        if self._stopped:
            return [s.result for s in self.streams.values()]
        self._stopped = True
        for s in self.streams.values():
            s.source.close()
        deadline = time.monotonic() + self.cfg.stop_timeout_s
        for s in self.streams.values():
            if s.thread.is_alive():
                s.thread.join(max(0.1, deadline - time.monotonic()))
            if s.thread.is_alive():
                log.warning("stream %s did not stop within %.0f s", s.id, self.cfg.stop_timeout_s)
        if self.output is not None:
            self._write_outputs()
        for s in self.streams.values():
            shutdown = getattr(s.runtime, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception:  # noqa: BLE001 - best effort
                    pass
        if self._loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._http_thread is not None:
            self._http_thread.join(10)
        return [s.result for s in self.streams.values()]

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _write_outputs(self) -> None:
        from streamzip.output import output_name, write_output

        for s in self.streams.values():
            packets, _ = s.context_packets()
            manifest = {"input": s.source.name, "stream": s.id, "live": True, "result": s.result.to_dict(),
                        "source": s.source.stats.to_dict() if hasattr(s.source.stats, "to_dict") else {},
                        "status": s.status, "error": s.error}
            try:
                write_output(self.output, output_name(s.id), packets, manifest=manifest)  # type: ignore[arg-type]
            except StreamzipError as err:
                log.error("cannot write the output of stream %s: %s", s.id, err)

    # -- HTTP ---------------------------------------------------------------------------------
    def _serve_http(self, ready: threading.Event, failure: list[BaseException]) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application(middlewares=[self._auth_middleware()])
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/streams", self._list)
        app.router.add_get("/streams/{id}", self._stream_info)
        app.router.add_get("/streams/{id}/context", self._context)
        app.router.add_get("/streams/{id}/windows", self._sse)
        app.router.add_get("/streams/{id}/ws", self._ws)
        app.router.add_post("/streams/{id}/query", self._query)
        app.router.add_post("/query", self._query_all)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.cfg.host, self.cfg.port, reuse_address=True)
            loop.run_until_complete(site.start())
            server = site._server  # the bound socket tells the port when 0 was asked
            self.port = server.sockets[0].getsockname()[1] if server is not None else self.cfg.port  # type: ignore[attr-defined]
        except OSError as err:
            failure.append(err)
            ready.set()
            loop.close()
            return
        self._runner = runner
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _authorized(self, request: Any) -> bool:
        if self._token is None:
            return True
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token.encode())

    def _auth_middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            if not self._authorized(request):
                return web.json_response({"error": "a bearer token is required (Authorization: Bearer TOKEN)"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return auth

    def _stream(self, request: Any) -> LiveStream:
        from aiohttp import web

        s = self.streams.get(request.match_info["id"])
        if s is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such stream", "streams": list(self.streams)}),
                                   content_type="application/json")
        return s

    def health(self) -> tuple[int, dict[str, Any]]:
        streams = {}
        failed = degraded = False
        for s in self.streams.values():
            state = getattr(s.source.stats, "state", s.status)
            streams[s.id] = {"status": s.status, "source": state, "input": s.source.name, "error": s.error,
                             "last_error": getattr(s.source.stats, "last_error", None)}
            failed |= s.status == "failed"
            degraded |= state != "connected"
        status = "failed" if failed else ("degraded" if degraded else "ok")
        return (503 if failed else 200), {"status": status, "streams": streams}

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        code, body = self.health()
        return web.json_response(body, status=code)

    async def _list(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"streams": list(self.streams)})

    async def _stream_info(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self._stream(request).info())

    async def _read_query(self, request: Any) -> str | None:
        from aiohttp import web

        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or "query" not in body or not (body["query"] is None or isinstance(body["query"], str)):
            raise web.HTTPBadRequest(text=json.dumps({"error": 'send JSON {"query": "your question"} '
                                                               '(or {"query": null} to drop it)'}),
                                     content_type="application/json")
        return body["query"]

    async def _apply_query(self, streams: list[LiveStream], text: str | None) -> Any:
        from aiohttp import web

        loop = asyncio.get_running_loop()
        out = {}
        for s in streams:  # embedding the text runs the model: off the event loop
            try:
                steps = await loop.run_in_executor(None, s.set_query, text)
            except StreamzipError as err:
                return web.json_response({"error": redact(str(err)), "stream": s.id}, status=400)
            out[s.id] = {"query": text, "steps": steps}
        return web.json_response({"streams": out})

    async def _query(self, request: Any) -> Any:
        s = self._stream(request)
        return await self._apply_query([s], await self._read_query(request))

    async def _query_all(self, request: Any) -> Any:
        return await self._apply_query(list(self.streams.values()), await self._read_query(request))

    async def _context(self, request: Any) -> Any:
        from aiohttp import web

        s = self._stream(request)
        return web.Response(body=s.context_bytes(), content_type="application/octet-stream")

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    def _subscribe(self, s: LiveStream) -> _Subscriber:
        assert self._loop is not None
        sub = _Subscriber(self._loop, self.cfg.subscriber_queue)
        s.subscribers.add(sub)
        return sub

    async def _sse(self, request: Any) -> Any:
        from aiohttp import web

        s = self._stream(request)
        payload = request.query.get("payload", "1") not in ("0", "false", "no")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sub = self._subscribe(s)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), 15.0)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                event = item.event if payload else {k: v for k, v in item.event.items() if k != "safetensors_b64"}
                await resp.write(f"event: window\ndata: {json.dumps(event)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            s.subscribers.discard(sub)
        return resp

    async def _ws(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        s = self._stream(request)
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        sub = self._subscribe(s)

        async def drain() -> None:
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            sub.offer(None)

        reader = asyncio.ensure_future(drain())
        try:
            while not ws.closed:
                item = await sub.queue.get()
                if item is None:
                    break
                await ws.send_bytes(item.blob)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            s.subscribers.discard(sub)
            reader.cancel()
            await ws.close()
        return ws

    # -- metrics ------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        """Prometheus text exposition of every stream's counters."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, rows: Iterable[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP streamzip_live_{name} {help_}")
            lines.append(f"# TYPE streamzip_live_{name} {kind}")
            for labels, value in rows:
                lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"streamzip_live_{name}{{{lab}}} {_num(value)}" if lab else
                             f"streamzip_live_{name} {_num(value)}")

        ss = list(self.streams.values())

        def per(fn: Any) -> list[tuple[dict[str, str], float]]:
            return [({"stream": s.id}, fn(s)) for s in ss]

        def per_mod(attr: str) -> list[tuple[dict[str, str], float]]:
            rows = []
            for s in ss:
                with s.lock:
                    counts = dict(getattr(s, attr))
                rows += [({"stream": s.id, "modality": m}, v) for m, v in sorted(counts.items())]
            return rows

        def st(s: LiveStream, key: str) -> float:
            return float(getattr(s.source.stats, key, 0) or 0)

        metric("up", "gauge", "1 while the endpoint serves", [({}, 1)])
        metric("stream_running", "gauge", "1 while the stream's run thread is alive and not failed",
               per(lambda s: float(s.thread.is_alive() and s.status != "failed")))
        metric("connected", "gauge", "1 while the source is connected",
               per(lambda s: float(getattr(s.source.stats, "state", "") == "connected")))
        metric("frames_total", "counter", "video frames sampled from the source", per(lambda s: st(s, "frames_sampled")))
        metric("audio_seconds_total", "counter", "seconds of audio decoded",
               per(lambda s: st(s, "audio_samples") / self.pipeline.decode.sample_rate_hz))
        metric("media_seconds_total", "counter", "stream time covered", per(lambda s: st(s, "duration_s")))
        metric("windows_total", "counter", "window packets emitted", per_mod("windows"))
        metric("tokens_total", "counter", "tokens in the window packets emitted", per_mod("window_tokens"))
        metric("drops_total", "counter", "source packets dropped because the stages fell behind",
               per(lambda s: s.result.drops))
        metric("reconnects_total", "counter", "source reconnects", per(lambda s: st(s, "reconnects")))
        metric("open_failures_total", "counter", "failed source opens", per(lambda s: st(s, "open_failures")))
        metric("stalls_total", "counter", "stalls detected (read timeout, watchdog)", per(lambda s: st(s, "stalls")))
        metric("gaps_total", "counter", "outages reported as gaps", per(lambda s: st(s, "gaps")))
        metric("gap_seconds_total", "counter", "stream time lost to outages", per(lambda s: st(s, "gap_s")))
        metric("skipped_packets_total", "counter", "video packets skipped (not decoded) to catch up with real time",
               per(lambda s: st(s, "skipped_packets")))
        metric("source_lag_seconds", "gauge", "how far the source's reader is behind real time",
               per(lambda s: st(s, "lag_s")))
        metric("stage_restarts_total", "counter", "stage actor restarts (ray runtime)",
               per(lambda s: s.result.restarts))
        metric("subscribers", "gauge", "WebSocket/SSE clients", per(lambda s: len(s.subscribers)))
        rows: list[tuple[dict[str, str], float]] = []
        sums: list[tuple[dict[str, str], float]] = []
        counts: list[tuple[dict[str, str], float]] = []
        for s in ss:
            for q, v in s.latency_quantiles().items():
                rows.append(({"stream": s.id, "quantile": f"{q:g}"}, v))
            sums.append(({"stream": s.id}, s.latency_sum_s))
            counts.append(({"stream": s.id}, s.latency_count))
        lines.append("# HELP streamzip_live_latency_seconds capture of a window's end to its packet at the endpoint")
        lines.append("# TYPE streamzip_live_latency_seconds summary")
        for labels, value in rows:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"streamzip_live_latency_seconds{{{lab}}} {_num(value)}")
        for suffix, group in (("sum", sums), ("count", counts)):
            for labels, value in group:
                lines.append(f'streamzip_live_latency_seconds_{suffix}{{stream="{_escape(labels["stream"])}"}} '
                             f"{_num(value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return redact(str(value)).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


# -- entry points ---------------------------------------------------------------------------------
def serve(pipeline: Any, inputs: Sequence[Any], *, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, runtime: str = "local", address: str | None = None, encoder_pool: int = 1,
          rtsp: RtspConfig | None = None, mic: MicConfig | None = None,
          credentials: tuple[str | None, str | None] = (None, None),
          output: str | os.PathLike[str] | None = None) -> LiveServer:
    """Start a :class:`LiveServer` in the background and return it (``stop()`` it when done)."""
    cfg = LiveConfig(host=host, port=port, runtime=runtime, address=address,  # type: ignore[arg-type]
                     encoder_pool=encoder_pool)
    return LiveServer(pipeline, inputs, cfg, token=token, rtsp=rtsp, mic=mic, credentials=credentials,
                      output=output).start()


def run_live(pipeline: Any, urls: Sequence[str], host: str = "127.0.0.1", port: int = 8000,
             token: str | None = None, runtime: str = "local", *, duration_s: float | None = None,
             stop: threading.Event | None = None, **options: Any) -> list[InputResult]:
    """Serve until interrupted (Ctrl-C, SIGTERM), ``stop`` is set or ``duration_s`` passes; returns the
    per-stream results."""
    server = serve(pipeline, urls, host=host, port=port, token=token, runtime=runtime, **options)
    return serve_until(server, duration_s, stop)


def serve_until(server: LiveServer, duration_s: float | None = None,
                stop: threading.Event | None = None) -> list[InputResult]:
    """Wait until interrupted (Ctrl-C, SIGTERM), ``stop`` is set, ``duration_s`` passes or every stream
    ended; then stop the (started) server and return the per-stream results."""
    stop = stop or threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if all(not s.thread.is_alive() for s in server.streams.values()):
                break
    except KeyboardInterrupt:
        pass
    finally:
        results = server.stop()
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    return results


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token from ``--token``, ``--token-file`` or ``STREAMZIP_LIVE_TOKEN`` (in that order)."""
    if token:
        return token
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError([Problem("--token-file", f"cannot read {token_file!r} ({err.strerror})")]) from None
        if not text:
            raise ConfigError([Problem("--token-file", f"{token_file!r} is empty")])
        return text
    return os.environ.get(ENV_TOKEN) or None


def parse_serve(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); IPv6 as ``[::1]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError([Problem("--serve", f"expected HOST:PORT, got {value!r}")])
    return (host.strip("[]") or "127.0.0.1"), int(port)


def _cmd_live(args: argparse.Namespace) -> int:
    from streamzip.pipeline import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    if args.query is not None:
        pipeline.query = args.query
    host, port = parse_serve(args.serve)
    token = read_token(args.token, args.token_file)
    # --address or --encoder-pool alone means Ray
    runtime: Literal["local", "ray"] = (
        args.runtime or ("ray" if args.address or args.encoder_pool is not None else "local"))
    if args.address and runtime != "ray":
        raise ConfigError([Problem("--address", "--address joins a Ray cluster: use it with --runtime ray")])
    if args.encoder_pool is not None and runtime != "ray":
        raise ConfigError([Problem("--encoder-pool", "sizes the Ray runtime's encoder pool: use it with --runtime ray")])
    pool = 1 if args.encoder_pool is None else args.encoder_pool
    rtsp = RtspConfig(transport=args.transport, read_timeout_s=args.read_timeout, max_retries=args.max_retries)
    creds = (os.environ.get(ENV_RTSP_USERNAME) or None, os.environ.get(ENV_RTSP_PASSWORD) or None)
    cfg = LiveConfig(host=host, port=port, runtime=runtime, address=args.address, encoder_pool=pool)
    server = LiveServer(pipeline, args.inputs, cfg,
                        token=token, rtsp=rtsp, credentials=creds, output=args.output)
    server.start()
    print(f"serving {server.url} — streams: {', '.join(server.streams)} (Ctrl-C to stop)", flush=True)
    results = serve_until(server, args.duration)
    from streamzip.cli import summary_table

    print(summary_table(results))
    for s in server.streams.values():
        if s.error:
            print(f"error: stream {s.id}: {s.error}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def add_cli(subparsers: Any) -> None:
    """Register ``streamzip live`` on the CLI's subparsers."""
    p = subparsers.add_parser("live", help="run live cameras/microphones and serve their context over HTTP")
    p.add_argument("inputs", nargs="+", metavar="URL",
                   help="rtsp://[user:password@]host[:port]/path, mic, mic:DEVICE, alsa:DEVICE or sounddevice:DEVICE; "
                        "ID=URL names a stream. Credentials can also come from STREAMZIP_RTSP_USERNAME/PASSWORD")
    p.add_argument("--serve", default="127.0.0.1:8000", metavar="HOST:PORT",
                   help="where the endpoint listens (default 127.0.0.1:8000; other hosts need a token)")
    p.add_argument("--token", help="bearer token clients must send (prefer --token-file or STREAMZIP_LIVE_TOKEN: "
                                   "a command line is visible to other users)")
    p.add_argument("--token-file", help="a file holding the bearer token")
    p.add_argument("--pipeline", default="default", help="a pipeline YAML file or a built-in name (default: default)")
    p.add_argument("--query", help="query-guided compression: weight tokens by relevance to this text (needs an "
                                   "hf_encoder with a text tower); POST /streams/{id}/query changes it live")
    p.add_argument("--runtime", choices=("local", "ray"), default=None,
                   help="local (threads in this process; the default) or ray (stage actors; implied by --address)")
    p.add_argument("--address", help="a Ray cluster to join ('auto' on a cluster node); implies --runtime ray")
    p.add_argument("--encoder-pool", type=int, metavar="N",
                   help="actors per encoder step, shared by every camera (default 1; 0: one per camera); "
                        "implies --runtime ray")
    p.add_argument("--transport", choices=("tcp", "udp", "prefer_tcp"), default="tcp", help="RTSP transport")
    p.add_argument("--read-timeout", type=float, default=4.0, help="seconds without data before reconnecting")
    p.add_argument("--max-retries", type=int, default=None, help="give a source up after this many failures in a row "
                                                                 "(default: retry forever)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--output", help="write each stream's final context and manifest here at stop")
    p.set_defaults(func=_cmd_live)
