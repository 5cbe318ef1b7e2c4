"""The live endpoint's settings: :class:`LiveConfig` and the environment variables the live command reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamzip.config import Config

#: Environment variables the live command reads (the Kubernetes Secret sets them).
ENV_TOKEN = "STREAMZIP_LIVE_TOKEN"
ENV_RTSP_USERNAME = "STREAMZIP_RTSP_USERNAME"
ENV_RTSP_PASSWORD = "STREAMZIP_RTSP_PASSWORD"


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
    # Ray runtime: an hf_encoder pool actor encodes the frames of its cameras together.
    encoder_gather: bool = True
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
