"""``vbedge train``: the VideoBERT paper's objectives over a corpus, with resumable checkpoints.

One step draws ``batch_size`` rows (text-only, video-only and joint rows in the proportions of
``mix``, :mod:`vbedge.training.data`), runs them through the encoder in one padded batch and
minimises the weighted sum

    text_mlm_weight * text_mlm + video_mlm_weight * video_mlm
        + joint_mlm_weight * joint_mlm + alignment_weight * alignment

where each masked-LM loss is the cross-entropy of the (tied, joint-vocabulary) masked-LM head at
the masked positions of its rows, and ``alignment`` the cross-entropy of the [CLS] alignment
head (BERT's next-sentence head: index 0 aligned, 1 not) over the joint rows.

Output folder ``OUT``::

    checkpoint/            the latest checkpoint: a VideoBert.save folder (what `vbedge export
                           videobert --checkpoint` and `vbedge build --videobert` take) plus
                           training.json (step, options, sampler and RNG state) and
                           training_state.pt (optimizer, scheduler, torch RNG; tensors only)
    model/                 the final model (VideoBert.save), written when the last step is done
    train_log.jsonl        one line per logged step {"split": "train", "step", "text_mlm", ...}
                           and per evaluation {"split": "held_out", "step", ..., "alignment_accuracy"}

Determinism: everything random comes from ``seed`` (a NumPy generator for the data, torch's
generator for dropout and new weights), and a checkpoint stores both generators' states and
where each row sampler stands, so ``--resume`` continues exactly as an uninterrupted run would
(same thread count and device).

Needs torch and transformers (the ``export`` extra); never imported by ``import vbedge``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vbedge.errors import FormatError, InvalidInputError, MissingDependencyError
from vbedge.jsonfile import read_json_object

from .corpus_reader import corpus_sha256, read_corpus
from .data import IGNORE, KINDS, ExampleBuilder, encode_videos

log = logging.getLogger(__name__)

__all__ = ["TrainOptions", "TrainResult", "OBJECTIVES", "train", "checkpoint_options", "compute_losses",
           "split_held_out",
           "TRAINING_STATE_VERSION"]

#: The objectives, by the names the log and the weights use.
OBJECTIVES = ("text_mlm", "video_mlm", "joint_mlm", "alignment")
TRAINING_STATE_VERSION = 1
_STATE_JSON = "training.json"
_STATE_PT = "training_state.pt"
_LOG = "train_log.jsonl"
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainOptions:
    """Everything that shapes a training run (stored in each checkpoint; a resume must match).

    Attributes:
        steps: optimizer steps in the whole run.
        batch_size: sequences per step (all kinds together).
        lr: peak learning rate (AdamW), reached after ``warmup`` of the steps, then linear to 0.
        warmup: fraction of ``steps`` spent warming up linearly from 0.
        weight_decay: AdamW weight decay (not on biases and LayerNorm weights).
        max_grad_norm: gradient clipping (0: off).
        max_length: longest sequence in tokens.
        max_concat: most neighbouring sentences joined into one long sentence.
        max_subsample: highest random visual subsampling rate (the paper: 5).
        mask_prob: BERT's masking probability.
        label_smoothing: label smoothing of the masked-LM cross-entropy in training (0: none; the
            held-out losses are always the plain cross-entropy). Measured on the demo's world
            (docs/synthetic.md): no better on a fresh held-out world, so the demo leaves it off.
        text_mlm, video_mlm, joint_mlm, alignment: the objectives' weights (0 turns one off).
        mix: relative numbers of text-only, video-only and joint rows per step.
        held_out: fraction of the videos kept out of training for evaluation.
        eval_every: evaluate on the held-out videos every this many steps (0: only at the end).
        eval_batches: held-out batches per evaluation (the same batches every time).
        log_every: write a train line to train_log.jsonl every this many steps.
        save_every: write the checkpoint every this many steps (and always at the end).
        seed: the one seed of the run.
        precision: ``auto`` (fp32 on CPU, bf16 autocast on a GPU that has it, else fp16), or
            ``fp32`` / ``bf16`` / ``fp16`` (fp16: CUDA only, with loss scaling).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_concat: int = 3
    max_subsample: int = 5
    mask_prob: float = 0.15
    label_smoothing: float = 0.0
    text_mlm: float = 1.0
    video_mlm: float = 1.0
    joint_mlm: float = 1.0
    alignment: float = 1.0
    mix: tuple = (1, 1, 2)
    held_out: float = 0.1
    eval_every: int = 100
    eval_batches: int = 4
    log_every: int = 10
    save_every: int = 500
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self):
        self.mix = tuple(float(m) for m in self.mix)
        ints = ("steps", "batch_size", "max_length", "max_concat", "max_subsample", "eval_every",
                "eval_batches", "log_every", "save_every", "seed")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"{name} must be an integer, got {value!r}")
        for name, low in (("steps", 1), ("batch_size", 1), ("max_concat", 1), ("max_subsample", 1),
                          ("eval_batches", 1), ("log_every", 1), ("save_every", 1), ("eval_every", 0)):
            if getattr(self, name) < low:
                raise InvalidInputError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_length < 8:
            raise InvalidInputError(f"max_length must be >= 8, got {self.max_length}")
        for name in (*OBJECTIVES, "lr", "weight_decay", "max_grad_norm"):
            if not float(getattr(self, name)) >= 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not any(float(getattr(self, name)) > 0 for name in OBJECTIVES):
            raise InvalidInputError("every objective weight is 0; give at least one positive weight")
        if len(self.mix) != 3 or any(m < 0 for m in self.mix) or sum(self.mix) <= 0:
            raise InvalidInputError(f"mix must be three non-negative numbers (text, video, joint rows) "
                                    f"with a positive sum, got {self.mix}")
        if not 0.0 <= self.warmup < 1.0:
            raise InvalidInputError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0.0 <= self.held_out < 1.0:
            raise InvalidInputError(f"held_out must be a fraction in [0, 1), got {self.held_out}")
        if not 0.0 < self.mask_prob < 1.0:
            raise InvalidInputError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InvalidInputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in _PRECISIONS:
            raise InvalidInputError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        """JSON-ready options."""
        d = dataclasses.asdict(self)
        d["mix"] = list(self.mix)
        return d

    @classmethod
    def from_dict(cls, d) -> "TrainOptions":
        """Options from :meth:`to_dict` output; unknown keys raise FormatError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FormatError(f"unknown training options {unknown}; expected some of {sorted(names)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What a :func:`train` call did.

    Attributes:
        step: the last completed step.
        finished: whether ``step == options.steps`` (then ``model_dir`` holds the final model).
        losses: the last step's losses by objective name (and ``loss``, the weighted sum).
        held_out: the last held-out evaluation (losses and ``alignment_accuracy``), or None.
        sequences_per_second: training throughput of this call (excluding evaluation and saving).
        checkpoint_dir, model_dir: where the checkpoint and the final model are.
        log_path: the train_log.jsonl.
        options: the run's :class:`TrainOptions`.
        info: what the run was started from, the split, the device and precision.
    """

    step: int
    finished: bool
    losses: dict
    held_out: dict | None
    sequences_per_second: float
    checkpoint_dir: Path
    model_dir: Path | None
    log_path: Path
    options: TrainOptions
    info: dict = field(default_factory=dict)


