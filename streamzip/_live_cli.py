"""The ``streamzip live`` command: its arguments (:func:`add_cli`), the bearer token and ``--serve`` parsing,
and the command itself, which runs a :class:`LiveServer` until stopped and prints the summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Literal

from streamzip._live_config import ENV_RTSP_PASSWORD, ENV_RTSP_USERNAME, ENV_TOKEN, LiveConfig
from streamzip._live_server import LiveServer, serve_until
from streamzip.errors import ConfigError, Problem
from streamzip.sources.rtsp import RtspConfig


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
        args.runtime or ("ray" if args.address or args.encoder_pool is not None or args.no_encoder_gather
                         else "local"))
    if args.address and runtime != "ray":
        raise ConfigError([Problem("--address", "--address joins a Ray cluster: use it with --runtime ray")])
    if args.encoder_pool is not None and runtime != "ray":
        raise ConfigError([Problem("--encoder-pool", "sizes the Ray runtime's encoder pool: use it with --runtime ray")])
    if args.no_encoder_gather and runtime != "ray":
        raise ConfigError([Problem("--no-encoder-gather", "turns off the Ray runtime's gathering: use it with "
                                                          "--runtime ray")])
    pool = 1 if args.encoder_pool is None else args.encoder_pool
    rtsp = RtspConfig(transport=args.transport, read_timeout_s=args.read_timeout, max_retries=args.max_retries)
    creds = (os.environ.get(ENV_RTSP_USERNAME) or None, os.environ.get(ENV_RTSP_PASSWORD) or None)
    cfg = LiveConfig(host=host, port=port, runtime=runtime, address=args.address, encoder_pool=pool,
                     encoder_gather=not args.no_encoder_gather)
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
    p.add_argument("--no-encoder-gather", action="store_true",
                   help="send each camera's frames to its encoder on their own (by default an hf_encoder pool "
                        "actor encodes the frames of its cameras together); implies --runtime ray")
    p.add_argument("--transport", choices=("tcp", "udp", "prefer_tcp"), default="tcp", help="RTSP transport")
    p.add_argument("--read-timeout", type=float, default=4.0, help="seconds without data before reconnecting")
    p.add_argument("--max-retries", type=int, default=None, help="give a source up after this many failures in a row "
                                                                 "(default: retry forever)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--output", help="write each stream's final context and manifest here at stop")
    p.set_defaults(func=_cmd_live)
