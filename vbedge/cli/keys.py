"""``vbedge keys new|show`` and ``vbedge sign``: Ed25519 signing keys and bundle signatures.

Thin handlers over :mod:`vbedge.signing` and :func:`vbedge.bundle.sign_bundle` (needs
``vbedge[signing]``). :func:`add_trusted_key_option` and :func:`trusted_keys` are shared by every
command that loads a bundle, so they all accept ``--trusted-key`` the same way.
"""

import os

from ..errors import InvalidInputError


def register(subparsers):
    """Add ``keys`` (new, show) and ``sign``."""
    p = subparsers.add_parser("keys", help="make or inspect Ed25519 bundle-signing keys (needs vbedge[signing])")
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    new = sub.add_parser("new", help="make a key pair: the private key (mode 0600) and its public key",
                         description="Make an Ed25519 key pair for signing bundles. Keep the private key on the "
                                     "build machine; ship the public key to devices (--trusted-key, "
                                     "VBEDGE_TRUSTED_KEYS).")
    new.add_argument("private", metavar="PRIVATE.pem", help="private key file to create (e.g. maker.key.pem)")
    new.add_argument("--public", metavar="PUBLIC.pem",
                     help="public key file to create (default: PRIVATE with .key.pem or .pem replaced by .pub.pem)")
    new.add_argument("--passphrase-env", metavar="VAR",
                     help="encrypt the private key with the passphrase held in environment variable VAR")
    new.add_argument("--overwrite", action="store_true", help="replace existing key files")
    new.set_defaults(func=cmd_keys_new)
    show = sub.add_parser("show", help="print the key id of a public or private key file")
    show.add_argument("key", metavar="KEY.pem")
    show.add_argument("--passphrase-env", metavar="VAR", help="passphrase of an encrypted private key (env var name)")
    show.set_defaults(func=cmd_keys_show)

    s = subparsers.add_parser("sign", help="sign a bundle with a private key (writes BUNDLE/manifest.sig)",
                              description="Verify the bundle (every file against its sha256), then sign its "
                                          "manifest.json with an Ed25519 private key.")
    s.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    s.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key (vbedge keys new)")
    s.add_argument("--passphrase-env", metavar="VAR", help="passphrase of an encrypted private key (env var name)")
    s.set_defaults(func=cmd_sign)


def add_trusted_key_option(parser):
    """``--trusted-key KEY`` (repeatable) for a command that loads a bundle."""
    parser.add_argument("--trusted-key", action="append", metavar="KEY",
                        help="public key file or folder of them the bundle must be signed by (repeatable; "
                             "default: $VBEDGE_TRUSTED_KEYS, else the bundle loads unauthenticated with a warning)")


def trusted_keys(args):
    """The ``trusted_keys=`` argument for the library from parsed ``--trusted-key`` options."""
    return list(args.trusted_key) if getattr(args, "trusted_key", None) else None


def passphrase(variable):
    """Bytes of the passphrase in environment variable ``variable`` (None when no variable is named)."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise InvalidInputError(f"--passphrase-env {variable}: that environment variable is not set or empty")
    return value.encode("utf-8")


def default_public_path(private):
    """maker.key.pem -> maker.pub.pem, maker.pem -> maker.pub.pem, maker -> maker.pub.pem."""
    text = str(private)
    for suffix in (".key.pem", ".pem"):
        if text.endswith(suffix):
            return text[: -len(suffix)] + ".pub.pem"
    return text + ".pub.pem"


def cmd_keys_new(args):
    from ..signing import generate_key_pair

    public = args.public or default_public_path(args.private)
    ident = generate_key_pair(args.private, public, password=passphrase(args.passphrase_env), overwrite=args.overwrite)
    print(f"private key: {args.private} (keep it secret, off devices)")
    print(f"public key:  {public} (ship it to devices: --trusted-key or VBEDGE_TRUSTED_KEYS)")
    print(f"key id:      {ident}")
    return 0


def cmd_keys_show(args):
    from pathlib import Path

    from ..signing import key_id, load_private_key, load_public_key

    path = Path(args.key)
    if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
        ident = key_id(load_private_key(path, password=passphrase(args.passphrase_env)).public_key())
        kind = "private"
    else:
        ident, kind = load_public_key(path).key_id, "public"
    print(f"{kind} key {path}: key id {ident}")
    return 0


def cmd_sign(args):
    from ..bundle import sign_bundle

    info = sign_bundle(args.bundle, args.key, password=passphrase(args.passphrase_env))
    print(f"signed {args.bundle}: key {info.key_id[:16]}, manifest sha256 {info.manifest_sha256[:16]}")
    return 0
