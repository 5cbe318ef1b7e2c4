"""A loopback RTSP server for the live tests and benchmarks: GStreamer's gst-rtsp-server via python3-gi.

Run it with Debian's interpreter (``/usr/bin/python3``; a virtual environment has no ``gi``)::

    /usr/bin/python3 gst_rtsp_server.py --port 8554 --file clip.mp4 [--auth user:password]

Mounts (every one unshared: each client gets its own media, so clients never disturb each other's pts):

- ``/file``: the H.264 + AAC file, sent in real time, once (the stream ends with the file);
- ``/live``, ``/cam1``, ``/cam2``: a live test pattern (``ball``) 320x240 at 25 fps, H.264 (x264,
  zerolatency, 1 s GOP) + Opus sine audio, with RTCP sender reports (wall-clock capture times).

``benchmarks/live.py`` serves its 720p file at ``/file``: no encoding cost on the server side.

``--auth user:password`` makes every mount require HTTP basic authentication. It prints ``serving
PORT`` once listening, and exits with status 3 when the port is taken (``attach`` returns 0).
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LIVE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=25/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=400 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 "
        "audiotestsrc is-live=true wave=sine freq=440 ! audio/x-raw,rate=48000,channels=1 "
        "! opusenc ! rtpopuspay name=pay1 pt=97 )")
FILE = ("( filesrc location={path} ! qtdemux name=d "
        "d.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 "
        "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )")


def factory(launch: str, role: str | None) -> GstRtspServer.RTSPMediaFactory:
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch(launch)
    f.set_shared(False)
    if role is not None:
        f.add_role_from_structure(Gst.Structure.from_string(
            f"{role}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")[0])
    return f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--file", help="an H.264 + AAC mp4 for /file")
    ap.add_argument("--auth", help="user:password required on every mount")
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    role = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        role = "user"
    mounts = server.get_mount_points()
    if args.file:
        mounts.add_factory("/file", factory(FILE.format(path=args.file), role))
    for name in ("/live", "/cam1", "/cam2"):
        mounts.add_factory(name, factory(LIVE, role))
    if server.attach(None) == 0:
        print(f"could not bind 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 3
    print(f"serving {args.port}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
