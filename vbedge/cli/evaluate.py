"""``vbedge eval zero-shot``: the paper's zero-shot verb/noun evaluation of a bundle on narrated videos."""


def register(subparsers):
    """Register ``vbedge eval``."""
    p = subparsers.add_parser("eval", help="evaluate a bundle")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    sub.required = True
    z = sub.add_parser("zero-shot", help="fill 'now let me show you how to [MASK] the [MASK]' over each narrated "
                                         "step's visual tokens; score verb and noun top-1/top-5 against the truth")
    z.add_argument("--bundle", required=True, help="bundle folder")
    z.add_argument("--videos", required=True, help="folder with narration.jsonl (verb and noun per step) and videos")
    z.add_argument("--train-world", default=None,
                   help="the training world's folder: its held-out pairs and step frequencies (baselines)")
    z.add_argument("--json", default=None, help="write the figures (and per-step predictions) to this file")
    z.add_argument("--backend", default="onnxruntime", help="auto, onnxruntime, tensorrt or torch")
    z.add_argument("--precision", default="fp32", help="fp32, fp16 or int8")
    z.set_defaults(func=run_zero_shot)


def run_zero_shot(args):
    """Handler of ``vbedge eval zero-shot``."""
    from ..synthetic.evaluate import format_zero_shot_table, write_json, zero_shot

    result, steps = zero_shot(args.bundle, args.videos, backend=args.backend, precision=args.precision,
                              train_world=args.train_world)
    print(format_zero_shot_table(result))
    if args.json:
        write_json(args.json, {**result, "predictions": [s.to_dict() for s in steps]})
        print(f"wrote {args.json}")
    return 0
