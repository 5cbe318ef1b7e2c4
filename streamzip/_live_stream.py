"""One live input (:class:`LiveStream`): the thread that runs its source through the runtime, its latest
memory and window packets, its counters and latency samples, and the queues of its WebSocket/SSE clients."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from streamzip._live_config import LiveConfig
from streamzip._live_wire import pack_tokens
from streamzip.errors import ConfigError, Problem, StreamzipError
from streamzip.packets import Gap, Packet, Tokens
from streamzip.sources._names import redact
from streamzip.stats import InputResult

log = logging.getLogger("streamzip.live")  # the endpoint logs under its public module's name

_QUANTILES = (0.5, 0.95)


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
