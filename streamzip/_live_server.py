"""The live endpoint's server (:class:`LiveServer`): it builds a :class:`LiveStream` per input, starts and
stops them, and serves them over HTTP (aiohttp in a thread of its own: the routes, the bearer-token check,
health, the Prometheus metrics text); :func:`serve`, :func:`run_live` and :func:`serve_until` start and
run one."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from streamzip._live_config import ENV_TOKEN, LiveConfig
from streamzip._live_stream import LiveStream, _Subscriber
from streamzip.errors import ConfigError, DependencyError, InputError, Problem, StreamzipError
from streamzip.sources._names import redact, stream_name
from streamzip.sources.mic import MicConfig, MicSource, parse_mic
from streamzip.sources.rtsp import SCHEMES, RtspConfig, RtspSource, with_credentials
from streamzip.stats import InputResult

log = logging.getLogger("streamzip.live")  # the endpoint logs under its public module's name

MIN_TOKEN_CHARS = 16
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$")  # ID=URL


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

            return RayRuntime(address=self.cfg.address, encoder_pool=self.cfg.encoder_pool,
                              encoder_gather=self.cfg.encoder_gather)
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
