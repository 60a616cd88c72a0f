"""Visual tokens of video files written as JSON lines, for corpora (``vbedge tokenize``)."""

from __future__ import annotations

import json
import sys

from .errors import VbedgeError

__all__ = ["tokenize_videos"]


def tokenize_videos(pipe, videos, output, progress=True, on_failure=None) -> list:
    """Write one JSON line per clip of every video in ``videos`` to ``output``; return the failures.

    Each line is ``{"video", "start", "end", "leaf", "token"}``. A video that cannot be read or is
    damaged does not stop the others: the clips before the damage are written, and
    ``on_failure(video, reason, clips_kept)`` is called when given. Offline: no clip is dropped.

    Args:
        pipe: an open :class:`~vbedge.pipeline.Pipeline`.
        videos: video file paths.
        output: the ``.jsonl`` file to write (truncated).
        progress: show a progress bar over the videos (on stderr).

    Returns:
        The videos that failed, in order.
    """
    from tqdm import tqdm

    from .pipeline import SourceFailedError

    failed = []
    vocab = pipe.vocab
    with open(output, "w", encoding="utf-8") as out:
        bar = tqdm(videos, unit="video", disable=not progress, file=sys.stderr)
        for video in bar:
            bar.set_postfix_str(str(video)[-40:])
            try:
                tokens = pipe.tokenize_video(video)
                error = None
            except SourceFailedError as exc:
                tokens, error = exc.tokens or [], exc.reason
            except (VbedgeError, OSError) as exc:
                tokens, error = [], str(exc)
            for start, end, leaf in tokens:
                out.write(json.dumps({"video": str(video), "start": round(start, 6),
                                      "end": round(end, 6), "leaf": int(leaf),
                                      "token": vocab.visual_token_string(int(leaf))}) + "\n")
            out.flush()
            if error is not None:
                failed.append(video)
                if on_failure is not None:
                    on_failure(video, error, len(tokens))
    return failed
