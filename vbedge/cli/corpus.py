"""``vbedge corpus TOKENS... --narration ... -o corpus.jsonl``: tokens + narration -> corpus."""

import sys


def register(subparsers):
    """Register ``vbedge corpus``."""
    p = subparsers.add_parser(
        "corpus", help="join vbedge tokenize output with narration (.vtt, .srt, .jsonl) into a "
                       "training corpus",
        description="Write one JSON line per tokenized video: its clips (start, end, leaf) and "
                    "its narration (start, end, text) from WebVTT/SubRip files matched by video "
                    "name or from JSON lines. Bad lines are reported with file and line "
                    "(docs/training.md).")
    p.add_argument("tokens", nargs="+", help="vbedge tokenize .jsonl file(s)")
    p.add_argument("--narration", nargs="+", default=[], metavar="N",
                   help=".vtt/.srt files or folders of them, or .jsonl with one sentence per "
                        "line {video, start, end, text}")
    p.add_argument("--codebook", metavar="C.npz",
                   help="check every leaf lies inside this codebook")
    p.add_argument("--lenient", action="store_true",
                   help="skip bad token lines (listed) instead of refusing the file")
    p.add_argument("-o", "--output", required=True, help="corpus .jsonl to write")
    p.set_defaults(func=run_corpus)


def _num_leaves(path):
    if path is None:
        return None
    from ..codebook import HierarchicalCodebook

    return HierarchicalCodebook.load(path).num_leaves


def run_corpus(args):
    """Handler of ``vbedge corpus``."""
    from ..corpus import build_corpus

    report = build_corpus(args.tokens, args.narration, args.output,
                          num_leaves=_num_leaves(args.codebook), strict=not args.lenient)
    for problem in report.problems:
        print(f"vbedge: skipped {problem}", file=sys.stderr)
    for source in report.unmatched:
        print(f"vbedge: narration {source} matches no tokenized video (not written)",
              file=sys.stderr)
    print(f"wrote {report.videos} video(s), {report.clips} clip(s), {report.sentences} "
          f"sentence(s) to {report.output}; {len(report.without_narration)} video(s) without "
          f"narration, {len(report.unmatched)} narration source(s) unmatched, "
          f"{len(report.problems)} bad token line(s) skipped")
    return 0
