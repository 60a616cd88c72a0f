"""The streaming pipeline: video sources in, visual tokens and captions out, one event per clip.

::

    pipe = vbedge.Pipeline.load("bundle/", backend="auto")
    for event in pipe.stream("rtsp://camera/stream"):
        print(event.start, event.token, event.caption)

Stages run in their own threads, joined by bounded queues::

    capture + clips + preprocess (one thread per source)
        -> pending clips (per source)  -> S3D (batches clips of several sources)
        -> tokenization (codebook)     -> VideoBERT (captions, forecast) -> consumer

Offline sources (files) never lose a clip: every queue blocks when full (backpressure), so a
slow consumer slows the decoding down. Live sources never fall behind: a live source has at most
``live_in_flight`` clips between S3D and the consumer and ``live_pending_clips`` waiting before
S3D; when a new clip finds the pending slots full, the *oldest* pending clip is dropped and
counted (:attr:`ClipEvent.dropped_clips`), so latency stays bounded by a few clips.

Shutdown is clean in every case (end of the sources, the consumer breaking out of the loop or
closing the generator, an exception such as ``KeyboardInterrupt`` in the consumer,
:meth:`Pipeline.close`): a stop flag is set, every blocking wait in the stages polls it, the
sources opened by the pipeline are closed by their own capture threads and all threads are
joined with a timeout.

A source that fails (a damaged file, a live stream that gives up) ends the stream with
:class:`SourceFailedError` naming the source and the reason, after the events of the clips
before the failure were delivered. An error inside a stage (a backend failure) raises
:class:`PipelineError` naming the stage.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInputError, VbedgeError
# The stage queues keep their private names here: the stages below read as before the move.
from .stage_queues import ClipQueue as _ClipQueue
from .stage_queues import Handoff as _Handoff
from .stage_queues import SourceEnd as _End

__all__ = ["CAPTIONING_OPTIONS", "ClipEvent", "Pipeline", "PipelineError", "SourceFailedError", "SourceSummary",
           "pipeline_captioners"]

log = logging.getLogger("vbedge.pipeline")

# How often blocked stages look at the stop flag (seconds): bounds shutdown latency.
_POLL = 0.05
# How long shutdown waits for all stage threads together.
_JOIN_TIMEOUT = 15.0


class PipelineError(VbedgeError, RuntimeError):
    """A pipeline stage failed; the message names the stage and the cause."""


class SourceFailedError(PipelineError):
    """A source ended abnormally (damaged file, stream that gave up, iterable that raised).

    Attributes:
        source_id: which source.
        reason: the source's end reason.
        clips_delivered: events of that source delivered before the failure.
        tokens: set by :meth:`Pipeline.tokenize_video`: the ``(start, end, leaf)`` of the clips
            before the damage.
    """

    def __init__(self, source_id, reason, clips_delivered=0):
        super().__init__(f"source {source_id!r} failed: {reason} ({clips_delivered} clip(s) "
                         f"delivered before the failure)")
        self.source_id = source_id
        self.reason = reason
        self.clips_delivered = clips_delivered
        self.tokens = None


@dataclass
class ClipEvent:
    """Everything the pipeline knows about one clip.

    Attributes:
        source_id: the source (its name in a dict of sources, else its description).
        clip_index: 0, 1, 2... per source, in time order; gaps are dropped clips.
        start, end: the clip's time span in source seconds (``[start, end)``).
        leaf: codebook leaf (visual word) of the clip.
        token_id: its VideoBERT vocabulary id; token: its string (``[V:..]``).
        caption: the caption currently shown (changes only when stable; ``None`` until the first
            stable caption or when captions are off).
        clip_caption: this clip's own prediction: the filled template.
        caption_changed: True on the clip where ``caption`` changed.
        confidence: the lowest slot confidence of ``clip_caption`` (see
            :class:`vbedge.captioner.SlotPrediction`).
        verbs, nouns: ``(word, logit)`` pairs from the verb / noun slots, best first.
        forecast: :class:`vbedge.captioner.Forecast` candidates ``forecast_step`` clips ahead.
        latency_ms: milliseconds per stage: ``capture`` (reading the frame that completed the
            clip and assembling it), ``preprocess``, ``s3d`` (the whole batch the clip was in),
            ``tokenize``, ``videobert`` (the whole batch), ``total`` (from reading the clip's
            last frame until the event is handed to the consumer, queue waits included).
        dropped_clips: clips of this source dropped so far to stay live (always 0 offline).
        dropped_frames: frames the live source overwrote so far (its ``stats.frames_dropped``).
        s3d_batch_size: clips (of any source) in the S3D batch this clip ran in.
        padded_frames: repeated frames completing the last clip of a file.
        timings: where the clip waited, for ``vbedge bench``: ``queue_ms`` (stage name ->
            milliseconds the clip waited in the queue before ``s3d``, ``tokenize``,
            ``videobert`` and the ``consumer``) and ``batch`` (stage name -> clips in the batch
            it ran in). Not in :meth:`to_dict`.
        frames: the clip's sampled frames (``keep_frames=True`` only; not in :meth:`to_dict`).
        result: the full :class:`vbedge.captioner.CaptionResult` (not in :meth:`to_dict`).
    """

    source_id: str
    clip_index: int
    start: float
    end: float
    leaf: int
    token_id: int
    token: str
    caption: str | None = None
    clip_caption: str | None = None
    caption_changed: bool = False
    confidence: float = math.nan
    verbs: tuple = ()
    nouns: tuple = ()
    forecast: tuple = ()
    latency_ms: dict = field(default_factory=dict)
    dropped_clips: int = 0
    dropped_frames: int = 0
    s3d_batch_size: int = 1
    padded_frames: int = 0
    timings: dict = field(default_factory=dict, repr=False)
    frames: list | None = field(default=None, repr=False)
    result: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-serialisable form (without frames and the raw result)."""
        return {
            "source": self.source_id, "clip": self.clip_index,
            "start": round(self.start, 6), "end": round(self.end, 6),
            "leaf": self.leaf, "token_id": self.token_id, "token": self.token,
            "caption": self.caption, "clip_caption": self.clip_caption,
            "caption_changed": self.caption_changed,
            "confidence": None if math.isnan(self.confidence) else round(self.confidence, 6),
            "verbs": [[w, round(s, 4)] for w, s in self.verbs],
            "nouns": [[w, round(s, 4)] for w, s in self.nouns],
            "forecast": [{"leaf": f.leaf, "token": f.token, "score": round(f.score, 4)}
                         for f in self.forecast],
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "dropped_clips": self.dropped_clips, "dropped_frames": self.dropped_frames,
            "s3d_batch_size": self.s3d_batch_size, "padded_frames": self.padded_frames,
        }


