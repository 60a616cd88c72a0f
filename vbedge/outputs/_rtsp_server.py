"""The RTSP server behind :class:`vbedge.outputs.rtsp.RtspOutput`, run as a child process by the
*system* Python (the one with PyGObject and GStreamer's RTSP server: Debian's ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0``), never imported by vbedge.

Usage: ``python3 _rtsp_server.py HOST PORT PATH FPS`` (PORT 0: any free port).

Protocol, on stdin: one header line ``WIDTH HEIGHT\\n``, then raw BGR frames of exactly
``WIDTH * HEIGHT * 3`` bytes each, at the pace they should be shown (the parent paces them).
End of stdin ends the stream and the server. On stdout: one line, ``READY <bound port>``, or
``ERROR <reason>`` before exiting with a non-zero status.

Frames are pushed into an ``appsrc`` (timestamped on arrival) and encoded with x264 (zero
latency, a key frame every second so a client that joins decodes at once). The media is shared:
every client sees the same stream; frames that arrive while no client watches are dropped.
Standard library and ``gi`` only: this file must run on Python 3.9+ without vbedge installed.
"""

import sys
import threading


def main(argv):
    if len(argv) != 4:
        print("ERROR usage: _rtsp_server.py HOST PORT PATH FPS", flush=True)
        return 2
    host, port, path, fps = argv[0], argv[1], argv[2], int(argv[3])
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as error:
        print(f"ERROR import {type(error).__name__}: {error}", flush=True)
        return 3
    Gst.init(None)
    missing = [name for name in ("appsrc", "videoconvert", "x264enc", "rtph264pay")
               if Gst.ElementFactory.find(name) is None]
    if missing:
        print("ERROR elements " + " ".join(missing), flush=True)
        return 3

    lock = threading.Lock()
    state = {"caps": None, "sources": []}

    def media_configure(_factory, media):
        source = media.get_element().get_by_name("src")
        with lock:
            if state["caps"] is not None:
                source.set_property("caps", state["caps"])
            state["sources"].append(source)

        def unprepared(_media):
            with lock:
                if source in state["sources"]:
                    state["sources"].remove(source)

        media.connect("unprepared", unprepared)

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true do-timestamp=true format=time block=false max-bytes=0 "
        "! queue leaky=downstream max-size-buffers=%d ! videoconvert ! video/x-raw,format=I420 "
        "! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=%d "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )" % (max(2, fps), max(1, fps)))
    factory.set_shared(True)
    factory.connect("media-configure", media_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(port)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"ERROR listen cannot listen on {host}:{port}", flush=True)
        return 1
    loop = GLib.MainLoop()

    def read_frames():
        stdin = sys.stdin.buffer
        try:
            header = stdin.readline().split()
            if len(header) != 2:
                return
            width, height = int(header[0]), int(header[1])
            caps = Gst.Caps.from_string(
                f"video/x-raw,format=BGR,width={width},height={height},framerate={fps}/1")
            with lock:
                state["caps"] = caps
                for source in state["sources"]:
                    source.set_property("caps", caps)
            size = width * height * 3
            while True:
                data = stdin.read(size)
                if data is None or len(data) < size:
                    break
                with lock:
                    sources = list(state["sources"])
                for source in sources:
                    source.emit("push-buffer", Gst.Buffer.new_wrapped(data))
            with lock:
                sources = list(state["sources"])
            for source in sources:
                source.emit("end-of-stream")
        finally:
            GLib.idle_add(loop.quit)

    print(f"READY {server.get_bound_port()}", flush=True)
    threading.Thread(target=read_frames, name="frames", daemon=True).start()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
