"""A procedurally rendered (synthetic) kitchen: videos whose right captions are known.

No trained S3D or VideoBERT can be downloaded here and no narrated cooking videos either, so
this package makes a world where a caption can be judged right or wrong:

- :mod:`vbedge.synthetic.world`: the vocabulary (verbs as motions, nouns as shapes), the recipe
  grammar and :func:`render_world`, which writes mp4 videos and their narration (NumPy + OpenCV,
  no torch);
- :mod:`vbedge.synthetic.pretrain`: supervised pretraining of S3D on a rendered world (torch),
  standing in for the paper's Kinetics pretraining;
- :mod:`vbedge.synthetic.evaluate`: the paper's zero-shot verb/noun evaluation and next-step
  forecasting through the runtime (:class:`vbedge.Pipeline`).

Everything measured on this world is a figure about a synthetic world, and is reported as such.
"""

from .world import HELD_OUT_PAIRS, NOUNS, VERBS, WorldVideo, render_world, sample_recipe

__all__ = ["HELD_OUT_PAIRS", "NOUNS", "VERBS", "WorldVideo", "render_world", "sample_recipe"]
