"""The joint text + visual vocabulary of VideoBERT (:class:`VideoBertVocab`).

Layout (documented in ``docs/vocabulary.md``; stored beside every model so ids never shift)::

    [0, W)                      the lines of the WordPiece vocab.txt, in file order
    W                           the text/video separator "[>]"
    W+1 .. W+num_visual         one visual token per codebook leaf, leaf 0 first

Visual token strings show the leaf's path through the hierarchical codebook, most significant
(top level) branch first, each branch zero-padded to the width of ``branching - 1`` (at least 2
digits) and separated by dots: leaf 1,591 of a 4 x 12 codebook is ``[V:00.11.00.07]``.

This is a runtime module: it needs numpy and ``tokenizers`` only (never torch/transformers).
Text is tokenized by the ``tokenizers`` library's WordPiece model with BERT's normaliser and
pre-tokenizer, so it agrees with Hugging Face's ``BertTokenizerFast`` for the same vocab.txt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .errors import FormatError, InvalidInputError
from .jsonfile import read_json_object

__all__ = ["VideoBertVocab", "SEPARATOR_TOKEN", "BERT_SPECIAL_TOKENS", "VOCAB_FORMAT_VERSION"]

#: Version of ``vocab_layout.json``; bump when the layout rules change.
VOCAB_FORMAT_VERSION = 1
#: The text/video separator of the VideoBERT paper.
SEPARATOR_TOKEN = "[>]"
#: Special tokens a BERT vocab.txt must contain (name -> token string).
BERT_SPECIAL_TOKENS = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}
VOCAB_FILENAME = "vocab.txt"
LAYOUT_FILENAME = "vocab_layout.json"
_LAYOUT_FORMAT_NAME = "vbedge.videobert_vocab"
_VISUAL_RE = re.compile(r"^\[V:(\d+(?:\.\d+)*)\]$")
# Matches the limit of Hugging Face's BertTokenizer, so long "words" become [UNK] the same way.
_MAX_INPUT_CHARS_PER_WORD = 100


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_vocab_bytes(data: bytes, source: str) -> list:
    """Split vocab.txt bytes into tokens the way BERT does (one token per line, in order)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{source}: vocab.txt is not valid UTF-8 ({exc})") from None
    lines = text.split("\n")
    # A final newline is normal; it does not add an (empty) token.
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.rstrip("\r") for line in lines]
    if not tokens:
        raise FormatError(f"{source}: vocab.txt is empty; expected one WordPiece token per line")
    seen = {}
    for i, tok in enumerate(tokens):
        if tok == "":
            raise FormatError(f"{source}: line {i + 1} of vocab.txt is empty; expected one token per line")
        if tok in seen:
            # A duplicate would make two ids map to one string and shift every later id.
            raise FormatError(
                f"{source}: token {tok!r} appears twice in vocab.txt (lines {seen[tok] + 1} and {i + 1})"
            )
        seen[tok] = i
    missing = [t for t in BERT_SPECIAL_TOKENS.values() if t not in seen]
    if missing:
        raise FormatError(
            f"{source}: vocab.txt lacks the BERT special token(s) {missing}; "
            f"expected all of {list(BERT_SPECIAL_TOKENS.values())}"
        )
    if SEPARATOR_TOKEN in seen:
        raise FormatError(
            f"{source}: vocab.txt already contains {SEPARATOR_TOKEN!r} (line {seen[SEPARATOR_TOKEN] + 1}); "
            "VideoBertVocab appends the separator itself"
        )
    bad_visual = [t for t in tokens if _VISUAL_RE.match(t)]
    if bad_visual:
        raise FormatError(
            f"{source}: vocab.txt contains visual-token-like strings {bad_visual[:3]}; "
            "expected a plain WordPiece vocabulary"
        )
    return tokens


def _guess_lowercase(tokens) -> bool:
    """True when the vocabulary has no upper-case word pieces (an uncased BERT vocab)."""
    for tok in tokens:
        if tok.startswith("[") and tok.endswith("]"):
            continue  # special and [unusedN] tokens are upper case in every BERT vocab
        if tok != tok.lower():
            return False
    return True


