"""Ed25519 signatures over bundle manifests: keys, detached signature files, verification.

A bundle's ``manifest.json`` lists every file with its sha256, so a signature over the manifest
covers every byte of the bundle. What is signed is exactly::

    SIGNED_CONTEXT + <the bytes of manifest.json as stored on disk>

(``SIGNED_CONTEXT`` = ``b"vbedge.bundle.manifest.v1\\0"``, a domain separator so a signature
made for a vbedge manifest means nothing anywhere else, and vice versa). No re-serialisation:
the verifier checks the bytes it read and parses the manifest from those same bytes, so there
is no canonical-JSON ambiguity and no window between checking and parsing.

The signature lives beside the manifest in ``manifest.sig``, a small JSON object::

    {"format": "vbedge.signature", "format_version": 1, "algorithm": "ed25519",
     "key_id": <sha256 hex of the 32 raw public-key bytes>,
     "manifest_sha256": <sha256 hex of manifest.json>,
     "signature": <base64 of the 64-byte Ed25519 signature>}

``key_id`` and ``manifest_sha256`` are hints for clear error messages ("signed by another key",
"signature of another manifest"); only the Ed25519 check decides.

Keys are PEM files: the private key PKCS#8 (optionally encrypted with a passphrase), the public
key SubjectPublicKeyInfo, as written by :func:`generate_key_pair` (``vbedge keys new``).
Trusted public keys come from ``trusted_keys=`` arguments (files, folders of ``*.pem`` /
``*.pub`` files, PEM bytes or key objects) or from the ``VBEDGE_TRUSTED_KEYS`` environment
variable (files or folders separated by ``os.pathsep``). This module needs the ``cryptography``
package (``pip install vbedge[signing]``) only when a key is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, InvalidInputError, MissingDependencyError, SignatureError

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_FORMAT = "vbedge.signature"
SIGNATURE_FORMAT_VERSION = 1
SIGNED_CONTEXT = b"vbedge.bundle.manifest.v1\0"
TRUSTED_KEYS_ENV = "VBEDGE_TRUSTED_KEYS"
KEY_SUFFIXES = (".pem", ".pub")
# A signature file is ~300 bytes; anything much bigger is not one (and is not read into memory).
_MAX_SIGNATURE_BYTES = 64 * 1024


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError(
            "bundle signing and signature checks need the 'cryptography' package: pip install vbedge[signing]"
        ) from None
    return serialization, ed25519


@dataclass(frozen=True)
class TrustedKey:
    """A public key a device trusts, with where it came from (for messages)."""

    key: object  # cryptography Ed25519PublicKey
    key_id: str
    source: str


@dataclass(frozen=True)
class SignatureInfo:
    """What a verified (or freshly made) signature says: which key signed which manifest."""

    key_id: str
    manifest_sha256: str
    source: str = ""  # the trusted key's file (verification) or the private key's (signing)


def key_id(public_key):
    """sha256 hex of the raw 32 bytes of an Ed25519 public key (how keys are named in messages)."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _write_new_file(path, data, mode, overwrite):
    """Create ``path`` with ``mode`` from the start (never world-readable for a moment), or refuse."""
    # Built with |= : vermin (tests/test_python_compat.py) reads `name | name` as a 3.10 union type.
    flags = os.O_WRONLY
    flags |= os.O_CREAT
    flags |= os.O_TRUNC if overwrite else os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise InvalidInputError(f"{path} already exists; refusing to overwrite a key file (pass overwrite=True)") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask, and an overwritten file keeps its old one


def generate_key_pair(private_path, public_path, password=None, overwrite=False):
    """Make a new Ed25519 key pair; write the private key (mode 0600) and the public key (0644).

    ``password`` (bytes) encrypts the private key PEM. Returns the key id (hex). Refuses to
    overwrite existing files unless ``overwrite=True``.
    """
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise InvalidInputError(f"the private and public key paths are the same file: {private_path}")
    private = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise InvalidInputError(f"{path} already exists; refusing to overwrite a key file (pass overwrite=True)")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    _write_new_file(private_path, private_pem, 0o600, overwrite)
    _write_new_file(public_path, public_pem, 0o644, overwrite)
    return key_id(private.public_key())


def load_private_key(path, password=None):
    """Read an Ed25519 private key PEM; FormatError when it is not one (or the passphrase is wrong)."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"private key file not found: {path}")
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise FormatError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise FormatError(f"{path} is not a readable PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise FormatError(f"{path} holds a {type(key).__name__}; vbedge signs with Ed25519 keys (vbedge keys new)")
    return key


def _public_key_from_pem(data, source):
    serialization, ed25519 = _crypto()
    if b"PRIVATE KEY" in data:
        raise FormatError(f"{source} is a private key; a trusted key must be a public key (keep private keys off devices)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise FormatError(f"{source} is not a readable PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise FormatError(f"{source} holds a {type(key).__name__}; vbedge bundles are signed with Ed25519 keys")
    return key


def load_public_key(path):
    """Read an Ed25519 public key PEM file; return a :class:`TrustedKey`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"public key file not found: {path}")
    key = _public_key_from_pem(path.read_bytes(), str(path))
    return TrustedKey(key, key_id(key), str(path))


def _keys_from_folder(folder):
    names = sorted(p for p in folder.iterdir() if p.suffix in KEY_SUFFIXES and p.is_file())
    if not names:
        # Fail closed: a device configured to check signatures must not fall back to trusting anything.
        raise InvalidInputError(f"trusted key folder {folder} holds no public keys (*.pem or *.pub files)")
    return [load_public_key(p) for p in names]