def _require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"vbedge train needs torch and transformers; install vbedge[export] "
                                     f"({exc})") from exc


def split_held_out(count: int, fraction: float, seed: int):
    """(training indices, held-out indices) of ``count`` videos: ``round(count * fraction)`` held
    out (at least one when ``fraction > 0`` and ``count >= 2``), chosen with ``seed``."""
    if fraction <= 0 or count < 2:
        return list(range(count)), []
    held = min(count - 1, max(1, int(round(count * fraction))))
    order = np.random.default_rng([int(seed), 7]).permutation(count)
    held_set = set(order[:held].tolist())
    return [i for i in range(count) if i not in held_set], sorted(held_set)


def _row_counts(options, builder):
    """Rows of each kind per step: ``mix`` over the kinds that are active and buildable."""
    weights = {"text": options.text_mlm, "video": options.video_mlm,
               "joint": max(options.joint_mlm, options.alignment)}
    shares = []
    for kind, share in zip(KINDS, options.mix):
        active = share > 0 and weights[kind] > 0 and builder.can_build(kind)
        shares.append(share if active else 0.0)
    total = sum(shares)
    if total <= 0:
        raise InvalidInputError("no objective can be trained: the weighted kinds of rows (mix) need text, "
                                "visual tokens, or (for joint rows) sentences in at least two videos")
    exact = [options.batch_size * s / total for s in shares]
    counts = [int(np.floor(e)) for e in exact]
    # Largest remainder, so the counts add up to batch_size.
    for i in sorted(range(3), key=lambda i: -(exact[i] - counts[i]))[: options.batch_size - sum(counts)]:
        counts[i] += 1
    return dict(zip(KINDS, counts))


