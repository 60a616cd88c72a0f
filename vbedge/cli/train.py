"""``vbedge train``: train VideoBERT on a corpus (the paper's objectives); see docs/training.md."""

from __future__ import annotations

from vbedge.errors import InvalidInputError

# CLI flag -> TrainOptions field, for the options that shape the run (all default to None here, so
# a resumed run can tell which ones the user gave).
_OPTION_FLAGS = {
    "steps": ("--steps", int, "optimizer steps in the whole run (default 1000)"),
    "batch_size": ("--batch-size", int, "sequences per step, all kinds together (default 32)"),
    "lr": ("--lr", float, "peak learning rate (default 1e-4)"),
    "warmup": ("--warmup", float, "fraction of the steps warming up (default 0.1)"),
    "weight_decay": ("--weight-decay", float, "AdamW weight decay (default 0.01)"),
    "max_grad_norm": ("--max-grad-norm", float, "gradient clipping, 0 off (default 1)"),
    "max_length": ("--max-length", int, "longest sequence in tokens (default 128)"),
    "max_concat": ("--max-concat", int, "most neighbouring sentences joined (default 3)"),
    "max_subsample": ("--max-subsample", int, "highest visual subsampling rate (default 5)"),
    "mask_prob": ("--mask-prob", float, "masking probability (default 0.15)"),
    "label_smoothing": ("--label-smoothing", float, "label smoothing of the masked-LM loss, 0 off (default 0)"),
    "text_mlm": ("--text-mlm-weight", float, "weight of the text-only masked LM (default 1)"),
    "video_mlm": ("--video-mlm-weight", float, "weight of the video-only masked LM (default 1)"),
    "joint_mlm": ("--joint-mlm-weight", float, "weight of the video-text masked LM (default 1)"),
    "alignment": ("--alignment-weight", float, "weight of the [CLS] alignment classification (default 1)"),
    "mix": ("--mix", str, "text-only,video-only,joint rows per step, relative (default 1,1,2)"),
    "held_out": ("--held-out", float, "fraction of the videos held out for evaluation (default 0.1)"),
    "eval_every": ("--eval-every", int, "held-out evaluation every N steps, 0 only at the end (default 100)"),
    "eval_batches": ("--eval-batches", int, "held-out batches per evaluation (default 4)"),
    "log_every": ("--log-every", int, "train_log.jsonl line every N steps (default 10)"),
    "save_every": ("--save-every", int, "checkpoint every N steps (default 500)"),
    "seed": ("--seed", int, "the run's seed (default 0)"),
    "precision": ("--precision", str, "auto (fp32 on CPU, bf16/fp16 autocast on GPU), fp32, bf16, fp16"),
}


def register(subparsers):
    """Add ``vbedge train``."""
    p = subparsers.add_parser(
        "train", help="train VideoBERT on a corpus (text, video and joint masked LM + alignment)",
        description="Train VideoBERT with the paper's objectives on a corpus (JSON lines, docs/training.md). "
                    "Writes OUT/checkpoint (a VideoBert folder for vbedge export videobert / vbedge build), "
                    "OUT/model when done, and OUT/train_log.jsonl.")
    p.add_argument("--corpus", required=True, metavar="C.jsonl", help="the corpus (one JSON line per video)")
    p.add_argument("--codebook", required=True, metavar="CB.npz", help="the codebook the corpus' leaves come from")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--bert", metavar="DIR", help="start from this Hugging Face BERT folder")
    start.add_argument("--config", choices=("tiny", "small", "base"), help="train from scratch at this size")
    p.add_argument("--vocab", metavar="vocab.txt", help="WordPiece vocabulary for --config")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint")
    p.add_argument("--stop-after", type=int, metavar="STEP", help="stop with a checkpoint after this step")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("training options (with --resume: taken from the checkpoint)")
    for name, (flag, kind, text) in _OPTION_FLAGS.items():
        group.add_argument(flag, dest="opt_" + name, type=kind, default=None, metavar=name.upper(), help=text)
    p.set_defaults(func=handler)
    return p


def _given_options(args) -> dict:
    given = {}
    for name in _OPTION_FLAGS:
        value = getattr(args, "opt_" + name)
        if value is None:
            continue
        if name == "mix":
            try:
                value = tuple(float(x) for x in value.split(","))
            except ValueError:
                raise InvalidInputError(f"--mix must be three numbers like 1,1,2; got {value!r}") from None
        given[name] = value
    return given


def handler(args) -> int:
    """Run the training and print where its results are."""
    import torch

    from vbedge.training.trainer import TrainOptions, checkpoint_options, train

    if args.threads:
        torch.set_num_threads(args.threads)
    given = _given_options(args)
    if args.resume:
        options = TrainOptions.from_dict({**checkpoint_options(args.output).to_dict(), **given}) if given else None
    else:
        if args.bert is None and args.config is None:
            raise InvalidInputError("give --bert DIR (a Hugging Face BERT folder) or --config tiny|small|base "
                                    "with --vocab vocab.txt")
        options = TrainOptions(**given)
    result = train(args.corpus, args.codebook, args.output, options, bert=args.bert, size=args.config,
                   vocab=args.vocab, resume=args.resume, device=args.device, progress=not args.quiet,
                   stop_after=args.stop_after)
    losses = " ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
    print(f"step {result.step}/{result.options.steps}: {losses}")
    if result.held_out:
        h = result.held_out
        acc = f", alignment accuracy {h['alignment_accuracy']:.3f}" if "alignment_accuracy" in h else ""
        print("held out: " + " ".join(f"{k} {h[k]:.4f}" for k in ("text_mlm", "video_mlm", "joint_mlm",
                                                                   "alignment") if k in h) + acc)
    print(f"{result.sequences_per_second:.1f} sequences/s on {result.info['device']} "
          f"({result.info['precision']}, {result.info['torch_threads']} threads)")
    print(f"checkpoint: {result.checkpoint_dir}")
    if result.model_dir is not None:
        print(f"model: {result.model_dir}")
    print(f"log: {result.log_path}")
    return 0
