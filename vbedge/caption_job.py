"""Caption live sources into outputs: what ``vbedge caption INPUT [OUTPUT ...]`` runs.

::

    from vbedge.caption_job import caption_sources

    result = caption_sources("bundle/", {"cam0": "rtsp://cam0/stream"},
                             ["events.jsonl", "captions.srt", "http://@:8080"])

The order matters for failing fast: the bundle is verified, the sources are opened and every
output is opened (a bad path, a port in use) before the models are loaded. Once captioning runs,
an output that fails is counted, logged once and retried (:class:`vbedge.outputs.OutputSet`);
only the sources ending (or Ctrl-C) stops it, and every output is closed properly either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import InvalidInputError

__all__ = ["CaptionJobResult", "caption_sources", "caption_to_files", "format_event_line"]


def format_event_line(event) -> str:
    """One readable line per event: source (when several), times, token, ``*`` when the caption
    changed, caption."""
    mark = "*" if event.caption_changed else " "
    return (f"[{event.start:8.2f} - {event.end:8.2f}] {event.token} {mark} "
            f"{event.caption or '...'}   (clip: {event.clip_caption})")


@dataclass
class CaptionJobResult:
    """What :func:`caption_sources` did.

    Attributes:
        events: events delivered (all sources).
        sources: :class:`vbedge.pipeline.SourceSummary` per source.
        outputs: :class:`vbedge.outputs.OutputStatus` per output, at the end.
        output_objects: the outputs themselves (e.g. ``VideoFileOutput.parts``).
    """

    events: int
    sources: list
    outputs: list
    output_objects: list


def _normalize_sources(sources):
    if isinstance(sources, dict):
        if not sources:
            raise InvalidInputError("no sources given")
        return [(str(name), spec) for name, spec in sources.items()]
    return [(None, sources)]


def caption_sources(bundle, sources, outputs=(), backend="auto", precision="fp32", trusted_keys=None,
                    source_options=None, per_source_options=None, on_event=None, info=None,
                    **options) -> CaptionJobResult:
    """Caption ``sources`` with the bundle's pipeline into ``outputs``.

    Args:
        bundle: bundle folder or a loaded :class:`vbedge.bundle.Bundle`.
        sources: one source (anything :func:`vbedge.sources.open_source` takes) or a dict
            ``{name: source}``; several sources share one pipeline (S3D batched across them).
        outputs: an :class:`vbedge.outputs.OutputSet`, or a list of targets / outputs for every
            source.
        source_options: options for :func:`vbedge.sources.open_source`, for every source;
            ``on_event`` there is called besides the outputs'.
        per_source_options: ``{name: dict}`` of source options over ``source_options``.
        on_event: called with each event after the outputs got it (e.g. printing).
        info: facts shown by outputs that display them (the preview page).
        options: :meth:`vbedge.pipeline.Pipeline.load` options (``keep_frames`` is set when an
            output draws frames).
    """
    from .bundle import Bundle
    from .outputs import OutputContext, OutputSet, open_output
    from .pipeline import Pipeline
    from .preprocess import PreprocessSpec
    from .sources import open_source

    if isinstance(outputs, OutputSet):
        output_set = outputs
    else:
        output_set = OutputSet()
        for target in outputs:
            output_set.add(open_output(target))
    if "keep_frames" in options:
        raise InvalidInputError("keep_frames is chosen by the outputs (an output that draws frames keeps them)")

    loaded = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, trusted_keys=trusted_keys)
    fps = PreprocessSpec.from_dict(loaded.preprocessing).fps
    named = _normalize_sources(sources)
    unknown = sorted(set(per_source_options or {}) - {str(name) for name, _ in named})
    if unknown:
        raise InvalidInputError(f"per_source_options for unknown source(s) {unknown}")
    opened = {}
    try:
        for name, spec in named:
            own = {**(source_options or {}), **((per_source_options or {}).get(name) or {})}
            user_hook = own.pop("on_event", None)
            # An unnamed source's id is its description, known only once it is open; what it
            # reports before that (a failed first connection) is kept and handed on with the id.
            slot = {"id": name, "early": [], "lock": threading.Lock()}

            def hook(event, slot=slot, user_hook=user_hook):
                with slot["lock"]:
                    if slot["id"] is None:
                        slot["early"].append(event)
                    else:
                        output_set.source_event(slot["id"], event)
                if user_hook is not None:
                    user_hook(event)

            source = open_source(spec, on_event=hook, **own)
            source_id = name or source.description
            if source_id in opened:
                source_id = f"{source_id}#{len(opened)}"
            with slot["lock"]:
                slot["id"] = source_id
                for event in slot.pop("early"):
                    output_set.source_event(source_id, event)
            opened[source_id] = source

        def source_stats(source_id):
            source = opened.get(source_id)
            return None if source is None else source.stats

        context = OutputContext(fps=fps, sources=tuple(opened), source_stats=source_stats,
                                info={"bundle": str(loaded.root), "backend": backend, "precision": precision,
                                      **(info or {})})
        events = 0
        output_set.open(context)
        try:
            with Pipeline.load(loaded, backend=backend, precision=precision, trusted_keys=trusted_keys,
                               keep_frames=output_set.needs_frames, **options) as pipe:
                for event in pipe.stream(opened):
                    output_set.write(event)
                    events += 1
                    if on_event is not None:
                        on_event(event)
                summary = pipe.last_summary
        finally:
            output_set.close()
    finally:
        for source in opened.values():
            source.close()
    return CaptionJobResult(events=events, sources=summary, outputs=output_set.status(),
                            output_objects=output_set.outputs)


def caption_to_files(bundle, source, backend="auto", precision="fp32", jsonl=None, video=None,
                     on_event=None, **options) -> bool:
    """Caption ``source`` into a JSONL file and/or an annotated video; returns whether the video
    was written (``False`` when no clip was captioned, or no ``video`` was asked for).

    Shorthand for :func:`caption_sources` with those two outputs.
    """
    from .outputs.files import JsonlOutput, VideoFileOutput

    outputs = []
    if jsonl is not None:
        outputs.append(JsonlOutput(jsonl))
    if video is not None:
        outputs.append(VideoFileOutput(video))
    result = caption_sources(bundle, source, outputs, backend=backend, precision=precision,
                             on_event=on_event, **options)
    return any(getattr(o, "written", False) for o in result.output_objects)
