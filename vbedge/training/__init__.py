"""Training VideoBERT (``vbedge train``): corpus records, the paper's data and objectives, checkpoints.

- :mod:`vbedge.training.corpus_reader`: the corpus, read strictly through :mod:`vbedge.corpus`;
- :mod:`vbedge.training.data`: text-only, video-only and joint rows as in the paper (NumPy);
- :mod:`vbedge.training.trainer`: :func:`train`, the loop, losses, checkpoints (torch).

Needs torch and transformers (the ``export`` extra) for training itself; ``import vbedge`` never
imports this package. See docs/training.md.
"""

from .corpus_reader import read_corpus

__all__ = ["read_corpus", "train", "TrainOptions", "TrainResult"]


def __getattr__(name):
    # The trainer imports torch lazily, but keep even its module out of a plain `import vbedge.training`.
    if name in ("train", "TrainOptions", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