@dataclass(frozen=True)
class SourceSummary:
    """How one source of the last stream went (:attr:`Pipeline.last_summary`).

    Attributes:
        source_id: the source.
        clips: clips assembled from it.
        delivered: events delivered to the consumer.
        dropped_clips: clips dropped to stay live.
        dropped_frames: frames the live source itself dropped.
        end_reason: why it ended (``None`` while running or when the stream was stopped first).
        failed: whether the end was abnormal.
    """

    source_id: str
    clips: int
    delivered: int
    dropped_clips: int
    dropped_frames: int
    end_reason: str | None
    failed: bool


# -- work items ----------------------------------------------------------------------------------


@dataclass
class _Work:
    slot: "_Slot"
    clip: object
    array: np.ndarray | None
    t_read: float
    latency: dict
    feature: np.ndarray | None = None
    leaf: int = -1
    batch_size: int = 1
    # For the bench: when the clip entered its current queue, and its waits and batch sizes.
    t_queued: float = 0.0
    timings: dict = field(default_factory=lambda: {"queue_ms": {}, "batch": {}})

    def dequeued(self, stage, now):
        """Record the wait before ``stage`` (the clip left its queue at ``now``)."""
        self.timings["queue_ms"][stage] = (now - self.t_queued) * 1000.0


@dataclass
class _StageError:
    stage: str
    error: BaseException


class _Slot:
    """Per-source state shared by the stages (each field has one writing thread)."""

    def __init__(self, source_id, source, owned):
        self.source_id = source_id
        self.source = source
        self.owned = owned
        self.live = source.is_live
        self.clips = 0            # written by the capture thread
        self.dropped = 0          # written under the clip queue's lock
        self.in_flight = 0        # written under the clip queue's lock
        self.delivered = 0        # written by the consumer's thread
        self.end = None           # _End, set by the consumer's thread when it arrives
        self.end_taken = False    # its _End left the clip queue (under the queue's lock)
        self.history = None       # deque of leaves, VideoBERT thread
        self.captioner = None     # this source's Captioner (set before the threads start)
        self.stabilizer = None    # VideoBERT thread

    def dropped_frames(self):
        return int(self.source.stats.frames_dropped) if self.live else 0


