"""Zero-shot captioning and forecasting with VideoBERT, in NumPy only (no torch).

As in the VideoBERT paper, a text template with masked slots is joined to a clip's visual tokens
(the current clip plus ``context_clips`` previous ones), text first::

    [CLS] now let me show you how to [MASK] the [MASK] [>] v(t-c) ... v(t) [SEP]

and the masked-LM head fills the slots. Token types are 0 for ``[CLS]`` and the text, 1 from
``[>]`` to the end: the one layout of training, export and captioning, written once in
:mod:`vbedge.sequence_layout` (NumPy only).

Templates mark their slots ``[VERB]``, ``[NOUN]`` or ``[MASK]`` (any word); all three become
``[MASK]`` in the model input. The role decides which word list restricts the slot and whether
its predictions count as the clip's top verbs or nouns.

The exported VideoBERT returns only the top ``k`` WordPiece ids per slot (``k`` is fixed at
export, 10 by default). Those may include tokens that are not words (``[CLS]``, ``[unused3]``,
``##ing``, punctuation, digits); the captioner takes the best *allowed* word among the ``k`` and,
when none qualifies, leaves the slot unfilled (:data:`UNFILLED`) and says why in
:attr:`SlotPrediction.note`.

User word lists (``verbs=``, ``nouns=``) are tokenized with the bundle's WordPiece vocabulary. A
word is matchable only if it is a single WordPiece token ("cut", "onion"); words split into
several pieces ("whisk" -> ``w ##his ##k``) cannot be predicted by one masked slot and are
listed in :attr:`Captioner.unmatchable_words` (and logged).

Forecasting: a second input row ``[CLS] [>] v(t-c) ... v(t) [MASK] x step [SEP]`` (a video-only
row of the same layout, as the video masked-LM is trained on) asks for the visual token ``step``
clips ahead; its ``visual_topk_ids`` at the last mask are the forecast.

Captions on a live feed are stabilised by :class:`CaptionStabilizer` (hysteresis): a new
caption replaces the shown one only after it was predicted for ``stable_clips`` consecutive
clips, each with a confidence of at least ``min_confidence``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .sequence_layout import layout_row, row_length

__all__ = [
    "TEMPLATES",
    "UNFILLED",
    "CaptionResult",
    "CaptionStabilizer",
    "CaptionTemplate",
    "Captioner",
    "Forecast",
    "SlotPrediction",
    "allowed_word_mask",
    "pad_rows",
    "predict_mixed",
]

log = logging.getLogger("vbedge.captioner")

#: Built-in templates (the paper's two), by name.
TEMPLATES = {
    "howto": "now let me show you how to [VERB] the [NOUN]",
    "caption": "now let's [VERB] the [NOUN] to the [NOUN], and then [VERB] the [NOUN]",
}
#: What a slot shows in the caption text when no allowed word is among the top-k.
UNFILLED = "[?]"

_SLOT_RE = re.compile(r"\[(MASK|VERB|NOUN)\]")
_ROLES = {"MASK": "word", "VERB": "verb", "NOUN": "noun"}
# Tokens that are words: letters only (filters punctuation, digits, ##pieces, [specials]).
_WORD_RE = re.compile(r"^[^\W\d_]+$")


def allowed_word_mask(vocab) -> np.ndarray:
    """Boolean mask over the WordPiece ids ``[0, vocab.text_size)``: True for whole words.

    A token is a word when it consists of letters only: this excludes BERT's special tokens
    (``[CLS]``, ``[MASK]``, ``[unused12]``...), continuation pieces (``##ing``), punctuation and
    numbers.
    """
    mask = np.zeros(vocab.text_size, dtype=bool)
    for token_id in range(vocab.text_size):
        mask[token_id] = bool(_WORD_RE.match(vocab.token_string(token_id)))
    return mask


@dataclass(frozen=True)
class CaptionTemplate:
    """A text with ``[VERB]``, ``[NOUN]`` and ``[MASK]`` slots.

    Attributes:
        text: the template as written (with its slot markers).
        roles: one of ``"verb"``, ``"noun"``, ``"word"`` per slot, in order.
    """

    text: str
    roles: tuple

    @classmethod
    def parse(cls, template) -> "CaptionTemplate":
        """A built-in name (``"howto"``, ``"caption"``) or a text with at least one slot."""
        if not isinstance(template, str):
            raise InvalidInputError(f"template must be a str (a name in {sorted(TEMPLATES)} or a "
                                    f"text with [VERB]/[NOUN]/[MASK] slots), got "
                                    f"{type(template).__name__}")
        text = TEMPLATES.get(template, template)
        roles = tuple(_ROLES[m.group(1)] for m in _SLOT_RE.finditer(text))
        if not roles:
            raise InvalidInputError(f"template {template!r} has no slot; expected a name in "
                                    f"{sorted(TEMPLATES)} or a text with [VERB], [NOUN] or [MASK]")
        return cls(text=text, roles=roles)

    @property
    def model_text(self) -> str:
        """The text given to the model: every slot marker becomes ``[MASK]``."""
        return _SLOT_RE.sub("[MASK]", self.text)

    def fill(self, words) -> str:
        """The template with slot ``i`` replaced by ``words[i]`` (``None``: :data:`UNFILLED`)."""
        words = list(words)
        if len(words) != len(self.roles):
            raise InvalidInputError(f"template has {len(self.roles)} slots, got {len(words)} words")
        it = iter(words)
        return _SLOT_RE.sub(lambda _m: (lambda w: UNFILLED if w is None else w)(next(it)),
                            self.text)


@dataclass(frozen=True)
class SlotPrediction:
    """What the model put in one slot.

    Attributes:
        role: ``"verb"``, ``"noun"`` or ``"word"``.
        word: the best allowed word among the top-k, or ``None`` when none qualified.
        score: its masked-LM logit (``nan`` when unfilled).
        confidence: its share of the softmax over the returned top-k logits (0..1; an upper
            bound of the model's probability, which would need all logits).
        candidates: the allowed words among the top-k with their logits, best first.
        note: why the slot is unfilled (``None`` when filled).
    """

    role: str
    word: str | None
    score: float
    confidence: float
    candidates: tuple
    note: str | None = None


@dataclass(frozen=True)
class Forecast:
    """One predicted future visual token.

    Attributes:
        leaf: codebook leaf id.
        token_id: vocabulary id.
        token: its string (``[V:..]``).
        score: masked-LM logit.
    """

    leaf: int
    token_id: int
    token: str
    score: float


@dataclass(frozen=True)
class CaptionResult:
    """The captioner's answer for one clip.

    Attributes:
        text: the filled template.
        slots: one :class:`SlotPrediction` per slot.
        verbs, nouns: ``(word, logit)`` pairs from the verb / noun slots (best score per word,
            best first).
        confidence: the lowest slot confidence (0 when a slot is unfilled).
        forecast: :class:`Forecast` candidates ``forecast_step`` clips ahead, best first
            (empty when forecasting is off).
        alignment: ``sigmoid(alignment_logit)``, the model's probability that template and
            video belong together.
    """

    text: str
    slots: tuple
    verbs: tuple
    nouns: tuple
    confidence: float
    forecast: tuple
    alignment: float


def pad_rows(rows, pad_id=0) -> dict:
    """Stack single-row VideoBERT inputs of different lengths into one batch.

    Each row is a dict of 1-D int64 arrays ``input_ids``, ``token_type_ids`` and
    ``predict_positions``. Shorter sequences are padded with ``pad_id`` and attention 0; shorter
    position lists repeat their last position (the extra outputs are ignored).
    """
    if not rows:
        raise InvalidInputError("pad_rows needs at least one row")
    seq = max(len(r["input_ids"]) for r in rows)
    npos = max(len(r["predict_positions"]) for r in rows)
    batch = len(rows)
    ids = np.full((batch, seq), pad_id, dtype=np.int64)
    mask = np.zeros((batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    positions = np.empty((batch, npos), dtype=np.int64)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[b, :n] = row["input_ids"]
        mask[b, :n] = 1
        types[b, :n] = row["token_type_ids"]
        pos = np.asarray(row["predict_positions"], dtype=np.int64)
        positions[b, :pos.size] = pos
        positions[b, pos.size:] = pos[-1]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "predict_positions": positions}


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Captioner:
    """Builds VideoBERT inputs for captioning/forecasting and decodes the outputs.

    Args:
        vocab: the bundle's :class:`~vbedge.vocab.VideoBertVocab`.
        template: a name in :data:`TEMPLATES` or a text with ``[VERB]``/``[NOUN]``/``[MASK]``.
        context_clips: previous clips whose visual tokens precede the current one (0: only the
            current clip).
        verbs, nouns: optional word lists restricting the verb / noun slots (single-WordPiece
            words only; see the module docstring).
        forecast_step: predict the visual token this many clips ahead (0: no forecast).
        max_sequence: the model's longest input (512 for BERT).
    """

    def __init__(self, vocab, template="howto", context_clips=2, verbs=None, nouns=None,
                 forecast_step=1, max_sequence=512):
        self.vocab = vocab
        self.template = CaptionTemplate.parse(template)
        self.context_clips = _positive_int("context_clips", context_clips, minimum=0)
        self.forecast_step = _positive_int("forecast_step", forecast_step, minimum=0)
        self._word_mask = allowed_word_mask(vocab)
        self.unmatchable_words = []
        self._restrict = {"verb": self._word_set("verbs", verbs),
                          "noun": self._word_set("nouns", nouns), "word": None}
        self._text_ids = np.asarray(vocab.encode_text(self.template.model_text), dtype=np.int64)
        self._slot_offsets = np.flatnonzero(self._text_ids == vocab.mask_id)
        if self._slot_offsets.size != len(self.template.roles):
            raise InvalidInputError(
                f"template {self.template.text!r} has {len(self.template.roles)} slots but its "
                f"text tokenizes to {self._slot_offsets.size} [MASK] tokens; write slots only "
                f"as [VERB], [NOUN] or [MASK]")
        longest = row_length(self._text_ids.size, self.context_clips + 1)
        longest_forecast = row_length(0, self.context_clips + 1 + self.forecast_step)
        #: Tokens in the longest row :meth:`build_batch` makes (bounds a TensorRT profile).
        self.max_sequence_length = max(longest, longest_forecast if self.forecast_step else 0)
        if max(longest, longest_forecast) > max_sequence:
            raise InvalidInputError(f"caption inputs would have {max(longest, longest_forecast)} "
                                    f"tokens; the model takes at most {max_sequence}: shorten "
                                    f"the template, context_clips or forecast_step")

    def _word_set(self, name, words):
        """Token ids of the matchable words of a user list (None: no restriction)."""
        if words is None:
            return None
        if isinstance(words, str):
            words = [w for w in re.split(r"[,\s]+", words) if w]
        try:
            words = list(words)
        except TypeError:
            raise InvalidInputError(f"{name} must be a list of words, got "
                                    f"{type(words).__name__}") from None
        ids = set()
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise InvalidInputError(f"{name} must contain non-empty strings, got {word!r}")
            pieces = self.vocab.encode_text(word.strip())
            if len(pieces) == 1 and self._word_mask[pieces[0]]:
                ids.add(int(pieces[0]))
            else:
                self.unmatchable_words.append(word)
                log.warning("%s: %r is %d WordPiece tokens (%s); only single-token words can "
                            "fill a slot, so it is ignored", name, word, len(pieces),
                            " ".join(self.vocab.token_string(p) for p in pieces))
        if not ids:
            raise InvalidInputError(f"none of the {name} {words!r} is a single WordPiece word of "
                                    f"the bundle's vocabulary, so no slot could match them")
        return frozenset(ids)

    # -- inputs --------------------------------------------------------------------------------

    def _visual_ids(self, leaves):
        leaves = np.atleast_1d(np.asarray(leaves))
        if leaves.ndim != 1 or leaves.size == 0:
            raise InvalidInputError(f"leaves must be a non-empty 1-D list of leaf ids, got shape "
                                    f"{leaves.shape}")
        return np.asarray(self.vocab.visual_token_id(leaves), dtype=np.int64).reshape(-1)

    def caption_row(self, leaves) -> dict:
        """``[CLS] template [>] visual [SEP]`` for ``leaves`` (oldest first, current last)."""
        row = layout_row(self.vocab, self._text_ids, self._visual_ids(leaves))
        positions = (row.text_start + self._slot_offsets).astype(np.int64)
        return {"input_ids": row.input_ids, "token_type_ids": row.token_type_ids,
                "predict_positions": positions}

    def forecast_row(self, leaves) -> dict:
        """``[CLS] [>] visual [MASK] x forecast_step [SEP]``; predicts at the last mask."""
        if self.forecast_step == 0:
            raise InvalidInputError("forecasting is off (forecast_step=0)")
        v = self.vocab
        visual = np.concatenate([self._visual_ids(leaves), np.full(self.forecast_step, v.mask_id)])
        row = layout_row(v, (), visual)
        return {"input_ids": row.input_ids, "token_type_ids": row.token_type_ids,
                "predict_positions": np.array([row.visual_end - 1], dtype=np.int64)}

    def build_batch(self, contexts) -> dict:
        """One VideoBERT batch for several clips' leaf contexts.

        Rows are ``caption_row(c)`` for every context, then (with forecasting) ``forecast_row(c)``
        for every context.
        """
        contexts = list(contexts)
        rows = [self.caption_row(c) for c in contexts]
        if self.forecast_step:
            rows += [self.forecast_row(c) for c in contexts]
        return pad_rows(rows, pad_id=self.vocab.pad_id)

    # -- decoding ------------------------------------------------------------------------------

    def decode_slot(self, role, ids, scores) -> SlotPrediction:
        """The best allowed word among one slot's top-k ``ids`` / ``scores``."""
        ids = np.asarray(ids).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        shifted = np.exp(scores - scores.max()) if scores.size else scores
        shares = shifted / shifted.sum() if scores.size else shifted
        restrict = self._restrict[role]
        candidates = []
        best = None
        for i, (token_id, score) in enumerate(zip(ids.tolist(), scores.tolist())):
            if not (0 <= token_id < self.vocab.text_size) or not self._word_mask[token_id]:
                continue
            if restrict is not None and token_id not in restrict:
                continue
            candidates.append((self.vocab.token_string(token_id), float(score)))
            if best is None:
                best = i
        if best is None:
            seen = ", ".join(repr(self.vocab.token_string(int(t))) for t in ids
                             if 0 <= t < self.vocab.size)
            what = f"{role} from the user's list" if restrict is not None else "word"
            note = (f"none of the top-{ids.size} predictions ({seen}) is an allowed {what}; a "
                    f"bundle exported with a larger top_k gives more candidates")
            return SlotPrediction(role, None, math.nan, 0.0, tuple(candidates), note)
        return SlotPrediction(role, candidates[0][0], candidates[0][1], float(shares[best]),
                              tuple(candidates))

    def decode(self, outputs, count) -> list:
        """:class:`CaptionResult` for each of ``count`` contexts of a :meth:`build_batch` run."""
        text_ids, text_scores = outputs["text_topk_ids"], outputs["text_topk_scores"]
        alignment = np.asarray(outputs["alignment_logit"], dtype=np.float64)
        results = []
        for b in range(count):
            slots = tuple(self.decode_slot(role, text_ids[b, j], text_scores[b, j])
                          for j, role in enumerate(self.template.roles))
            forecast = ()
            if self.forecast_step:
                row = count + b
                forecast = tuple(
                    Forecast(int(self.vocab.leaf_of(int(t))), int(t), self.vocab.token_string(int(t)),
                             float(s))
                    for t, s in zip(outputs["visual_topk_ids"][row, 0].tolist(),
                                    outputs["visual_topk_scores"][row, 0].tolist()))
            confidence = min((s.confidence for s in slots), default=0.0)
            results.append(CaptionResult(
                text=self.template.fill(s.word for s in slots),
                slots=slots,
                verbs=_merge(slots, "verb"),
                nouns=_merge(slots, "noun"),
                confidence=float(confidence),
                forecast=forecast,
                alignment=float(1.0 / (1.0 + math.exp(-alignment[b]))),
            ))
        return results

    def predict(self, backend, contexts) -> list:
        """Run ``backend`` (the bundle's VideoBERT) on leaf contexts; return their results."""
        contexts = list(contexts)
        return self.decode(backend.run(self.build_batch(contexts)), len(contexts))


def predict_mixed(backend, pairs) -> list:
    """Caption ``(captioner, leaves)`` pairs whose captioners may differ, in one backend run.

    Each captioner builds its own rows (its template, context, forecast) and decodes its own
    outputs (its word lists); the rows of all of them are padded into one batch, as
    :meth:`Captioner.predict` pads rows of different lengths. Returns one
    :class:`CaptionResult` per pair, in order. With a single captioner this is exactly
    :meth:`Captioner.predict`.
    """
    pairs = list(pairs)
    groups = {}
    for index, (captioner, leaves) in enumerate(pairs):
        groups.setdefault(id(captioner), (captioner, []))[1].append(index)
    if len(groups) <= 1:
        if not pairs:
            return []
        captioner = pairs[0][0]
        return captioner.predict(backend, [leaves for _, leaves in pairs])
    rows, spans = [], []
    for captioner, indices in groups.values():
        contexts = [pairs[i][1] for i in indices]
        first = len(rows)
        rows += [captioner.caption_row(c) for c in contexts]
        if captioner.forecast_step:
            rows += [captioner.forecast_row(c) for c in contexts]
        spans.append((captioner, indices, np.arange(first, len(rows))))
    vocabularies = {id(captioner.vocab) for captioner, _, _ in spans}
    if len(vocabularies) != 1:
        raise InvalidInputError("predict_mixed needs captioners of one vocabulary (one bundle)")
    outputs = backend.run(pad_rows(rows, pad_id=spans[0][0].vocab.pad_id))
    results = [None] * len(pairs)
    for captioner, indices, row_ids in spans:
        # The group's rows in the layout decode() expects: its caption rows, then its forecast rows.
        own = {name: np.asarray(value)[row_ids] for name, value in outputs.items()}
        for index, result in zip(indices, captioner.decode(own, len(indices))):
            results[index] = result
    return results


def _merge(slots, role):
    best = {}
    for slot in slots:
        if slot.role != role:
            continue
        for word, score in slot.candidates:
            if word not in best or score > best[word]:
                best[word] = score
    return tuple(sorted(best.items(), key=lambda item: -item[1]))


class CaptionStabilizer:
    """Hysteresis for live captions: show a new caption only once it is stable.

    The shown caption changes to a new prediction after that same prediction came
    ``stable_clips`` clips in a row, each with ``confidence >= min_confidence``. A clip with a
    different or low-confidence prediction restarts the count. The first caption needs the same
    evidence.

    Args:
        stable_clips: consecutive clips a new caption must be predicted for (1: every change is
            shown at once).
        min_confidence: lowest :attr:`CaptionResult.confidence` that counts towards a change.
    """

    def __init__(self, stable_clips=2, min_confidence=0.0):
        self.stable_clips = _positive_int("stable_clips", stable_clips)
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
                or not 0.0 <= min_confidence <= 1.0:
            raise InvalidInputError(f"min_confidence must be a number in [0, 1], got "
                                    f"{min_confidence!r}")
        self.min_confidence = float(min_confidence)
        self.current = None
        self._candidate = None
        self._count = 0

    def update(self, text, confidence) -> tuple:
        """Feed one clip's prediction; return ``(shown caption or None, changed)``."""
        if text == self.current:
            self._candidate, self._count = None, 0
            return self.current, False
        if confidence < self.min_confidence:
            self._candidate, self._count = None, 0
            return self.current, False
        if text == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = text, 1
        if self._count >= self.stable_clips:
            self.current = text
            self._candidate, self._count = None, 0
            return self.current, True
        return self.current, False
