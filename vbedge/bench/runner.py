"""Running the benchmarks: the pipeline per configuration, and single model calls."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time

from ..errors import InvalidInputError
from .machine import nvidia_smi_usage, usable_cores
from .stats import summarize

log = logging.getLogger("vbedge.bench")

#: Report stage name -> the pipeline's ``ClipEvent.latency_ms`` key. ``decode`` is the
#: pipeline's ``capture``: reading the frame that completed the clip and assembling the clip. For
#: a file that read decodes the frame; a live source decodes in its own reader thread, so there
#: it is mostly the wait for the frame to arrive (up to one frame interval). Either way it covers
#: one frame, not the clip's 30, so the real-time factor leaves it out.
#: ``end_to_end`` runs from reading a clip's last frame until its event is delivered.
BENCH_STAGES = {"decode": "capture", "preprocess": "preprocess", "s3d": "s3d",
                "tokenize": "tokenize", "videobert": "videobert", "end_to_end": "total"}
#: The queues a clip waits in, by the stage that takes it out (``ClipEvent.timings``).
QUEUE_STAGES = ("s3d", "tokenize", "videobert", "consumer")
#: Stages whose time is shared by the clips of one batch (for the real-time factor).
_BATCHED = ("s3d", "tokenize", "videobert")

BACKEND_CHOICES = ("onnxruntime", "tensorrt", "openvino", "torch")
PRECISION_CHOICES = ("fp32", "fp16", "int8", "bf16")  # bf16: openvino on BF16 CPUs
MODEL_CHOICES = ("s3d", "videobert")


#: Why a torch configuration other than fp32 is skipped (the bundle's reference weights are fp32).
_TORCH_FP32_ONLY = "the torch backend runs the fp32 reference weights only"

def check_choices(backends, precisions, streams=(1,)):
    """Validate the requested lists; return them as tuples.

    Raises:
        InvalidInputError: an unknown backend or precision (the message lists the valid ones),
            an empty list, or a stream count that is not a positive integer.
    """
    backends, precisions, streams = tuple(backends), tuple(precisions), tuple(streams)
    for what, values, valid in (("backend", backends, BACKEND_CHOICES),
                                ("precision", precisions, PRECISION_CHOICES)):
        if not values:
            raise InvalidInputError(f"no {what} requested; valid ones are {', '.join(valid)}")
        unknown = [v for v in values if v not in valid]
        if unknown:
            raise InvalidInputError(f"unknown {what}(s) {', '.join(map(repr, unknown))}; valid "
                                    f"{what}s are {', '.join(valid)}")
    if not streams:
        raise InvalidInputError("no stream count requested")
    for n in streams:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"stream counts must be positive integers, got {n!r}")
    return backends, precisions, streams


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb():
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def _max_rss_mb():
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class _Sampler:
    """Samples this process's RSS (5 Hz) and the GPUs' memory and utilisation (1 Hz) in a thread."""

    def __init__(self, gpu):
        self._stop = threading.Event()
        self.peak_rss_mb = _rss_mb()
        self.gpu_samples = []
        self._gpu = gpu
        self._thread = threading.Thread(target=self._loop, name="vbedge-bench-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5.0)
        return False

    def _loop(self):
        last_gpu = 0.0
        while not self._stop.wait(0.2):
            rss = _rss_mb()
            if rss is not None and (self.peak_rss_mb is None or rss > self.peak_rss_mb):
                self.peak_rss_mb = rss
            if self._gpu and time.monotonic() - last_gpu >= 1.0:
                last_gpu = time.monotonic()
                self.gpu_samples.extend(nvidia_smi_usage())

    def gpu_summary(self):
        if not self.gpu_samples:
            return None
        by_index = {}
        for sample in self.gpu_samples:
            by_index.setdefault(sample["index"], []).append(sample)
        return [{"index": i, "peak_memory_used_mb": max(s["memory_used_mb"] for s in samples),
                 "mean_utilization_pct": round(sum(s["utilization_pct"] for s in samples)
                                               / len(samples), 1),
                 "samples": len(samples)}
                for i, samples in sorted(by_index.items())]


def summarize_events(events, clip_seconds):
    """Per-stage and queue-wait summaries and the real-time factor of measured events.

    Args:
        events: :class:`vbedge.pipeline.ClipEvent` objects (their ``latency_ms`` and ``timings``).
        clip_seconds: the media time one clip stands for (its hop).

    Returns ``(stages, queue_wait, rtf, batch_mean)``: ``stages`` maps each name of
    :data:`BENCH_STAGES` to a :func:`~vbedge.bench.stats.summarize` dict; ``queue_wait`` the same
    for each queue of :data:`QUEUE_STAGES`; ``rtf`` is the time per clip of preprocess, S3D,
    tokenize and VideoBERT (the batched stages' time shared out over the batch) over
    ``clip_seconds``: the compute share of real time. Stages run in parallel threads, so
    ``rtf`` above 1 need not mean falling behind on several cores, and on a loaded machine
    the stage times include time the threads waited for a core (``None`` without
    events); ``batch_mean`` the mean batch size per batched stage.
    """
    events = list(events)
    stages = {name: summarize([e.latency_ms[key] for e in events if key in e.latency_ms])
              for name, key in BENCH_STAGES.items()}
    queue_wait = {name: summarize([e.timings["queue_ms"][name] for e in events
                                   if name in e.timings.get("queue_ms", {})])
                  for name in QUEUE_STAGES}
    batch_mean = {}
    for name in _BATCHED:
        sizes = [e.timings["batch"][name] for e in events if name in e.timings.get("batch", {})]
        batch_mean[name] = round(sum(sizes) / len(sizes), 3) if sizes else None
    rtf = None
    if events and clip_seconds > 0:
        busy_ms = 0.0
        for e in events:
            for name, key in BENCH_STAGES.items():
                if name in ("decode", "end_to_end") or key not in e.latency_ms:
                    continue
                share = e.timings.get("batch", {}).get(name, 1) if name in _BATCHED else 1
                busy_ms += e.latency_ms[key] / max(1, share)
        rtf = round(busy_ms / 1000.0 / (len(events) * clip_seconds), 4)
    return stages, queue_wait, rtf, batch_mean


def _open_sources(source, streams, fps, frame_size):
    from ..sources import open_source
    from .synthetic import SyntheticLiveFrames

    generators, sources = [], {}
    try:
        for i in range(streams):
            if source == "synthetic":
                frames = SyntheticLiveFrames(fps=fps, width=frame_size[0], height=frame_size[1],
                                             seed=i)
                generators.append(frames)
                sources[f"synthetic{i}"] = open_source(frames, live=True)
            else:
                sources[f"stream{i}"] = open_source(source)
    except BaseException:
        for frames in generators:
            frames.stop()
        for opened in sources.values():
            opened.close()
        raise
    return sources, generators


def _bench_one(pipe, streams, seconds, warmup, source, fps, frame_size, clip_seconds, gpu,
               progress):
    sources, generators = _open_sources(source, streams, fps, frame_size)
    live = all(s.is_live for s in sources.values())
    warm_dropped = {}
    measured = []
    t_begin = time.monotonic()
    t_measure = t_begin + warmup
    t_stop = None
    window_start = cpu_start = None
    with _Sampler(gpu) as sampler:
        events = pipe.stream(sources)
        try:
            for event in events:
                now = time.monotonic()
                if now < t_measure:
                    warm_dropped[event.source_id] = max(warm_dropped.get(event.source_id, 0),
                                                        event.dropped_clips)
                    continue
                if window_start is None:
                    # The window opens at the first event after warm-up, so that CPU time and
                    # wall time cover the same span as the counted clips.
                    window_start, cpu_start = now, _cpu_seconds()
                    t_stop = now + seconds
                    sampler.peak_rss_mb = _rss_mb()
                    continue
                measured.append(event)
                if progress is not None:
                    progress(len(measured))
                if now >= t_stop:
                    break
            window_end, cpu_end = time.monotonic(), _cpu_seconds()
        finally:
            events.close()
            for frames in generators:
                frames.stop()
            for opened in sources.values():
                opened.close()
    summary = pipe.last_summary
    dropped = sum(max(0, s.dropped_clips - warm_dropped.get(s.source_id, 0)) for s in summary)
    failed = [f"{s.source_id}: {s.end_reason}" for s in summary if s.failed]
    wall = (window_end - window_start) if window_start is not None else 0.0
    stages, queue_wait, rtf, batch_mean = summarize_events(measured, clip_seconds)
    p99 = stages["end_to_end"]["p99_ms"]
    cores = usable_cores()
    return {
        "streams": streams,
        "live": live,
        "measured_seconds": round(wall, 3),
        "clips": len(measured),
        "clips_per_s": round(len(measured) / wall, 4) if wall > 0 else None,
        "clip_seconds": clip_seconds,
        "rtf": rtf,
        "dropped_clips": dropped,
        "dropped_frames": sum(s.dropped_frames for s in summary),
        "realtime": bool(live and measured and dropped == 0 and p99 is not None
                         and p99 < clip_seconds * 1000.0),
        "stages": stages,
        "queue_wait": queue_wait,
        "batch_mean": batch_mean,
        "cpu_utilization": round((cpu_end - cpu_start) / wall / cores, 4) if wall > 0 else None,
        "cores": cores,
        "peak_rss_mb": round(sampler.peak_rss_mb, 1) if sampler.peak_rss_mb else None,
        "process_peak_rss_mb": round(_max_rss_mb(), 1),
        "gpu": sampler.gpu_summary(),
        "source_failures": failed,
    }


def run_bench(bundle, backends=("onnxruntime",), precisions=("fp32",), streams=(1,),
              seconds=20.0, warmup=5.0, source="synthetic", fps=30.0, frame_size=(640, 480),
              pipeline_options=None, progress=None):
    """Time the pipeline for every backend x precision x stream count; return the report dict.

    Args:
        bundle: bundle folder or :class:`vbedge.bundle.Bundle` (loaded once, shared).
        backends, precisions, streams: the configurations (see :func:`check_choices`).
        seconds: measured seconds per configuration (after ``warmup`` seconds not counted).
        source: ``"synthetic"`` (a live camera made up in real time at ``fps``, ``frame_size``
            ``(width, height)``), or a file / URI opened once per stream. A file is offline: it
            runs as fast as it can, never drops, and ends the run when it ends.
        pipeline_options: extra :class:`vbedge.pipeline.Pipeline` options (e.g. ``max_batch``).
        progress: optional callable ``progress(config_label, measured_clips)``.

    Returns the report: ``machine`` (:func:`~vbedge.bench.machine.machine_info`), ``config``,
    ``runs`` (one per configuration that ran), ``skipped`` (configurations that could not run
    here, with the reason), ``sweeps`` (per backend and precision: the largest stream count held
    in real time: no drop and p99 end to end below one clip) and ``warnings``.
    """
    from ..backends.base import BackendUnavailableError
    from ..bundle import Bundle
    from ..pipeline import Pipeline
    from .machine import machine_info

    backends, precisions, streams = check_choices(backends, precisions, streams)
    for name, value in (("seconds", seconds), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (name == "seconds" and value == 0):
            raise InvalidInputError(f"{name} must be a {'positive' if name == 'seconds' else 'non-negative'}"
                                    f" number of seconds, got {value!r}")
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidInputError(f"source must be 'synthetic', a file or a URI, got {source!r}")
    source = os.fspath(source)
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    options = dict(pipeline_options or {})
    machine = machine_info()
    gpu = bool(machine["gpus"])
    report = {"format": "vbedge-bench/1", "machine": machine,
              "config": {"bundle": str(bundle.root), "source": source, "fps": fps,
                         "frame_size": list(frame_size), "seconds": seconds, "warmup": warmup,
                         "pipeline_options": options},
              "runs": [], "skipped": [], "sweeps": [], "warnings": list(machine["warnings"])}
    for backend in backends:
        for precision in precisions:
            if backend == "torch" and precision != "fp32":
                report["skipped"].append({"backend": backend, "precision": precision,
                                          "reason": _TORCH_FP32_ONLY})
                continue
            try:
                pipe = Pipeline.load(bundle, backend=backend, precision=precision, **options)
            except (BackendUnavailableError, InvalidInputError) as exc:
                report["skipped"].append({"backend": backend, "precision": precision,
                                          "reason": str(exc)})
                continue
            held = 0
            try:
                clip_seconds = float(options.get("hop") or pipe.spec.clip_seconds)
                for n in streams:
                    label = f"{backend} {precision} x{n}"
                    tick = (lambda count, label=label: progress(label, count)) if progress else None
                    run = _bench_one(pipe, n, seconds, warmup, source, fps, frame_size,
                                     clip_seconds, gpu, tick)
                    run = {"backend": backend, "precision": precision, **run}
                    report["runs"].append(run)
                    if run["clips"] < 10:
                        report["warnings"].append(
                            f"{label}: only {run['clips']} clip(s) measured, so the percentiles "
                            f"are rough; raise --seconds")
                    if run["realtime"]:
                        held = max(held, n)
            finally:
                pipe.close()
            report["sweeps"].append({"backend": backend, "precision": precision,
                                     "streams_tried": list(streams),
                                     "max_realtime_streams": held})
    if source != "synthetic" and report["runs"] and not any(r["live"] for r in report["runs"]):
        report["warnings"].append("the source is an offline file: it is read as fast as the "
                                  "pipeline goes and never drops, so the real-time sweep does "
                                  "not apply (max_realtime_streams is 0)")
    return report


def _model_inputs(bundle, model, batch):
    import numpy as np

    from ..captioner import Captioner
    from ..preprocess import PreprocessSpec

    if model == "s3d":
        spec = PreprocessSpec.from_dict(bundle.preprocessing)
        rng = np.random.default_rng(0)
        return {"clip": rng.standard_normal(spec.clip_shape(batch=batch), dtype=np.float32)}
    captioner = Captioner(bundle.vocab)
    leaves = int(bundle.codebook.num_leaves)
    contexts = [[(i + j) % leaves for j in range(captioner.context_clips + 1)]
                for i in range(batch)]
    return captioner.build_batch(contexts)


def run_model_bench(bundle, model, backends=("onnxruntime",), precisions=("fp32",),
                    iterations=50, warmup=5, batch=1, progress=None):
    """Time one backend call of ``model`` (``"s3d"`` or ``"videobert"``) alone, like trtexec.

    The S3D input is seeded noise of the bundle's clip shape; the VideoBERT input is the
    pipeline's caption (+ forecast) batch for ``batch`` contexts. Every backend x precision runs
    ``warmup`` untimed then ``iterations`` timed calls. Host-to-device / compute /
    device-to-host are not split: on the CPU there is nothing to split, and on a GPU the
    backends' ``run`` includes the copies (the report says so).

    Returns a report with ``machine``, ``config``, ``runs`` (``backend``, ``precision``,
    ``model``, ``batch``, ``stages`` with ``compute``, ``calls_per_s``, ``peak_rss_mb``,
    ``split``) and ``skipped``.
    """
    from ..backends.base import BackendUnavailableError
    from ..backends.select import create_bundle_backend
    from ..bundle import Bundle
    from .machine import machine_info

    if model not in MODEL_CHOICES:
        raise InvalidInputError(f"unknown model {model!r}; valid models are "
                                f"{', '.join(MODEL_CHOICES)}")
    backends, precisions, _ = check_choices(backends, precisions)
    for name, value, low in (("iterations", iterations, 1), ("warmup", warmup, 0),
                             ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    machine = machine_info()
    inputs = _model_inputs(bundle, model, batch)
    report = {"format": "vbedge-bench-model/1", "machine": machine,
              "config": {"bundle": str(bundle.root), "model": model, "batch": batch,
                         "iterations": iterations, "warmup": warmup},
              "runs": [], "skipped": [], "warnings": list(machine["warnings"])}
    for backend in backends:
        for precision in precisions:
            if backend == "torch" and precision != "fp32":
                report["skipped"].append({"backend": backend, "precision": precision,
                                          "reason": _TORCH_FP32_ONLY})
                continue
            try:
                runner = create_bundle_backend(bundle, model, backend=backend, precision=precision)
            except (BackendUnavailableError, InvalidInputError) as exc:
                report["skipped"].append({"backend": backend, "precision": precision,
                                          "reason": str(exc)})
                continue
            times = []
            try:
                with _Sampler(bool(machine["gpus"])) as sampler:
                    for _ in range(warmup):
                        runner.run(inputs)
                    t_all = time.perf_counter()
                    for i in range(iterations):
                        t0 = time.perf_counter()
                        runner.run(inputs)
                        times.append((time.perf_counter() - t0) * 1000.0)
                        if progress is not None:
                            progress(f"{model} {backend} {precision}", i + 1)
                    wall = time.perf_counter() - t_all
            finally:
                runner.close()
            report["runs"].append({
                "backend": backend, "precision": precision, "model": model, "batch": batch,
                "stages": {"compute": summarize(times)},
                "calls_per_s": round(iterations / wall, 4) if wall > 0 else None,
                "peak_rss_mb": round(sampler.peak_rss_mb, 1) if sampler.peak_rss_mb else None,
                "gpu": sampler.gpu_summary(),
                "split": ("not split on CPU" if not machine["gpus"] else
                          "not split: the backend's run() includes host-device copies"),
            })
    return report