# -- the pipeline --------------------------------------------------------------------------------

#: Whether the pipeline's ONNX Runtime sessions spin their idle intra-op threads (unless
#: ``backend_options`` says ``spinning``). Off: on the 2-core AMD EPYC, live camera, demo bundle,
#: end-to-end p50 0.68-0.86x and CPU use 0.34-0.54x of spinning's (benchmarks/bench_pipeline_spinning.py,
#: docs/benchmarks.md).
PIPELINE_ORT_SPINNING = False

_DEFAULTS = {
    "template": "howto",
    "context_clips": 2,
    "verbs": None,
    "nouns": None,
    "forecast_step": 1,
    "stable_clips": 2,
    "min_confidence": 0.0,
    "captions": True,
    "hop": None,
    "max_batch": "auto",
    "batch_timeout": 0.01,
    "live_pending_clips": 1,
    "live_in_flight": 2,
    "queue_size": 2,
    "live_max_gap": 1.0,
    "tokenize_mode": "tree",
    "beam": 1,
    "keep_frames": False,
    "source_options": None,
    "backend_options": None,
    "s3d_options": None,
    "videobert_options": None,
    "device_features": "auto",
    "captioning": None,
}

#: Captioning options a source may override (``captioning={source_id: {...}}``).
CAPTIONING_OPTIONS = ("template", "context_clips", "verbs", "nouns", "forecast_step", "stable_clips",
                      "min_confidence")


#: S3D clips per run for ``max_batch="auto"``: a GPU gains from batches; a CPU backend already
#: keeps every core busy on one clip, so a batch only adds activation memory and latency (on a
#: 2-core Xeon, OpenVINO INT8 at 4 live streams: batches of up to 4 peaked at 1,496 MB RSS and a
#: p99 of 1,414 ms, batches of 1 at 1,077 MB and 748 ms, the same throughput; docs/benchmarks.md).
AUTO_MAX_BATCH = {"cpu": 1, "gpu": 4}


def _on_cpu(backend) -> bool:
    """Whether a model backend computes on the CPU: its ``device`` is 'cpu' (ONNX Runtime, OpenVINO)
    or a torch CPU device (torch); TensorRT's is a GPU index."""
    device = getattr(backend, "device", "cpu")
    return str(getattr(device, "type", device)) == "cpu"


def resolve_max_batch(value, backend) -> int:
    """``max_batch`` as a number: "auto" is :data:`AUTO_MAX_BATCH` for the S3D backend's device."""
    if value != "auto":
        return value
    return AUTO_MAX_BATCH["cpu" if _on_cpu(backend) else "gpu"]


def profile_max_batch(value) -> int:
    """``max_batch`` for TensorRT profiles, built before any backend exists: "auto" is the GPU batch."""
    return AUTO_MAX_BATCH["gpu"] if value == "auto" else value


def _check_options(options):
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise InvalidInputError(f"unknown pipeline option(s) {unknown}; known options are "
                                f"{sorted(_DEFAULTS)}")
    merged = {**_DEFAULTS, **options}
    for name in ("max_batch", "live_pending_clips", "live_in_flight", "queue_size"):
        value = merged[name]
        if name == "max_batch" and value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            also = " or 'auto'" if name == "max_batch" else ""
            raise InvalidInputError(f"{name} must be a positive integer{also}, got {value!r}")
    for name in ("batch_timeout", "live_max_gap"):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0 or (name == "live_max_gap" and value == 0):
            raise InvalidInputError(f"{name} must be a {'positive' if name == 'live_max_gap' else 'non-negative'} "
                                    f"number of seconds, got {value!r}")
    if merged["device_features"] not in ("auto", True, False):
        raise InvalidInputError(f"device_features must be 'auto', True or False, got {merged['device_features']!r}")
    for name in ("source_options", "backend_options", "s3d_options", "videobert_options", "captioning"):
        if merged[name] is not None and not isinstance(merged[name], dict):
            raise InvalidInputError(f"{name} must be a dict, got {type(merged[name]).__name__}")
    for source_id, own in (merged["captioning"] or {}).items():
        if not isinstance(own, dict):
            raise InvalidInputError(f"captioning[{source_id!r}] must be a dict of captioning options, got "
                                    f"{type(own).__name__}")
        unknown = sorted(set(own) - set(CAPTIONING_OPTIONS))
        if unknown:
            raise InvalidInputError(f"captioning[{source_id!r}]: unknown option(s) {unknown}; a source may set "
                                    f"{list(CAPTIONING_OPTIONS)}")
    return merged


