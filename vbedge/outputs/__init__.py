"""Where caption events go while ``vbedge caption`` runs, each output chosen by its URI or extension.

::

    from vbedge.outputs import OutputSet, open_output

    outputs = OutputSet()
    for target in ("events.jsonl", "out.mp4"):
        outputs.add(open_output(target))

then :func:`vbedge.caption_job.caption_sources` runs a pipeline into them. An output that fails
never stops captioning (see :class:`OutputSet`). The kinds are registered by the modules imported
below; :func:`output_kinds` lists them.
"""

from .base import Output, OutputContext, OutputSet, OutputStatus, open_output, output_kinds, register_output
from . import files  # noqa: F401  (registers .jsonl, .mp4, .avi)
from . import subtitles  # noqa: F401  (registers .srt, .vtt)
from . import mqtt  # noqa: F401  (registers mqtt://, mqtts://)
from . import preview  # noqa: F401  (registers http://@:PORT, the live preview page)
from . import rtsp  # noqa: F401  (registers rtsp://@:PORT/NAME)

__all__ = ["Output", "OutputContext", "OutputSet", "OutputStatus", "open_output", "output_kinds",
           "register_output"]
