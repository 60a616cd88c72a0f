"""Prometheus metrics of a running ``vbedge caption``: ``--metrics HOST:PORT`` serves ``/metrics``.

::

    from vbedge.outputs import OutputSet
    from vbedge.outputs.metrics import MetricsOutput

    outputs = OutputSet()
    metrics = outputs.add(MetricsOutput("0.0.0.0:9108"))
    caption_sources("bundle/", {"cam0": "rtsp://cam0/stream"}, outputs)

It is an :class:`~vbedge.outputs.Output` like the others (it receives every event and every source
event), added to the :class:`~vbedge.outputs.OutputSet` by the caller rather than picked by a URI.
Each instance has its own ``CollectorRegistry`` (never the process-wide one), so several
pipelines, or tests, in one process do not collide. The metric names and labels are listed in
docs/metrics.md.

What comes from events (latency histograms, clip and caption counters, the running totals of
dropped clips and frames) is updated in :meth:`MetricsOutput.write`; what is live (the sources'
reconnect counters and state, every output's failures) is read at scrape time by a collector.
"""

from __future__ import annotations

import threading
import time

from ..errors import InvalidInputError, MissingDependencyError
from .base import Output

__all__ = ["LATENCY_BUCKETS", "QUEUES", "STAGES", "MetricsOutput", "parse_host_port"]

#: The pipeline stages of :attr:`vbedge.pipeline.ClipEvent.latency_ms`, exported in this order.
STAGES = ("capture", "preprocess", "s3d", "tokenize", "videobert", "total")

#: Histogram buckets in seconds: 1 ms .. 10 s, about 2.5 per decade (a clip is 1.5 s of video; a
#: stage slower than that cannot keep up, so the buckets are densest below it).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)

#: The queues a clip waits in before a stage (:attr:`vbedge.pipeline.ClipEvent.timings` ``queue_ms``).
QUEUES = ("s3d", "tokenize", "videobert", "consumer")

#: ``vbedge_source_state`` values: ``connected`` until a source reports otherwise.
SOURCE_STATES = ("connected", "disconnected", "ended")
_STATE_OF_EVENT = {"disconnected": "disconnected", "connect_failed": "disconnected",
                   "reconnected": "connected", "ended": "ended"}
#: ``vbedge_output_state`` values (:class:`vbedge.outputs.OutputStatus` ``state``).
OUTPUT_STATES = ("ok", "failing", "retrying", "closed")