def _captioner_key(options):
    """What makes two captioners the same (word lists as tuples so the key is hashable)."""
    def frozen(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return (options["template"], options["context_clips"], frozen(options["verbs"]), frozen(options["nouns"]),
            options["forecast_step"])


def pipeline_captioners(vocab, options):
    """The captioners a pipeline with (checked) ``options`` uses: ``(default, {key: captioner},
    {source_id: (captioner, stable_clips, min_confidence)})``.

    One :class:`~vbedge.captioner.Captioner` per distinct option set of ``options`` and of its
    per-source ``captioning`` overrides; building them validates every template, word list and
    hysteresis setting. :func:`vbedge.engines.build_engines` sizes TensorRT profiles from the same
    list, so engines built ahead of time match the pipeline's.
    """
    from .captioner import CaptionStabilizer, Captioner

    def make(merged):
        return Captioner(vocab, template=merged["template"], context_clips=merged["context_clips"],
                         verbs=merged["verbs"], nouns=merged["nouns"], forecast_step=merged["forecast_step"])

    default = make(options)
    # Validated now (a bad value is the caller's error at load, not mid-stream).
    CaptionStabilizer(options["stable_clips"], options["min_confidence"])
    captioners = {_captioner_key(options): default}
    per_source = {}
    for source_id, own in (options["captioning"] or {}).items():
        merged = {name: options[name] for name in CAPTIONING_OPTIONS}
        merged.update(own)
        key = _captioner_key(merged)
        try:
            if key not in captioners:
                captioners[key] = make(merged)
            CaptionStabilizer(merged["stable_clips"], merged["min_confidence"])
        except InvalidInputError as exc:
            raise InvalidInputError(f"captioning of source {str(source_id)!r}: {exc}") from None
        per_source[str(source_id)] = (captioners[key], merged["stable_clips"], merged["min_confidence"])
    return default, captioners, per_source


def _looks_like_frame(item):
    from .sources import Frame

    if isinstance(item, (np.ndarray, Frame)):
        return True
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], np.ndarray)


