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

This module is the public entry point; the code lives in ``_live_config.py`` (:class:`LiveConfig`, the
environment variables), ``_live_wire.py`` (:func:`pack_tokens`, :func:`unpack_tokens`),
``_live_stream.py`` (one input: :class:`LiveStream`), ``_live_server.py`` (:class:`LiveServer`, its HTTP
routes and metrics, :func:`serve`, :func:`run_live`) and ``_live_cli.py`` (``streamzip live``). The
public names outside ``__all__`` (``LiveStream``, ``check_token``, ``serve_until``, ``read_token``,
``parse_serve``, the constants) stay importable from here, as before the split.
"""

from __future__ import annotations

from streamzip._live_cli import add_cli
from streamzip._live_cli import parse_serve as parse_serve
from streamzip._live_cli import read_token as read_token
from streamzip._live_config import ENV_RTSP_PASSWORD as ENV_RTSP_PASSWORD
from streamzip._live_config import ENV_RTSP_USERNAME as ENV_RTSP_USERNAME
from streamzip._live_config import ENV_TOKEN as ENV_TOKEN
from streamzip._live_config import LiveConfig
from streamzip._live_server import MIN_TOKEN_CHARS as MIN_TOKEN_CHARS
from streamzip._live_server import LiveServer, is_loopback, run_live, serve
from streamzip._live_server import check_token as check_token
from streamzip._live_server import serve_until as serve_until
from streamzip._live_stream import LiveStream as LiveStream
from streamzip._live_wire import FORMAT as FORMAT
from streamzip._live_wire import FORMAT_VERSION as FORMAT_VERSION
from streamzip._live_wire import pack_tokens, unpack_tokens

__all__ = ["LiveConfig", "LiveServer", "add_cli", "is_loopback", "pack_tokens", "run_live", "serve",
           "unpack_tokens"]
