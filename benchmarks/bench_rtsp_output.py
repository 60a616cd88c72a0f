"""What serving the annotated stream over RTSP costs (vbedge.outputs.rtsp), per frame size, side by side.

    python benchmarks/bench_rtsp_output.py                  # 640x360 and 1280x720, 6 s each
    python benchmarks/bench_rtsp_output.py --sizes 320x240,1920x1080 --seconds 10

For each size: an :class:`~vbedge.outputs.rtsp.RtspOutput` gets synthetic clips (30 moving
random frames every 1.5 s, as a 20 fps pipeline delivers them) while one OpenCV/FFmpeg client
(RTSP over TCP) reads the stream. It prints the CPU the GStreamer server process used (x264
encoding, RTP) and the CPU of this process's pacing thread (drawing the caption, writing raw
frames into the pipe) in percent of one core, and the frames sent, repeated and dropped. The
frames are synthetic noise (the worst case for the encoder); a camera scene encodes cheaper.
Needs the system python3 with GStreamer's RTSP server (docs/rtsp-output.md).
"""

import argparse
import os
import threading
import time

import numpy as np


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(native_id):
    fields = open(f"/proc/self/task/{native_id}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(width, height, seconds, fps=20):
    import cv2

    from vbedge.outputs import OutputContext
    from vbedge.outputs.rtsp import RtspOutput
    from vbedge.pipeline import ClipEvent

    output = RtspOutput("rtsp://127.0.0.1:0/bench")
    output.open(OutputContext(fps=fps))
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            frames = [np.roll(base, 4 * (i * 30 + k), axis=1) for k in range(30)]
            output.write(ClipEvent(source_id="bench", clip_index=i, start=1.5 * i, end=1.5 * (i + 1), leaf=0,
                                   token_id=0, token="[V:0]", caption=f"now let me show you clip {i}",
                                   frames=frames))
            i += 1
            stop.wait(1.5)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    capture = cv2.VideoCapture(output.url, cv2.CAP_FFMPEG)
    try:
        for _ in range(10):  # past the start-up
            capture.read()
        pid, pacer = output._process.pid, output._thread.native_id
        counters = (output.frames_sent, output.frames_repeated, output.frames_dropped)
        server0, pacer0, start = cpu_seconds(pid), thread_cpu_seconds(pacer), time.monotonic()
        read = 0
        while time.monotonic() - start < seconds:
            ok, _ = capture.read()
            read += bool(ok)
        server1, pacer1, elapsed = cpu_seconds(pid), thread_cpu_seconds(pacer), time.monotonic() - start
        after = (output.frames_sent, output.frames_repeated, output.frames_dropped)
    finally:
        capture.release()
        stop.set()
        feeder.join(timeout=5)
        output.close()
    sent, repeated, dropped = (b - a for a, b in zip(counters, after))
    return {"size": f"{width}x{height}", "server_cpu": 100 * (server1 - server0) / elapsed,
            "pacer_cpu": 100 * (pacer1 - pacer0) / elapsed, "sent_fps": sent / elapsed,
            "repeated": repeated, "dropped": dropped, "client_frames": read, "seconds": elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1280x720", help="WIDTHxHEIGHT,... (640x360,1280x720)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per size (6)")
    args = parser.parse_args()
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    from vbedge.info import machine_summary
    from vbedge.outputs.rtsp import rtsp_unavailable_reason

    reason = rtsp_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot measure: {reason}")
    print(machine_summary())
    rows = [measure(*map(int, size.split("x")), args.seconds) for size in args.sizes.split(",")]
    print(f"{'size':>10} {'server CPU %':>12} {'pacer CPU %':>11} {'sent fps':>8} {'repeated':>8} "
          f"{'dropped':>7} {'client frames':>13}")
    for row in rows:
        print(f"{row['size']:>10} {row['server_cpu']:12.0f} {row['pacer_cpu']:11.0f} {row['sent_fps']:8.1f} "
              f"{row['repeated']:8d} {row['dropped']:7d} {row['client_frames']:13d}")
    base = rows[0]
    for row in rows[1:]:
        print(f"{row['size']} / {base['size']}: server CPU x{row['server_cpu'] / max(base['server_cpu'], 1e-9):.1f}")


if __name__ == "__main__":
    main()