def parse_host_port(text) -> tuple:
    """``"HOST:PORT"`` -> ``(host, port)``. ``":PORT"`` means every interface (``0.0.0.0``);
    an IPv6 host is written in brackets (``[::1]:9108``); port 0 picks a free port.

    Raises:
        InvalidInputError: not ``HOST:PORT`` or the port is not 0..65535.
    """
    value = str(text).strip()
    expected = "expected HOST:PORT, e.g. 127.0.0.1:9108, :9108 (every interface) or [::1]:9108"
    host, sep, port = value.rpartition(":")
    if not sep or not port:
        raise InvalidInputError(f"metrics address {value!r}: {expected}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidInputError(f"metrics address {value!r}: write an IPv6 host in brackets; {expected}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInputError(f"metrics address {value!r}: port {port!r} is not a number 0..65535; {expected}")
    return host or "0.0.0.0", int(port)


def _prometheus():
    try:
        import prometheus_client
    except ImportError as error:
        raise MissingDependencyError(
            "--metrics needs the prometheus_client package: pip install 'vbedge[metrics]'") from error
    return prometheus_client


class MetricsOutput(Output):
    """Serves the pipeline's metrics as Prometheus text at ``http://HOST:PORT/metrics``.

    Args:
        address: ``HOST:PORT`` (see :func:`parse_host_port`); port 0 binds a free port, read back
            from :attr:`port`.
        on_serving: called with :attr:`url` once the server listens (e.g. to print it).

    The server starts in :meth:`open` (so a port in use fails before any model is loaded) and
    stops in :meth:`close`. Counters survive a close and reopen of the same instance.
    """

    kind = "metrics"

    def __init__(self, address="127.0.0.1:9108", on_serving=None):
        super().__init__(address)
        self._on_serving = on_serving
        self.host, self.requested_port = parse_host_port(address)
        _prometheus()  # fail at once, before sources or models, when the package is missing
        self._server = None
        self._thread = None
        self._registry = None
        self._context = None
        self._lock = threading.Lock()
        self._states: dict = {}      # source -> one of SOURCE_STATES
        self._dropped: dict = {}     # source -> [dropped_clips, dropped_frames] running totals
        self._bound_port = None

    @property
    def port(self) -> int | None:
        """The port being served (the one picked for port 0), ``None`` before :meth:`open`."""
        return self._bound_port

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "localhost"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._bound_port if self._bound_port is not None else self.requested_port}/metrics"

    @property
    def registry(self):
        """The private ``prometheus_client.CollectorRegistry`` (``None`` before :meth:`open`)."""
        return self._registry

    # -- the Output contract ------------------------------------------------------------------

    def open(self, context, resume=False):
        prometheus = _prometheus()
        self._context = context
        if self._registry is None:
            self._build(prometheus, context)
        with self._lock:
            for source in context.sources:
                self._states.setdefault(source, "connected")
        self._ensure_children(context.sources)
        # A retry keeps the address the first open bound (port 0 would otherwise move).
        port = self._bound_port if self._bound_port is not None else self.requested_port
        self._serve(prometheus, port)

    def write(self, event):
        source = event.source_id
        self._ensure_children((source,))
        for stage, milliseconds in (event.latency_ms or {}).items():
            if milliseconds is None or milliseconds != milliseconds:  # None or NaN: not measured
                continue
            self._latency.labels(stage=stage, source=source).observe(float(milliseconds) / 1000.0)
        for stage, milliseconds in ((event.timings or {}).get("queue_ms") or {}).items():
            self._queue_wait.labels(stage=stage, source=source).observe(float(milliseconds) / 1000.0)
        self._clips.labels(source=source).inc()
        if event.caption_changed:
            self._changes.labels(source=source).inc()
        self._last_end.labels(source=source).set(float(event.end))
        self._last_time.labels(source=source).set(time.time())
        with self._lock:
            totals = self._dropped.setdefault(source, [0, 0])
            # Running totals: the counter follows the largest total seen (never goes down).
            totals[0] = max(totals[0], int(event.dropped_clips))
            totals[1] = max(totals[1], int(event.dropped_frames))

    def source_event(self, source_id, event):
        state = _STATE_OF_EVENT.get(event.kind)
        if state is not None:
            with self._lock:
                self._states[source_id] = state

    def close(self):
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # -- internals -------------------------------------------------------------------------------

    def _build(self, prometheus, context):
        registry = prometheus.CollectorRegistry(auto_describe=True)
        self._latency = prometheus.Histogram(
            "vbedge_stage_latency_seconds", "Latency of each pipeline stage per clip (event.latency_ms); "
            "s3d and videobert are the whole batch the clip ran in, total is frame read to event.",
            ["stage", "source"], buckets=LATENCY_BUCKETS, registry=registry)
        self._queue_wait = prometheus.Histogram(
            "vbedge_queue_wait_seconds", "Time a clip waited in the queue before a stage (part of the "
            "total latency).", ["stage", "source"], buckets=LATENCY_BUCKETS, registry=registry)
        self._clips = prometheus.Counter("vbedge_clips_total", "Clips captioned (caption events).",
                                         ["source"], registry=registry)
        self._changes = prometheus.Counter("vbedge_caption_changes_total",
                                           "Times the shown caption changed.", ["source"], registry=registry)
        self._last_end = prometheus.Gauge("vbedge_last_clip_end_seconds",
                                          "End of the latest captioned clip, in source seconds.",
                                          ["source"], registry=registry)
        self._last_time = prometheus.Gauge("vbedge_last_event_timestamp_seconds",
                                           "Unix time of the latest caption event.", ["source"],
                                           registry=registry)
        from .. import __version__

        info = {"version": str(__version__)}
        info.update({key: str(context.info.get(key, "")) for key in ("bundle", "backend", "precision")})
        prometheus.Info("vbedge", "The running vbedge: version, bundle, backend, precision.",
                        registry=registry).info(info)
        from prometheus_client import core

        registry.register(_LiveCollector(self, core))
        self._registry = registry

    def _ensure_children(self, sources):
        # Every series exists from the start (at 0), so rate() and absent() work from the first scrape.
        for source in sources:
            for stage in STAGES:
                self._latency.labels(stage=stage, source=source)
            for stage in QUEUES:
                self._queue_wait.labels(stage=stage, source=source)
            self._clips.labels(source=source)
            self._changes.labels(source=source)

    def _serve(self, prometheus, port):
        import socketserver
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, *args):  # no line per scrape on stderr
                pass

        if ":" in self.host:
            import socket

            Server.address_family = socket.AF_INET6
        try:
            server = make_server(self.host, port, prometheus.make_wsgi_app(self._registry),
                                 server_class=Server, handler_class=QuietHandler)
        except OSError as error:
            raise InvalidInputError(f"cannot serve metrics on {self.host}:{port}: {error.strerror or error} "
                                    "(is another vbedge or exporter using the port? pick another "
                                    "with --metrics HOST:PORT)") from error
        self._bound_port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"vbedge-metrics-{self._bound_port}",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        if self._on_serving is not None:
            self._on_serving(self.url)

    def _snapshot(self):
        with self._lock:
            return dict(self._states), {k: list(v) for k, v in self._dropped.items()}


