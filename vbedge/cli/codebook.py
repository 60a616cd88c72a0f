"""``vbedge codebook fit|info|tokenize``: fit or inspect a hierarchical visual codebook."""

from ..codebook import _DEVICES_HELP, _TOKENIZE_MODES


def register(subparsers):
    """Register ``vbedge codebook`` and its actions."""
    p_codebook = subparsers.add_parser("codebook", help="fit or inspect a hierarchical visual codebook")
    actions = p_codebook.add_subparsers(dest="codebook_command", metavar="ACTION")
    actions.required = True

    p_fit = actions.add_parser("fit", help="fit a codebook on features (a vbedge features folder "
                                           "or an .npy of shape (N, D))")
    p_fit.add_argument("features", help="vbedge features folder (its features.npy), or an .npy "
                                        "file of float32 features, shape (N, D)")
    p_fit.add_argument("-o", "--output", required=True, help="codebook .npz to write")
    p_fit.add_argument("--levels", type=int, default=4)
    p_fit.add_argument("--branching", type=int, default=12)
    p_fit.add_argument("--seed", type=int, default=0)
    p_fit.set_defaults(func=run_fit)

    p_info = actions.add_parser("info", help="print a codebook's shape and hash")
    p_info.add_argument("codebook")
    p_info.set_defaults(func=run_info)

    p_tok = actions.add_parser("tokenize", help="tokenize features (.npy) into leaf ids")
    p_tok.add_argument("codebook")
    p_tok.add_argument("features", help=".npy file of float32/float16 features, shape (N, D)")
    p_tok.add_argument("-o", "--output", help=".npy file for the int64 leaf ids (default: print)")
    p_tok.add_argument("--mode", choices=_TOKENIZE_MODES, default="tree")
    p_tok.add_argument("--beam", type=int, default=1)
    p_tok.add_argument("--device", default="auto", help=_DEVICES_HELP)
    p_tok.set_defaults(func=run_tokenize)


def run_fit(args):
    """Handler of ``vbedge codebook fit``."""
    from ..codebook import HierarchicalCodebook
    from ..features import load_feature_matrix

    features = load_feature_matrix(args.features)
    codebook = HierarchicalCodebook.fit(features, args.levels, args.branching, seed=args.seed)
    path = codebook.save(args.output)
    print(f"wrote {path}: {codebook!r} sha256={codebook.sha256[:16]}")
    return 0


def run_info(args):
    """Handler of ``vbedge codebook info``."""
    from ..codebook import HierarchicalCodebook

    codebook = HierarchicalCodebook.load(args.codebook)
    print(f"{codebook!r}\nsha256: {codebook.sha256}")
    return 0


def run_tokenize(args):
    """Handler of ``vbedge codebook tokenize``."""
    import numpy as np

    from ..codebook import HierarchicalCodebook, load_features_npy

    codebook = HierarchicalCodebook.load(args.codebook)
    ids = codebook.tokenize(load_features_npy(args.features), mode=args.mode, beam=args.beam,
                            device=args.device)
    if args.output:
        np.save(args.output, ids)
        print(f"wrote {len(ids)} leaf ids to {args.output}")
    else:
        print("\n".join(str(int(i)) for i in ids))
    return 0