class _Sampler:
    """Walks each kind's videos in a fresh seeded permutation per epoch; its state is 3 counters."""

    def __init__(self, builder, seed, positions=None):
        self.pools = {"text": builder.text_videos, "video": builder.video_videos, "joint": builder.joint_videos}
        self.seed = int(seed)
        self.positions = dict(positions or {k: 0 for k in KINDS})
        self._cache = {}

    def _order(self, kind, epoch):
        key = (kind, epoch)
        if key not in self._cache:
            pool = self.pools[kind]
            perm = np.random.default_rng([self.seed, KINDS.index(kind), epoch]).permutation(len(pool))
            self._cache = {key: [pool[i] for i in perm]}
        return self._cache[key]

    def take(self, kind, count):
        out = []
        for _ in range(count):
            p = self.positions[kind]
            n = len(self.pools[kind])
            out.append((kind, self._order(kind, p // n)[p % n]))
            self.positions[kind] = p + 1
        return out


def _to_torch(batch, device):
    import torch

    return {name: torch.from_numpy(getattr(batch, name)).to(device) for name in
            ("input_ids", "attention_mask", "token_type_ids", "labels", "kinds", "alignment")}


def compute_losses(model, t, label_smoothing=0.0):
    """Each objective's loss on one batch (torch tensors of :class:`~vbedge.training.data.Batch`).

    ``label_smoothing`` smooths the masked-LM targets (:attr:`TrainOptions.label_smoothing`); the
    alignment loss is never smoothed.

    Returns ``(losses, stats)``: ``losses`` maps the objectives present in the batch to scalar
    tensors; ``stats`` holds ``alignment_correct`` / ``alignment_rows`` (ints) and the number of
    masked positions of each masked-LM objective.
    """
    import torch
    import torch.nn.functional as F

    out = model.bert(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                     token_type_ids=t["token_type_ids"])
    labels = t["labels"]
    picked = labels != IGNORE
    losses, stats = {}, {}
    if picked.any():
        # The head only at masked positions: the full (rows, length, vocab) logits would be ~7x the work.
        logits = model.cls.predictions(out.last_hidden_state[picked]).float()
        ce = F.cross_entropy(logits, labels[picked], reduction="none", label_smoothing=float(label_smoothing))
        row_kind = t["kinds"][:, None].expand_as(labels)[picked]
        for index, name in enumerate(("text_mlm", "video_mlm", "joint_mlm")):
            sel = row_kind == index
            count = int(sel.sum())
            if count:
                losses[name] = ce[sel].mean()
                stats[name + "_positions"] = count
    joint = t["alignment"] != IGNORE
    if joint.any():
        nsp = model.cls.seq_relationship(out.pooler_output[joint]).float()
        target = t["alignment"][joint]
        losses["alignment"] = F.cross_entropy(nsp, target)
        with torch.no_grad():
            stats["alignment_correct"] = int((nsp.argmax(-1) == target).sum())
            stats["alignment_rows"] = int(target.numel())
    return losses, stats


def _weighted(losses, options):
    total = None
    for name, value in losses.items():
        w = float(getattr(options, name))
        if w > 0:
            total = value * w if total is None else total + value * w
    return total


def _resolve_device(device):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for CUDA, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be cpu, cuda[:N] or auto, got {device!r}")
    return dev


def _resolve_precision(precision, device):
    import torch

    if precision == "auto":
        if device.type == "cpu":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise InvalidInputError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return precision


def _autocast(device, precision):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _optimizer(model, options):
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": options.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is ~5x faster than the default per-tensor loop on the CPU (the joint
    # vocabulary's embedding matrix alone is ~20M parameters at MiniLM size).
    return torch.optim.AdamW(groups, lr=options.lr, fused=True)


def _scheduler(optimizer, options):
    import torch

    warm = int(round(options.steps * options.warmup))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (options.steps - step) / max(1, options.steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _python_state_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_json(data):
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


def _numpy_global_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_global_state(data):
    name, keys, pos, has_gauss, cached = data
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _load_codebook(codebook):
    from vbedge.codebook import HierarchicalCodebook

    if isinstance(codebook, (str, os.PathLike)):
        return HierarchicalCodebook.load(codebook)
    if not hasattr(codebook, "num_leaves"):
        raise InvalidInputError(f"codebook must be a HierarchicalCodebook or a path to one, got "
                                f"{type(codebook).__name__}")
    return codebook


def _initial_model(codebook, bert, size, vocab_file, seed):
    from vbedge.models.videobert import VideoBert

    if (bert is None) == (size is None):
        raise InvalidInputError("give exactly one starting point: a Hugging Face BERT folder (bert) or a "
                                "model size for training from scratch (size)")
    if bert is not None:
        if vocab_file is not None:
            raise InvalidInputError("a vocabulary is taken from the BERT folder; give vocab only with size")
        return VideoBert.from_bert(bert, codebook, seed=seed)
    if vocab_file is None:
        raise InvalidInputError("training from scratch (size) needs a WordPiece vocab.txt (vocab)")
    return VideoBert.from_config(size, vocab_file, codebook, seed=seed)


def _read_checkpoint_state(directory):
    path = Path(directory) / _STATE_JSON
    if not path.is_file():
        raise FormatError(f"{str(directory)!r} has no {_STATE_JSON}; expected a checkpoint written by vbedge train")
    state = read_json_object(path)
    if state.get("format_version") != TRAINING_STATE_VERSION:
        raise FormatError(f"{str(path)!r} has format_version {state.get('format_version')!r}; "
                          f"expected {TRAINING_STATE_VERSION}")
    return state


def checkpoint_options(out) -> TrainOptions:
    """The :class:`TrainOptions` of the checkpoint in ``out`` (what ``resume`` will use)."""
    ckpt = _find_checkpoint(Path(out))
    if ckpt is None:
        raise InvalidInputError(f"nothing to resume: {str(Path(out) / 'checkpoint')!r} holds no checkpoint")
    return TrainOptions.from_dict(_read_checkpoint_state(ckpt)["options"])


def _find_checkpoint(out):
    current = out / "checkpoint"
    if (current / _STATE_JSON).is_file():
        return current
    # A crash between the two renames of _save_checkpoint leaves the previous one here.
    old = out / ".checkpoint-old"
    if (old / _STATE_JSON).is_file():
        return old
    return None


def _save_checkpoint(out, videobert, optimizer, scheduler, scaler, state):
    import torch

    new, old, current = out / ".checkpoint-new", out / ".checkpoint-old", out / "checkpoint"
    shutil.rmtree(new, ignore_errors=True)
    videobert.save(new)
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng}, new / _STATE_PT)
    with open(new / _STATE_JSON, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    # Swap by renames so an interrupted save never leaves only half a checkpoint.
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        os.replace(current, old)
    os.replace(new, current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def _truncate_log(path, step):
    """Drop log lines after ``step`` (what the interrupted run logged after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue  # a half-written last line of a killed run
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(keep)


def _evaluate(model, batches, device, precision):
    import torch

    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name in OBJECTIVES}
    weights = {name: 0 for name in OBJECTIVES}
    correct = rows = 0
    with torch.no_grad(), _autocast(device, precision):
        for batch in batches:
            losses, stats = compute_losses(model, _to_torch(batch, device))
            for name, value in losses.items():
                # Weighted by positions (rows for alignment) so the mean is over the whole held-out set.
                n = stats.get(name + "_positions", stats.get("alignment_rows", 1))
                sums[name] += float(value) * n
                weights[name] += n
            correct += stats.get("alignment_correct", 0)
            rows += stats.get("alignment_rows", 0)
    model.train(was_training)
    result = {name: sums[name] / weights[name] for name in OBJECTIVES if weights[name]}
    if rows:
        result["alignment_accuracy"] = correct / rows
        result["alignment_rows"] = rows
    return result


def _fmt(losses):
    short = {"text_mlm": "text", "video_mlm": "video", "joint_mlm": "joint", "alignment": "align"}
    return " ".join(f"{short[k]}={v:.3f}" for k, v in losses.items() if k in short)


def train(corpus, codebook, out, options: TrainOptions | None = None, *, bert=None, size=None, vocab=None,
          resume=False, device="auto", progress=True, stop_after=None, on_event=None) -> TrainResult:
    """Train VideoBERT on ``corpus`` (JSON lines) and write checkpoints to ``out``.

    Args:
        corpus: the corpus file (:mod:`vbedge.training.corpus_reader`).
        codebook: the codebook (path or HierarchicalCodebook) the corpus' leaves come from.
        out: output folder (see the module docstring).
        options: :class:`TrainOptions`; with ``resume``, None takes the checkpoint's, and given
            options must equal them.
        bert: a Hugging Face BERT folder to start from, or
        size: a model size (``tiny``, ``small``, ``base``) to train from scratch, with
        vocab: its WordPiece vocab.txt.
        resume: continue from ``out/checkpoint`` (model, optimizer, scheduler, step, RNG, data
            position); ``bert``/``size`` must then be omitted.
        device: ``auto`` (CUDA when torch sees it), ``cpu`` or ``cuda[:N]``.
        progress: show a tqdm bar with per-objective losses and sequences/s.
        stop_after: stop (with a checkpoint) once this step is done, before ``options.steps``.
        on_event: called with each log record (dict) as it is written, e.g. to print.
    """
    _require_torch()
    import torch
    from tqdm.auto import tqdm

    from vbedge.models.videobert import VideoBert

    out = Path(out)
    codebook = _load_codebook(codebook)
    digest = corpus_sha256(corpus) if Path(corpus).is_file() else None
    records = read_corpus(corpus, num_leaves=codebook.num_leaves)
    state = None
    if resume:
        if bert is not None or size is not None or vocab is not None:
            raise InvalidInputError("resume continues the checkpoint's model; do not give bert, size or vocab")
        ckpt = _find_checkpoint(out)
        if ckpt is None:
            raise InvalidInputError(f"nothing to resume: {str(out / 'checkpoint')!r} holds no checkpoint")
        state = _read_checkpoint_state(ckpt)
        stored = TrainOptions.from_dict(state["options"])
        if options is not None and options != stored:
            diff = {k: (v, getattr(options, k)) for k, v in stored.to_dict().items()
                    if options.to_dict()[k] != v}
            raise InvalidInputError("resume needs the checkpoint's options; these differ (checkpoint, given): "
                                    + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()))
        options = stored
        if state.get("corpus_sha256") != digest:
            raise InvalidInputError(f"corpus {str(corpus)!r} is not the one the checkpoint was trained on "
                                    f"(sha256 {digest} vs {state.get('corpus_sha256')})")
        videobert = VideoBert.load(ckpt, codebook=codebook)
    else:
        options = options or TrainOptions()
        if _find_checkpoint(out) is not None:
            raise InvalidInputError(f"{str(out)!r} already holds a checkpoint; pass resume=True (--resume) to "
                                    "continue it or choose another output folder")
        # Seed before building the model: new heads and (from scratch) all weights come from it.
        torch.manual_seed(options.seed)
        videobert = _initial_model(codebook, bert, size, vocab, options.seed)
    if stop_after is not None and not 1 <= int(stop_after) <= options.steps:
        raise InvalidInputError(f"stop_after must be in [1, {options.steps}], got {stop_after}")
    limit = options.steps if stop_after is None else int(stop_after)

    model = videobert.model
    max_positions = int(model.config.max_position_embeddings)
    if options.max_length > max_positions:
        raise InvalidInputError(f"max_length {options.max_length} exceeds the model's {max_positions} positions")
    dev = _resolve_device(device)
    precision = _resolve_precision(options.precision, dev)
    model.to(dev)

    vocab_ = videobert.vocab
    encoded = encode_videos(records, vocab_)
    train_idx, held_idx = split_held_out(len(encoded), options.held_out, options.seed)
    train_videos = [encoded[i] for i in train_idx]
    held_videos = [encoded[i] for i in held_idx]
    kw = dict(max_length=options.max_length, max_concat=options.max_concat,
              max_subsample=options.max_subsample, mask_prob=options.mask_prob)
    builder = ExampleBuilder(train_videos, vocab_, **kw)
    counts = _row_counts(options, builder)
    held_batches = []
    if held_videos:
        held_builder = ExampleBuilder(held_videos, vocab_, negatives=train_videos if len(held_videos) < 2 else None,
                                      **kw)
        held_counts = {k: (c if held_builder.can_build(k) else 0) for k, c in counts.items()}
        held_sampler = _Sampler(held_builder, options.seed + 1)
        held_rng = np.random.default_rng([options.seed, 99])
        for _ in range(options.eval_batches):
            plan = [row for kind in KINDS for row in held_sampler.take(kind, held_counts[kind])]
            if plan:
                held_batches.append(held_builder.batch(plan, held_rng))

    optimizer = _optimizer(model, options)
    scheduler = _scheduler(optimizer, options)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    rng = np.random.default_rng(options.seed)
    sampler = _Sampler(builder, options.seed)
    step = 0
    if state is not None:
        blob = torch.load(ckpt / _STATE_PT, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if scaler is not None and blob.get("scaler"):
            scaler.load_state_dict(blob["scaler"])
        torch.set_rng_state(blob["torch_rng"])
        if blob.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        rng.bit_generator.state = state["numpy_generator"]
        sampler.positions = {k: int(v) for k, v in state["sampler_positions"].items()}
        random.setstate(_python_state_from_json(state["python_random"]))
        _set_numpy_global_state(state["numpy_global"])
        step = int(state["step"])
        _truncate_log(out / _LOG, step)
    elif not resume:
        random.seed(options.seed)
        np.random.seed(options.seed % (2 ** 32))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / _LOG

    info = {"start": state["start"] if state else ({"bert": str(bert)} if bert else {"size": size, "vocab": str(vocab)}),
            "videos": {"train": len(train_videos), "held_out": len(held_videos)},
            "rows_per_step": counts, "device": str(dev), "precision": precision,
            "torch_threads": torch.get_num_threads()}

    def checkpoint_state():
        return {"format_version": TRAINING_STATE_VERSION, "step": step, "options": options.to_dict(),
                "corpus": str(corpus), "corpus_sha256": digest, "start": info["start"],
                "numpy_generator": rng.bit_generator.state, "sampler_positions": sampler.positions,
                "python_random": _python_state_to_json(random.getstate()),
                "numpy_global": _numpy_global_state(), "held_out_videos": [encoded[i].name for i in held_idx]}

    def write(record):
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if on_event is not None:
            on_event(record)

    model.train()
    last_losses, held_result = {}, None
    rows_done, busy = 0, 0.0
    bar = tqdm(total=options.steps, initial=step, disable=not progress, desc="train", unit="step")
    try:
        while step < limit:
            t0 = time.perf_counter()
            plan = [row for kind in KINDS for row in sampler.take(kind, counts[kind])]
            batch = builder.batch(plan, rng)
            t = _to_torch(batch, dev)
            with _autocast(dev, precision):
                losses, _ = compute_losses(model, t, options.label_smoothing)
                total = _weighted(losses, options)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
            else:
                total.backward()
            if options.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            last_losses = {name: float(v.detach()) for name, v in losses.items()}
            last_losses["loss"] = float(total.detach())
            busy += time.perf_counter() - t0
            rows_done += batch.size
            speed = rows_done / busy if busy > 0 else 0.0
            bar.update(1)
            bar.set_postfix_str(f"{_fmt(last_losses)} {speed:.1f} seq/s")
            if step % options.log_every == 0 or step == limit:
                write({"split": "train", "step": step, "lr": lr, "sequences": batch.size,
                       "length": int(batch.input_ids.shape[1]), "sequences_per_s": round(speed, 3),
                       **last_losses})
            if held_batches and ((options.eval_every and step % options.eval_every == 0) or step == options.steps):
                held_result = _evaluate(model, held_batches, dev, precision)
                write({"split": "held_out", "step": step, **held_result})
            if step % options.save_every == 0 or step == limit:
                _save_checkpoint(out, videobert, optimizer, scheduler, scaler, checkpoint_state())
    except KeyboardInterrupt:
        # Keep what was done: a checkpoint at the last completed step, then let the interrupt through.
        _save_checkpoint(out, videobert, optimizer, scheduler, scaler, checkpoint_state())
        raise
    finally:
        bar.close()
    model.eval()
    model_dir = None
    if step == options.steps:
        videobert.init_info["training"] = {"steps": step, "corpus_sha256": digest, "options": options.to_dict()}
        model_dir = videobert.save(out / "model")
    return TrainResult(step=step, finished=step == options.steps, losses=last_losses, held_out=held_result,
                       sequences_per_second=rows_done / busy if busy > 0 else 0.0,
                       checkpoint_dir=out / "checkpoint", model_dir=model_dir, log_path=log_path,
                       options=options, info=info)