class _LiveCollector:
    """What is read at scrape time: source counters and states, dropped totals, every output's status."""

    def __init__(self, owner, core):
        self._owner = owner
        self._core = core

    def describe(self):
        return []  # names are not checked against the other collectors' at registration

    def collect(self):
        core, owner = self._core, self._owner
        context = owner._context
        states, dropped = owner._snapshot()
        sources = list(context.sources) if context is not None else []
        sources += [s for s in list(states) + list(dropped) if s not in sources]

        dropped_clips = core.CounterMetricFamily(
            "vbedge_dropped_clips", "Clips dropped to stay live (running total from events).", labels=["source"])
        dropped_frames = core.CounterMetricFamily(
            "vbedge_dropped_frames", "Frames a live source overwrote before they were read (running total "
            "from events).", labels=["source"])
        for source in sources:
            clips, frames = dropped.get(source, (0, 0))
            dropped_clips.add_metric([source], clips)
            dropped_frames.add_metric([source], frames)
        yield dropped_clips
        yield dropped_frames

        up = core.GaugeMetricFamily("vbedge_source_up", "1 while the source delivers frames, 0 when "
                                    "disconnected or ended.", labels=["source"])
        state = core.GaugeMetricFamily("vbedge_source_state", "The source's state (1 for the current one).",
                                       labels=["source", "state"])
        for source in sources:
            current = states.get(source, "connected")
            up.add_metric([source], 1.0 if current == "connected" else 0.0)
            for name in SOURCE_STATES:
                state.add_metric([source, name], 1.0 if name == current else 0.0)
        yield up
        yield state

        families = {
            "disconnects": core.CounterMetricFamily("vbedge_source_disconnects",
                                                    "Times a live stream dropped.", labels=["source"]),
            "reconnects": core.CounterMetricFamily("vbedge_source_reconnects",
                                                   "Times a live stream was opened again.", labels=["source"]),
            "failed_connects": core.CounterMetricFamily("vbedge_source_failed_connects",
                                                        "Connection attempts that failed.", labels=["source"]),
            "frames_read": core.CounterMetricFamily("vbedge_source_frames_read",
                                                    "Frames decoded from the source.", labels=["source"]),
        }
        for source in sources:
            stats = context.source_stats(source) if context is not None else None
            if stats is None:
                continue
            for field, family in families.items():
                family.add_metric([source], getattr(stats, field, 0))
        yield from families.values()

        statuses = context.status() if context is not None else []
        outputs = {
            "events": core.CounterMetricFamily("vbedge_output_events", "Events an output wrote.",
                                               labels=["output"]),
            "failures": core.CounterMetricFamily("vbedge_output_failures",
                                                 "Writes or reopens of an output that raised.", labels=["output"]),
            "missed": core.CounterMetricFamily("vbedge_output_missed_events",
                                               "Events an output missed while failing.", labels=["output"]),
        }
        output_state = core.GaugeMetricFamily("vbedge_output_state", "The output's state (1 for the "
                                              "current one).", labels=["output", "state"])
        seen = {}
        for status in statuses:
            # Two outputs may read alike ("jsonl a.jsonl" twice): number the repeats.
            name = status.description
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                name = f"{name} #{seen[name]}"
            for field, family in outputs.items():
                family.add_metric([name], getattr(status, field))
            for value in OUTPUT_STATES:
                output_state.add_metric([name, value], 1.0 if status.state == value else 0.0)
        yield from outputs.values()
        yield output_state
