#!/usr/bin/python3
"""RTSP camera server for tests and load tests (Debian's GStreamer rtsp-server).

Runs with Debian's /usr/bin/python3 (the `gi` bindings are a Debian package, not a wheel).
Each `--mount NAME=UDP_PORT` relays an MPEG-TS/H.264 stream that an encoder (ffmpeg) pushes to
127.0.0.1:UDP_PORT; `--test-mount NAME` adds a synthetic live 640x480@25 pattern. Prints
`READY <port>` once listening; stops on SIGTERM/SIGINT.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--mount", action="append", default=[], metavar="NAME=UDP_PORT")
    parser.add_argument("--test-mount", action="append", default=[], metavar="NAME")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mount:
        name, udp_port = spec.split("=", 1)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f"( udpsrc address=127.0.0.1 port={int(udp_port)} ! tsdemux ignore-pcr=true "
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
        )
        factory.set_shared(True)
        mounts.add_factory(f"/{name}", factory)
    for name in args.test_mount:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,framerate=25/1 "
            "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        factory.set_shared(True)
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"READY {args.port}", flush=True)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    signal.signal(signal.SIGINT, lambda *_: loop.quit())
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