class Pipeline:
    """Streams sources through S3D, the codebook and VideoBERT. Create with :meth:`load`.

    Use :meth:`stream` (a generator of :class:`ClipEvent`), :meth:`run` (callback form) or
    :meth:`tokenize_video` (offline tokens); :meth:`close` (or ``with``) releases the models.
    """

    def __init__(self, bundle, backend="auto", precision="fp32", trusted_keys=None, **options):
        from .bundle import Bundle
        from .preprocess import PreprocessSpec

        self.options = _check_options(options)
        if isinstance(bundle, Bundle):
            if trusted_keys is not False:
                bundle.require_signed_by(trusted_keys)  # a no-op when no keys are given or configured
            self.bundle = bundle
        else:
            self.bundle = Bundle.load(bundle, trusted_keys=trusted_keys)
        self.backend = backend
        self.precision = precision
        self.spec = PreprocessSpec.from_dict(self.bundle.preprocessing)
        self.codebook = self.bundle.codebook
        self.vocab = self.bundle.vocab
        opts = self.options
        self.captioner, self._captioners, self._source_captioning = pipeline_captioners(self.vocab, opts)
        # Per model: the shared backend options, then that model's own (which win), so S3D's
        # TensorRT profiles never reach VideoBERT.
        self._backend_options = {
            model: {**(opts["backend_options"] or {}), **(opts[f"{model}_options"] or {})}
            for model in ("s3d", "videobert")
        }
        self._s3d = None
        self._videobert = None
        self._model_lock = threading.Lock()
        self._runs = set()
        self._runs_lock = threading.Lock()
        self._closed = False
        self.last_summary = []
        from .device_path import device_path_status

        # Fail at load, not in a thread, when the backend cannot run.
        self.device_features, why = device_path_status(self._s3d_backend(), self.codebook, opts["device_features"])
        if opts["device_features"] is True and not self.device_features:
            raise InvalidInputError(f"device_features=True, but {why}")
        log.info("pipeline: %s", why if self.device_features else f"S3D features go through the host ({why})")

    @classmethod
    def load(cls, bundle, backend="auto", precision="fp32", trusted_keys=None, **options) -> "Pipeline":
        """A pipeline for a bundle (a path or a loaded :class:`~vbedge.bundle.Bundle`).

        Args:
            bundle: the bundle folder or object.
            trusted_keys: public keys the bundle must be signed by (see
                :meth:`vbedge.bundle.Bundle.load`; default: ``VBEDGE_TRUSTED_KEYS`` if set,
                else unauthenticated with a warning). A loaded Bundle must have been verified
                with one of them.
            backend: ``"auto"``, ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"`` (see
                :func:`vbedge.backends.select.create_bundle_backend`).
            precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
            options: captioning: ``template`` ("howto", "caption" or a text with
                ``[VERB]``/``[NOUN]``/``[MASK]``), ``context_clips`` (2), ``verbs``, ``nouns``,
                ``forecast_step`` (1; 0 = off), ``stable_clips`` (2), ``min_confidence`` (0),
                ``captions`` (True; False skips VideoBERT); ``captioning``: per-source
                overrides ``{source_id: {option: value}}`` of the options in
                :data:`CAPTIONING_OPTIONS` (the ids of a dict of sources; one Captioner per
                distinct set, built here, so a bad template fails at load; clips of sources with
                different templates still share one VideoBERT run); clips: ``hop`` (clip length),
                ``live_max_gap`` (1 s); scheduling: ``max_batch`` (clips per S3D run: "auto" = 1 on a
                CPU backend, 4 on a GPU, :data:`AUTO_MAX_BATCH`),
                ``batch_timeout`` (0.01 s to wait for other sources' clips),
                ``live_pending_clips`` (1), ``live_in_flight`` (2), ``queue_size`` (2);
                tokenization: ``tokenize_mode`` ("tree"), ``beam`` (1); ``keep_frames`` (False);
                ``source_options`` (dict for :func:`vbedge.sources.open_source`),
                ``device_features`` ("auto": with a GPU backend and the CUDA tokenizer, S3D
                features stay on the GPU and are tokenized there; True: require it; False: never),
                ``backend_options`` (dict for both models' backends, e.g. ``intra_op_threads``;
                ONNX Runtime's sessions get ``spinning=False`` unless it says otherwise,
                :data:`PIPELINE_ORT_SPINNING`),
                ``s3d_options`` / ``videobert_options`` (dicts for one model, over
                ``backend_options``: e.g. TensorRT ``profiles``; by default TensorRT profiles
                follow ``max_batch``, ``queue_size`` and the captioner, see
                :func:`vbedge.backends.trt_policy.pipeline_limits`).
        """
        return cls(bundle, backend=backend, precision=precision, trusted_keys=trusted_keys, **options)

    # -- models --------------------------------------------------------------------------------

    def _make_backend(self, model):
        from .backends.select import create_bundle_backend

        from .backends.trt_policy import pipeline_limits

        limits = pipeline_limits(profile_max_batch(self.options["max_batch"]), self.options["queue_size"],
                                 list(self._captioners.values()))[model]
        # S3D and VideoBERT run in their own threads beside the decoder: spinning idle ONNX
        # Runtime threads of one model would sit on the cores the other one needs. A default,
        # not an option: a backend other than ONNX Runtime goes without it.
        return create_bundle_backend(self.bundle, model, backend=self.backend, precision=self.precision,
                                     limits=limits, defaults={"spinning": PIPELINE_ORT_SPINNING},
                                     **self._backend_options[model])

    def _s3d_backend(self):
        with self._model_lock:
            if self._s3d is None:
                self._s3d = self._make_backend("s3d")
            return self._s3d

    def _videobert_backend(self):
        # Made on first use: tokenizing videos never needs VideoBERT.
        with self._model_lock:
            if self._videobert is None:
                self._videobert = self._make_backend("videobert")
            return self._videobert

    # -- public API ----------------------------------------------------------------------------

    def stream(self, source, **overrides):
        """Yield one :class:`ClipEvent` per clip of ``source`` until every source has ended.

        Args:
            source: anything :func:`vbedge.sources.open_source` accepts (a path, URI, camera
                index, iterable of frames), a :class:`~vbedge.sources.VideoSource`, a list of
                those (several sources; a list whose first item is a frame is one source of
                frames) or a dict ``{source_id: source}``. Sources opened here are closed here;
                a ``VideoSource`` you pass stays yours to close.
            overrides: ``captions``, ``keep_frames`` for this stream only.

        Raises:
            SourceFailedError: a source ended abnormally (after its earlier clips' events).
            PipelineError: a stage failed.
        """
        unknown = sorted(set(overrides) - {"captions", "keep_frames"})
        if unknown:
            raise InvalidInputError(f"stream() takes only captions= and keep_frames= overrides, "
                                    f"got {unknown}")
        if self._closed:
            raise InvalidInputError("the pipeline is closed")
        return self._events(source, {**self.options, **overrides})

    def run(self, source, on_event, **overrides) -> list:
        """Callback form of :meth:`stream`: call ``on_event(event)`` for each clip.

        Returns the :class:`SourceSummary` list of the stream. An exception raised by
        ``on_event`` stops the stream (cleanly) and propagates.
        """
        if not callable(on_event):
            raise InvalidInputError(f"on_event must be callable, got {type(on_event).__name__}")
        events = self.stream(source, **overrides)
        try:
            for event in events:
                on_event(event)
        finally:
            events.close()
        return self.last_summary

    def tokenize_video(self, path) -> list:
        """``(start, end, leaf)`` for every clip of an offline video (never drops a clip).

        Raises:
            SourceFailedError: the video is truncated or damaged; its ``tokens`` attribute holds
                the clips before the damage.
            InvalidInputError: ``path`` is a live source.
        """
        tokens = []
        source, owned = self._open(path)
        try:
            if source.is_live:
                raise InvalidInputError(f"tokenize_video reads offline videos; {source.description}"
                                        f" is live (use stream() for live sources)")
            try:
                for event in self.stream(source, captions=False, keep_frames=False):
                    tokens.append((event.start, event.end, event.leaf))
            except SourceFailedError as exc:
                exc.tokens = tokens
                raise
        finally:
            if owned:
                source.close()
        return tokens

    def close(self):
        """Stop running streams and release the backends; idempotent."""
        self._closed = True
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.shutdown()
        with self._model_lock:
            for backend in (self._s3d, self._videobert):
                if backend is not None:
                    backend.close()
            self._s3d = self._videobert = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    # -- internals -----------------------------------------------------------------------------

    def _open(self, source):
        from .sources import VideoSource, open_source

        if isinstance(source, VideoSource):
            return source, False
        return open_source(source, **(self.options["source_options"] or {})), True

    def _normalize_sources(self, source):
        if isinstance(source, dict):
            if not source:
                raise InvalidInputError("the dict of sources is empty")
            named = [(str(k), v) for k, v in source.items()]
        elif isinstance(source, list) and source and not _looks_like_frame(source[0]):
            named = [(None, s) for s in source]
        elif isinstance(source, list) and not source:
            raise InvalidInputError("the list of sources is empty")
        else:
            named = [(None, source)]
        return named

    def _events(self, source, options):
        named = self._normalize_sources(source)
        slots, seen = [], set()
        try:
            for name, src in named:
                opened, owned = self._open(src)
                source_id = name or opened.description
                if source_id in seen:
                    source_id = f"{source_id}#{len(slots)}"
                seen.add(source_id)
                slots.append(_Slot(source_id, opened, owned))
        except BaseException:
            for slot in slots:
                if slot.owned:
                    slot.source.close()
            raise
        try:
            run = _Run(self, slots, options)
        except BaseException:
            for slot in slots:
                if slot.owned:
                    slot.source.close()
            raise
        with self._runs_lock:
            self._runs.add(run)
        try:
            yield from run.events()
        finally:
            run.shutdown()
            with self._runs_lock:
                self._runs.discard(run)
            self.last_summary = run.summary()