def resolve_trusted_keys(trusted_keys):
    """Normalise ``trusted_keys`` into a list of :class:`TrustedKey`, or None for "do not check".

    * ``None``: the keys named by ``VBEDGE_TRUSTED_KEYS`` if it is set (and not empty), else None;
    * ``False``: None whatever the environment says (publisher-side tools that check a bundle
      they are about to sign);
    * a path (file or folder), PEM bytes, a key object, or a list of these: those keys.

    An empty list, or a folder with no keys in it, is an error rather than "no checking": a
    configuration that asked for signatures must never silently accept everything.
    """
    if trusted_keys is False:
        return None
    if trusted_keys is None:
        configured = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
        if not configured:
            return None
        items = [part for part in configured.split(os.pathsep) if part.strip()]
    elif isinstance(trusted_keys, (str, os.PathLike, bytes)) or not hasattr(trusted_keys, "__iter__"):
        items = [trusted_keys]
    else:
        items = list(trusted_keys)
    if not items:
        raise InvalidInputError("trusted_keys is empty: give at least one public key, or None to load unauthenticated")
    _, ed25519 = _crypto()
    keys = []
    for item in items:
        if isinstance(item, TrustedKey):
            keys.append(item)
        elif isinstance(item, ed25519.Ed25519PublicKey):
            keys.append(TrustedKey(item, key_id(item), "<key object>"))
        elif isinstance(item, bytes):
            key = _public_key_from_pem(item, "<PEM bytes>")
            keys.append(TrustedKey(key, key_id(key), "<PEM bytes>"))
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item).expanduser()
            if path.is_dir():
                keys += _keys_from_folder(path)
            else:
                keys.append(load_public_key(path))
        else:
            raise InvalidInputError(f"a trusted key must be a path, PEM bytes or an Ed25519 public key, got {type(item).__name__}")
    return keys


def sign_manifest_bytes(manifest_bytes, private_key):
    """The signature-file dict for ``manifest_bytes`` signed with ``private_key``."""
    signature = private_key.sign(SIGNED_CONTEXT + bytes(manifest_bytes))
    return {
        "format": SIGNATURE_FORMAT,
        "format_version": SIGNATURE_FORMAT_VERSION,
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def write_signature(path, signature):
    """Write a signature dict as ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_signature(path):
    """Parse a signature file; SignatureError when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise SignatureError(
            f"bundle is not signed: {path.name} is missing in {path.parent} and trusted keys were given "
            "(sign it with 'vbedge sign', or load without trusted keys to accept unauthenticated bundles)"
        )
    if path.stat().st_size > _MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{path} is too large to be a vbedge signature")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{path} is not a valid signature file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"{path} is not a vbedge signature file (format field missing or wrong)")
    if data.get("format_version") != SIGNATURE_FORMAT_VERSION or data.get("algorithm") != "ed25519":
        raise SignatureError(
            f"{path}: signature format {data.get('format_version')!r} / algorithm {data.get('algorithm')!r}; "
            f"this vbedge checks format {SIGNATURE_FORMAT_VERSION} Ed25519 signatures"
        )
    for name in ("key_id", "manifest_sha256", "signature"):
        if not isinstance(data.get(name), str):
            raise SignatureError(f"{path} lacks the {name!r} field")
    try:
        raw = base64.b64decode(data["signature"], validate=True)
    except ValueError:
        raise SignatureError(f"{path}: the signature is not base64") from None
    if len(raw) != 64:
        raise SignatureError(f"{path}: an Ed25519 signature has 64 bytes, this one {len(raw)}")
    return data, raw


def verify_manifest_bytes(manifest_bytes, signature_path, trusted_keys):
    """Check that ``signature_path`` is a signature of ``manifest_bytes`` by one of ``trusted_keys``.

    ``trusted_keys``: a list of :class:`TrustedKey` (see :func:`resolve_trusted_keys`). Returns a
    :class:`SignatureInfo`; raises SignatureError saying what is wrong: no signature, a key that
    is not trusted, a signature of another manifest, or a signature that does not verify.
    """
    _crypto()
    from cryptography.exceptions import InvalidSignature

    data, raw = read_signature(signature_path)
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    message = SIGNED_CONTEXT + bytes(manifest_bytes)
    by_id = {k.key_id: k for k in trusted_keys}
    claimed = by_id.get(data["key_id"])
    if claimed is None:
        trusted = ", ".join(sorted(k.key_id[:16] for k in trusted_keys))
        raise SignatureError(
            f"bundle is signed by key {data['key_id'][:16]}, which is not a trusted key (trusted: {trusted})"
        )
    if data["manifest_sha256"] != digest:
        raise SignatureError(
            f"{Path(signature_path).name} was made for another manifest (sha256 {data['manifest_sha256'][:16]}, "
            f"this manifest.json is {digest[:16]}): the manifest was changed after signing, or the signature "
            "file comes from another bundle"
        )
    try:
        claimed.key.verify(raw, message)
    except InvalidSignature:
        raise SignatureError(
            f"the signature in {Path(signature_path).name} does not verify with trusted key {claimed.key_id[:16]} "
            f"({claimed.source}): manifest or signature tampered"
        ) from None
    return SignatureInfo(claimed.key_id, digest, claimed.source)