def _as_int_array(values, what: str):
    """Return (int64 array, was_scalar) or raise InvalidInputError for non-integers."""
    scalar = np.isscalar(values) or (isinstance(values, np.ndarray) and values.ndim == 0)
    if isinstance(values, (bool, np.bool_)):
        raise InvalidInputError(f"{what} must be an integer, got a bool")
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InvalidInputError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False), scalar


class VideoBertVocab:
    """WordPiece + ``[>]`` + one visual token per codebook leaf.

    Build with :meth:`from_wordpiece`; persist with :meth:`save` / :meth:`load`. Ids and
    leaves out of range raise :class:`~vbedge.InvalidInputError`; tampered or mismatched files
    raise :class:`~vbedge.FormatError`.
    """

    def __init__(self, vocab_bytes: bytes, levels: int, branching: int, lowercase=None, source="vocab.txt"):
        """Low-level constructor; prefer :meth:`from_wordpiece` or :meth:`load`."""
        levels, branching = self._check_tree(levels, branching)
        self._vocab_bytes = bytes(vocab_bytes)
        self._tokens = _parse_vocab_bytes(self._vocab_bytes, source)
        self._token_to_id = {t: i for i, t in enumerate(self._tokens)}
        self._levels = levels
        self._branching = branching
        self._num_visual = branching**levels
        if lowercase is None:
            lowercase = _guess_lowercase(self._tokens)
        if not isinstance(lowercase, bool):
            raise InvalidInputError(f"lowercase must be True, False or None (auto), got {lowercase!r}")
        self._lowercase = lowercase
        self._digits = max(2, len(str(branching - 1)))
        self._tokenizer = self._build_tokenizer()

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _check_tree(levels, branching):
        for name, value in (("levels", levels), ("branching", branching)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if levels < 1 or branching < 2:
            raise InvalidInputError(
                f"expected levels >= 1 and branching >= 2, got levels={levels}, branching={branching}"
            )
        if branching**levels > 10_000_000:
            raise InvalidInputError(
                f"levels={levels}, branching={branching} gives {branching**levels} visual tokens; "
                "expected at most 10,000,000"
            )
        return int(levels), int(branching)

    @classmethod
    def from_wordpiece(cls, vocab_txt, num_visual_tokens=None, *, levels=None, branching=None, lowercase=None):
        """Build the vocabulary from a WordPiece ``vocab.txt``.

        Give either ``levels`` and ``branching`` (the codebook tree; ``branching**levels``
        visual tokens) or ``num_visual_tokens`` alone (a flat codebook: one level of that many
        branches), or a consistent combination. ``lowercase=None`` lower-cases text when the
        vocabulary has no upper-case word pieces (bert-*-uncased), as BERT's tokenizer does.
        """
        path = Path(vocab_txt)
        if path.is_dir():
            path = path / VOCAB_FILENAME
        if not path.is_file():
            raise FormatError(f"vocabulary file {str(path)!r} does not exist; expected a WordPiece vocab.txt")
        if levels is None and branching is None:
            if num_visual_tokens is None:
                raise InvalidInputError("give levels and branching, or num_visual_tokens")
            n, _ = _as_int_array(num_visual_tokens, "num_visual_tokens")
            levels, branching = 1, int(n)
        elif levels is None or branching is None:
            raise InvalidInputError(f"give both levels and branching, got levels={levels}, branching={branching}")
        elif num_visual_tokens is not None:
            cls._check_tree(levels, branching)
            if int(num_visual_tokens) != branching**levels:
                raise InvalidInputError(
                    f"num_visual_tokens={num_visual_tokens} conflicts with levels={levels}, "
                    f"branching={branching} (expected {branching**levels})"
                )
        return cls(path.read_bytes(), levels, branching, lowercase=lowercase, source=str(path))

    @classmethod
    def for_codebook(cls, vocab_txt, codebook, lowercase=None):
        """Build the vocabulary for a :class:`~vbedge.HierarchicalCodebook` (one token per leaf)."""
        return cls.from_wordpiece(vocab_txt, levels=int(codebook.levels), branching=int(codebook.branching),
                                  lowercase=lowercase)

    def _build_tokenizer(self):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        vocab = dict(self._token_to_id)
        tok = Tokenizer(
            models.WordPiece(vocab=vocab, unk_token=BERT_SPECIAL_TOKENS["unk"],
                             max_input_chars_per_word=_MAX_INPUT_CHARS_PER_WORD)
        )
        # strip_accents=None follows `lowercase`, exactly like BertTokenizerFast.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=self._lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        # Special tokens typed in text ("how to [MASK] the [MASK]") stay single tokens. "[>]" is
        # not in vocab.txt, so tokenizers appends it at id W, which is exactly our separator id.
        tok.add_special_tokens(list(BERT_SPECIAL_TOKENS.values()) + [SEPARATOR_TOKEN])
        got = tok.token_to_id(SEPARATOR_TOKEN)
        if got != self.separator_id:  # pragma: no cover - would be a tokenizers behaviour change
            raise FormatError(f"tokenizers put {SEPARATOR_TOKEN!r} at id {got}, expected {self.separator_id}")
        return tok

    # ------------------------------------------------------------------ sizes and ids

    @property
    def text_size(self) -> int:
        """Number of WordPiece tokens W (ids ``0 .. W-1``)."""
        return len(self._tokens)

    @property
    def separator_id(self) -> int:
        """Id of ``[>]`` (= ``text_size``)."""
        return len(self._tokens)

    @property
    def visual_offset(self) -> int:
        """Id of the visual token of leaf 0 (= ``text_size + 1``)."""
        return len(self._tokens) + 1

    @property
    def num_visual(self) -> int:
        """Number of visual tokens (= codebook leaves = ``branching ** levels``)."""
        return self._num_visual

    @property
    def size(self) -> int:
        """Total vocabulary size: ``text_size + 1 + num_visual``."""
        return self.visual_offset + self._num_visual

    def __len__(self):
        return self.size

    @property
    def levels(self) -> int:
        """Levels of the codebook tree the visual tokens come from."""
        return self._levels

    @property
    def branching(self) -> int:
        """Branching factor of the codebook tree."""
        return self._branching

    @property
    def lowercase(self) -> bool:
        """Whether text is lower-cased (and accents stripped) before WordPiece."""
        return self._lowercase

    @property
    def vocab_sha256(self) -> str:
        """sha256 of the vocab.txt bytes."""
        return _sha256_bytes(self._vocab_bytes)

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]``."""
        return self._token_to_id["[PAD]"]

    @property
    def unk_id(self) -> int:
        """Id of ``[UNK]``."""
        return self._token_to_id["[UNK]"]

    @property
    def cls_id(self) -> int:
        """Id of ``[CLS]``."""
        return self._token_to_id["[CLS]"]

    @property
    def sep_id(self) -> int:
        """Id of ``[SEP]``."""
        return self._token_to_id["[SEP]"]

    @property
    def mask_id(self) -> int:
        """Id of ``[MASK]``."""
        return self._token_to_id["[MASK]"]

    def _check_ids(self, ids, what="token id"):
        arr, scalar = _as_int_array(ids, what)
        if arr.size and (arr.min() < 0 or arr.max() >= self.size):
            bad = arr[(arr < 0) | (arr >= self.size)].ravel()[0]
            raise InvalidInputError(f"{what} {int(bad)} is out of range; expected 0 <= id < {self.size}")
        return arr, scalar

    def visual_token_id(self, leaf):
        """Token id of codebook leaf ``leaf`` (an int, or an integer array: vectorised)."""
        arr, scalar = _as_int_array(leaf, "leaf")
        if arr.size and (arr.min() < 0 or arr.max() >= self._num_visual):
            bad = arr[(arr < 0) | (arr >= self._num_visual)].ravel()[0]
            raise InvalidInputError(f"leaf {int(bad)} is out of range; expected 0 <= leaf < {self._num_visual}")
        out = arr + self.visual_offset
        return int(out) if scalar else out

    def leaf_of(self, token_id):
        """Codebook leaf of a visual token id (int or integer array); non-visual ids raise."""
        arr, scalar = self._check_ids(token_id)
        if arr.size and arr.min() < self.visual_offset:
            bad = arr[arr < self.visual_offset].ravel()[0]
            raise InvalidInputError(
                f"token id {int(bad)} is not a visual token; expected {self.visual_offset} <= id < {self.size}"
            )
        out = arr - self.visual_offset
        return int(out) if scalar else out

    def is_visual(self, token_id):
        """Whether ``token_id`` is a visual token (bool, or a bool array for array input)."""
        arr, scalar = self._check_ids(token_id)
        out = arr >= self.visual_offset
        return bool(out) if scalar else out

    def is_text(self, token_id):
        """Whether ``token_id`` is a WordPiece token (including BERT's special tokens)."""
        arr, scalar = self._check_ids(token_id)
        out = arr < self.text_size
        return bool(out) if scalar else out

    # ------------------------------------------------------------------ strings

    def leaf_path(self, leaf: int) -> tuple:
        """Branches chosen at each level for ``leaf``, top level first."""
        leaf = int(self.leaf_of(self.visual_token_id(leaf)))
        digits = []
        for _ in range(self._levels):
            leaf, c = divmod(leaf, self._branching)
            digits.append(c)
        return tuple(reversed(digits))

    def visual_token_string(self, leaf: int) -> str:
        """Readable string of a leaf's token, e.g. ``[V:03.11.00.07]``."""
        path = self.leaf_path(leaf)
        return "[V:" + ".".join(f"{c:0{self._digits}d}" for c in path) + "]"

    def token_string(self, token_id: int) -> str:
        """The string of one token id (WordPiece piece, ``[>]`` or ``[V:..]``)."""
        arr, scalar = self._check_ids(token_id)
        if not scalar:
            raise InvalidInputError("token_string takes one id; use decode() or a loop for many")
        i = int(arr)
        if i < self.text_size:
            return self._tokens[i]
        if i == self.separator_id:
            return SEPARATOR_TOKEN
        return self.visual_token_string(i - self.visual_offset)

    def token_to_id(self, token: str) -> int:
        """Inverse of :meth:`token_string`; unknown strings raise InvalidInputError."""
        if not isinstance(token, str):
            raise InvalidInputError(f"token must be a str, got {type(token).__name__}")
        if token in self._token_to_id:
            return self._token_to_id[token]
        if token == SEPARATOR_TOKEN:
            return self.separator_id
        m = _VISUAL_RE.match(token)
        if m:
            parts = m.group(1).split(".")
            if len(parts) != self._levels or any(len(p) != self._digits for p in parts):
                raise InvalidInputError(
                    f"visual token {token!r} does not fit this vocabulary; expected {self._levels} "
                    f"dot-separated {self._digits}-digit branches"
                )
            leaf = 0
            for p in parts:
                c = int(p)
                if c >= self._branching:
                    raise InvalidInputError(f"branch {c} in {token!r} is out of range; expected < {self._branching}")
                leaf = leaf * self._branching + c
            return self.visual_token_id(leaf)
        raise InvalidInputError(f"token {token!r} is not in this vocabulary")

    def encode_text(self, text: str, add_special_tokens: bool = False) -> list:
        """WordPiece ids of ``text`` (lower-cased when the vocabulary is uncased).

        Special tokens written in the text (``[MASK]``, ``[SEP]``, ``[>]``...) stay single
        tokens. ``add_special_tokens=True`` wraps the result in ``[CLS] ... [SEP]``.
        """
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            ids = [self.cls_id] + ids + [self.sep_id]
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``: WordPiece runs are joined back into words; ``[>]`` and visual
        tokens appear as their strings. ``skip_special_tokens`` drops [PAD]/[CLS]/[SEP]/... ."""
        arr, scalar = self._check_ids(ids)
        arr = arr.reshape(-1)
        specials = {self._token_to_id[t] for t in BERT_SPECIAL_TOKENS.values()}
        pieces, run = [], []

        def flush():
            if run:
                text = self._tokenizer.decode(run, skip_special_tokens=False)
                if text:
                    pieces.append(text)
                run.clear()

        for i in arr.tolist():
            if i < self.text_size:
                if skip_special_tokens and i in specials:
                    continue
                run.append(i)
            else:
                flush()
                if not (skip_special_tokens and i == self.separator_id):
                    pieces.append(self.token_string(i))
        flush()
        return " ".join(pieces)

    # ------------------------------------------------------------------ layout and files

    def layout(self) -> dict:
        """JSON-serialisable description of the id layout (stored beside models and bundles)."""
        return {
            "format": _LAYOUT_FORMAT_NAME,
            "format_version": VOCAB_FORMAT_VERSION,
            "wordpiece_size": self.text_size,
            "vocab_sha256": self.vocab_sha256,
            "lowercase": self._lowercase,
            "special_ids": {name: self._token_to_id[tok] for name, tok in BERT_SPECIAL_TOKENS.items()},
            "separator_token": SEPARATOR_TOKEN,
            "separator_id": self.separator_id,
            "visual_offset": self.visual_offset,
            "num_visual_tokens": self._num_visual,
            "levels": self._levels,
            "branching": self._branching,
            "visual_token_digits": self._digits,
            "size": self.size,
        }

    def save(self, directory) -> Path:
        """Write ``vocab.txt`` (byte-identical) and ``vocab_layout.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_FILENAME).write_bytes(self._vocab_bytes)
        with open(directory / LAYOUT_FILENAME, "w", encoding="utf-8") as f:
            json.dump(self.layout(), f, indent=2, sort_keys=True)
            f.write("\n")
        return directory

    @classmethod
    def load(cls, directory) -> "VideoBertVocab":
        """Load what :meth:`save` wrote, verifying the vocab.txt hash and every layout field."""
        directory = Path(directory)
        vocab_path, layout_path = directory / VOCAB_FILENAME, directory / LAYOUT_FILENAME
        for p in (vocab_path, layout_path):
            if not p.is_file():
                raise FormatError(f"{str(p)!r} does not exist; expected a vocabulary saved by VideoBertVocab.save")
        stored = read_json_object(layout_path)
        return cls.from_layout(vocab_path.read_bytes(), stored, source=str(directory))

    @classmethod
    def from_layout(cls, vocab_bytes: bytes, stored: dict, source: str = "vocabulary") -> "VideoBertVocab":
        """Rebuild from vocab.txt bytes and a stored :meth:`layout` dict, verifying both agree."""
        if not isinstance(stored, dict) or stored.get("format") != _LAYOUT_FORMAT_NAME:
            raise FormatError(f"{source}: layout is not a {_LAYOUT_FORMAT_NAME} layout")
        if stored.get("format_version") != VOCAB_FORMAT_VERSION:
            raise FormatError(
                f"{source}: vocabulary layout format_version {stored.get('format_version')!r} is not supported; "
                f"expected {VOCAB_FORMAT_VERSION}"
            )
        digest = _sha256_bytes(vocab_bytes)
        if stored.get("vocab_sha256") != digest:
            raise FormatError(
                f"{source}: vocab.txt sha256 is {digest} but the layout records {stored.get('vocab_sha256')}; "
                "the vocabulary was modified or belongs to another model"
            )
        try:
            vocab = cls(vocab_bytes, stored["levels"], stored["branching"], lowercase=stored["lowercase"],
                        source=source)
        except KeyError as exc:
            raise FormatError(f"{source}: vocabulary layout lacks the field {exc}") from None
        except InvalidInputError as exc:
            raise FormatError(f"{source}: invalid vocabulary layout ({exc})") from None
        expected = vocab.layout()
        diffs = [k for k in sorted(set(expected) | set(stored)) if expected.get(k) != stored.get(k)]
        if diffs:
            detail = ", ".join(f"{k}: stored {stored.get(k)!r}, computed {expected.get(k)!r}" for k in diffs)
            raise FormatError(f"{source}: vocabulary layout does not match vocab.txt ({detail})")
        return vocab

    def check_matches_codebook(self, codebook) -> None:
        """Raise FormatError unless ``codebook`` has exactly one leaf per visual token (same tree)."""
        try:
            levels, branching, leaves = int(codebook.levels), int(codebook.branching), int(codebook.num_leaves)
        except AttributeError as exc:
            raise InvalidInputError(f"expected a HierarchicalCodebook, got {type(codebook).__name__} ({exc})") from None
        if (levels, branching, leaves) != (self._levels, self._branching, self._num_visual):
            raise FormatError(
                f"codebook has levels={levels}, branching={branching} ({leaves} leaves) but the vocabulary "
                f"was built for levels={self._levels}, branching={self._branching} ({self._num_visual} visual tokens)"
            )

    def __eq__(self, other):
        return isinstance(other, VideoBertVocab) and self.layout() == other.layout()

    def __hash__(self):
        return hash((self.vocab_sha256, self._levels, self._branching, self._lowercase))

    def __repr__(self):
        return (
            f"VideoBertVocab(wordpiece={self.text_size}, separator_id={self.separator_id}, "
            f"visual={self._num_visual} ({self._levels}x{self._branching}), size={self.size})"
        )