class _Run:
    """The threads and queues of one :meth:`Pipeline.stream` call."""

    def __init__(self, pipe, slots, options):
        self.pipe = pipe
        self.slots = slots
        self.options = options
        self.stop = threading.Event()
        self.clips = _ClipQueue(self.stop, options["live_pending_clips"], options["queue_size"],
                                options["live_in_flight"])
        self.to_tokenize = _Handoff(self.stop, options["queue_size"])
        self.to_videobert = _Handoff(self.stop, options["queue_size"])
        self.out = _Handoff(self.stop, options["queue_size"])
        self.threads = []
        self._shutdown_lock = threading.Lock()
        self._joined = False
        from .captioner import CaptionStabilizer

        own = pipe._source_captioning
        if options["captions"]:
            unknown = sorted(set(own) - {slot.source_id for slot in slots})
            if unknown:
                raise InvalidInputError(f"captioning options for source(s) {unknown}, which this stream does not "
                                        f"have (its sources: {[slot.source_id for slot in slots]})")
        for slot in slots:
            self.clips.add_slot(slot)
            captioner, stable, min_confidence = own.get(
                slot.source_id, (pipe.captioner, options["stable_clips"], options["min_confidence"]))
            slot.captioner = captioner
            slot.history = collections.deque(maxlen=captioner.context_clips + 1)
            slot.stabilizer = CaptionStabilizer(stable, min_confidence)
        if options["captions"]:
            pipe._videobert_backend()  # fail here, in the consumer's thread, if it cannot load

    # -- lifecycle
    def _start(self):
        def spawn(name, target, *args):
            thread = threading.Thread(target=self._guard, args=(name, target) + args,
                                      name=f"vbedge-{name}", daemon=True)
            self.threads.append(thread)
            thread.start()

        for slot in self.slots:
            spawn(f"capture {slot.source_id}", self._capture, slot)
        spawn("s3d", self._s3d)
        spawn("tokenize", self._tokenize)
        spawn("videobert", self._videobert)

    def _guard(self, stage, target, *args):
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never lost
            if not self.stop.is_set():
                log.error("pipeline stage %s failed: %s: %s", stage, type(exc).__name__, exc)
                self.out.put(_StageError(stage, exc), force=True)

    def shutdown(self):
        """Stop every stage and join the threads (idempotent, callable from any thread)."""
        self.stop.set()
        with self._shutdown_lock:
            if self._joined:
                return
            self._joined = True
            deadline = time.monotonic() + _JOIN_TIMEOUT
            for thread in self.threads:
                if thread is threading.current_thread():
                    continue
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("pipeline thread %s did not stop within %.0f s", thread.name,
                                _JOIN_TIMEOUT)
            for slot in self.slots:
                if slot.owned and not self.threads:
                    slot.source.close()   # never started: nobody else will close it

    def summary(self):
        return [SourceSummary(s.source_id, s.clips, s.delivered, s.dropped, s.dropped_frames(),
                              s.end.reason if s.end else None, bool(s.end and s.end.failed))
                for s in self.slots]

    # -- the consumer side
    def events(self):
        self._start()
        ended = 0
        while ended < len(self.slots):
            items = self.out.get_all(limit=1)
            if not items:
                if self.stop.is_set():
                    return          # Pipeline.close() from another thread
                continue
            item = items[0]
            if isinstance(item, _StageError):
                raise PipelineError(f"pipeline stage {item.stage!r} failed: "
                                    f"{type(item.error).__name__}: {item.error}") from item.error
            if isinstance(item, _End):
                item.slot.end = item
                ended += 1
                if item.failed:
                    raise SourceFailedError(item.slot.source_id, item.reason,
                                            item.slot.delivered)
                continue
            event, work = item
            now = time.monotonic()
            work.dequeued("consumer", now)
            event.latency_ms["total"] = (now - work.t_read) * 1000.0
            work.slot.delivered += 1
            if work.slot.live:
                self.clips.release(work.slot)
            yield event

    # -- stages
    def _capture(self, slot):
        from .clips import ClipAssembler
        from .preprocess import make_clip
        from .sources import SourceEnded

        spec = self.pipe.spec
        assembler = ClipAssembler.from_spec(
            spec, hop=self.options["hop"],
            max_gap=self.options["live_max_gap"] if slot.live else None)
        keep = self.options["keep_frames"]
        reason, failed = None, False

        def emit(clip, t_read, capture_ms):
            t0 = time.monotonic()
            array = make_clip(clip.frames, spec)
            latency = {"capture": capture_ms, "preprocess": (time.monotonic() - t0) * 1000.0}
            if not keep:
                clip.frames = None  # the preprocessed array is all later stages need
            slot.clips += 1
            self.clips.put(slot, _Work(slot, clip, array, t_read, latency,
                                       t_queued=time.monotonic()))

        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    frame = slot.source.read(timeout=_POLL)
                except SourceEnded as end:
                    reason, failed = end.reason, end.failed
                    break
                except Exception as exc:  # noqa: BLE001 - an iterable's error ends this source
                    reason, failed = f"{type(exc).__name__}: {exc}", True
                    break
                if frame is None:
                    continue
                t_read = time.monotonic()
                for clip in assembler.push(frame):
                    emit(clip, t_read, (time.monotonic() - t0) * 1000.0)
            if reason is not None and not self.stop.is_set():
                t_read = time.monotonic()
                for clip in assembler.finish():
                    emit(clip, t_read, 0.0)
        finally:
            if slot.owned:
                slot.source.close()
        if reason is not None:
            self.clips.put_end(slot, _End(slot, reason, failed))

    def _s3d(self):
        backend = self.pipe._s3d_backend()
        max_batch = resolve_max_batch(self.options["max_batch"], backend)
        timeout = self.options["batch_timeout"]
        while not self.stop.is_set():
            items = self.clips.get_batch(max_batch, timeout)
            if not items:
                continue
            work = [w for w in items if isinstance(w, _Work)]
            if work:
                t0 = time.monotonic()
                for w in work:
                    w.dequeued("s3d", t0)
                clips = np.stack([w.array for w in work])
                if self.pipe.device_features:
                    # GPU backend: features stay on the device and are tokenized there, right
                    # away (the backend reuses its output buffers on the next batch).
                    from .device_path import s3d_leaves_on_device

                    leaves, ms = s3d_leaves_on_device(backend, self.pipe.codebook, clips,
                                                      self.options["tokenize_mode"], self.options["beam"])
                    t1 = time.monotonic()
                    for w, leaf in zip(work, leaves):
                        w.leaf, w.array = int(leaf), None
                        w.latency["s3d+tokenize"], w.batch_size = ms, len(work)
                        w.timings["batch"]["s3d"], w.t_queued = len(work), t1
                else:
                    features = backend.run({"clip": clips})["feature"]
                    t1 = time.monotonic()
                    ms = (t1 - t0) * 1000.0
                    for w, feature in zip(work, features):
                        w.feature, w.array = feature, None
                        w.latency["s3d"], w.batch_size = ms, len(work)
                        w.timings["batch"]["s3d"], w.t_queued = len(work), t1
            for item in items:
                if not self.to_tokenize.put(item):
                    return

    def _tokenize(self):
        codebook = self.pipe.codebook
        mode, beam = self.options["tokenize_mode"], self.options["beam"]
        while not self.stop.is_set():
            items = self.to_tokenize.get_all()
            work = [w for w in items if isinstance(w, _Work) and w.feature is not None]
            if work:
                t0 = time.monotonic()
                for w in work:
                    w.dequeued("tokenize", t0)
                leaves = codebook.tokenize(np.stack([w.feature for w in work]).astype(np.float32),
                                           mode=mode, beam=beam)
                t1 = time.monotonic()
                ms = (t1 - t0) * 1000.0
                for w, leaf in zip(work, np.asarray(leaves).tolist()):
                    w.leaf, w.feature = int(leaf), None
                    w.latency["tokenize"] = ms
                    w.timings["batch"]["tokenize"], w.t_queued = len(work), t1
            for item in items:
                if not self.to_videobert.put(item):
                    return

    def _videobert(self):
        pipe = self.pipe
        from .captioner import predict_mixed

        captions = self.options["captions"]
        backend = pipe._videobert_backend() if captions else None
        while not self.stop.is_set():
            items = self.to_videobert.get_all()
            work = [w for w in items if isinstance(w, _Work)]
            results = {}
            t0 = time.monotonic()
            for w in work:
                w.dequeued("videobert", t0)
            if work and captions:
                contexts = []
                for w in work:
                    w.slot.history.append(w.leaf)
                    contexts.append((w.slot.captioner, list(w.slot.history)))
                t0 = time.monotonic()
                # Sources with different templates share one VideoBERT run (rows are padded).
                decoded = predict_mixed(backend, contexts)
                ms = (time.monotonic() - t0) * 1000.0
                for w, result in zip(work, decoded):
                    w.latency["videobert"] = ms
                    w.timings["batch"]["videobert"] = len(work)
                    results[id(w)] = result
            t1 = time.monotonic()
            for item in items:
                if isinstance(item, _Work):
                    item.t_queued = t1
                    item = (self._event(item, results.get(id(item))), item)
                if not self.out.put(item):
                    return

    def _event(self, work, result):
        vocab = self.pipe.vocab
        clip, slot = work.clip, work.slot
        token_id = int(vocab.visual_token_id(work.leaf))
        event = ClipEvent(
            source_id=slot.source_id, clip_index=clip.index, start=clip.start, end=clip.end,
            leaf=work.leaf, token_id=token_id, token=vocab.token_string(token_id),
            latency_ms=work.latency, dropped_clips=slot.dropped,
            dropped_frames=slot.dropped_frames(), s3d_batch_size=work.batch_size,
            padded_frames=clip.padded, timings=work.timings, frames=clip.frames)
        if result is not None:
            shown, changed = slot.stabilizer.update(result.text, result.confidence)
            event.caption, event.caption_changed = shown, changed
            event.clip_caption, event.confidence = result.text, result.confidence
            event.verbs, event.nouns, event.forecast = result.verbs, result.nouns, result.forecast
            event.result = result
        return event
