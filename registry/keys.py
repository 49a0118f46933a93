"""The signing key: one ECDSA P-256 key pair that signs audit-log entries and model manifests.

Whoever writes the governed state holds the private key: the governance service on a shared
server (``mergeops serve``), or, in embedded mode, the one person's own store (created on first use
under ``<home>/keys``, mode 0600). Anyone checking signatures needs only the public key, and
should pin it (``service_public_key`` in ``mergeops.yaml`` or ``MERGEOPS_SERVICE_PUBLIC_KEY``): a key
fetched from the server being checked proves nothing about that server.

P-256 because OpenSSF model-signing's key-based signer takes elliptic-curve keys; the log uses the
same pair so an auditor pins one key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from merge.bounded import read_bytes
from registry.errors import SigningKeyError

_MAX_PEM = 64 * 1024


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(read_bytes(path, limit=_MAX_PEM, what="signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path}: the signing key must be ECDSA P-256 (openssl ecparam -name prime256v1 -genkey)")
    return key


def load_public(pem: bytes, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{where}: the public key must be ECDSA P-256")
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pem: bytes) -> str:
    """A short, stable name for a public key: sha256 of its DER form, 16 hex digits."""
    der = load_public(pem, "public key").public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A private key and where it lives; ``public`` is its PEM public key."""

    path: Path
    private: ec.EllipticCurvePrivateKey

    @property
    def public(self) -> bytes:
        return public_pem(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def verify_signature(public: bytes, data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``public``'s ECDSA signature of ``data``."""
    try:
        raw = base64.b64decode(signature, validate=True)
        load_public(public, "public key").verify(raw, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def default_key_path(audit_log: Path) -> Path:
    """Where the key that signs an audit log lives: ``MERGEOPS_SIGNING_KEY`` when set (a mounted
    secret), else ``keys/signing-key.pem`` beside the log (the store's home)."""
    env = os.environ.get("MERGEOPS_SIGNING_KEY")
    return Path(env) if env else Path(audit_log).parent / "keys" / "signing-key.pem"


def load_signing_key(path: Path, *, create: bool) -> SigningKey:
    """The private key at ``path``; with ``create``, a new one is made there first (0600, its public
    key beside it as ``<name>.pub``) when none exists yet."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise SigningKeyError(f"{path}: no signing key there; the governance service holds it "
                            "(or set MERGEOPS_SIGNING_KEY to the key's path)")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        signing = _load_private(path)
        pub = path.with_name(path.name + ".pub")
        if not pub.exists():
            pub.write_bytes(public_pem(signing.public_key()))
        return SigningKey(path, signing)
    return SigningKey(path, _load_private(path))


def read_public_key(value: str | Path) -> bytes:
    """A pinned public key given as a PEM file path or as the PEM text itself."""
    text = str(value)
    pem = text.encode() if text.lstrip().startswith("-----BEGIN") else read_bytes(Path(text), limit=_MAX_PEM, what="public key")
    load_public(pem, text if len(text) < 200 else "the pinned public key")
    return pem


def trusted_public_key(pinned: str | Path | None, signing_key_path: Path) -> bytes:
    """The public key signatures are checked with: the pinned one when set, else the public half of
    this store's own signing key (embedded mode). SigningKeyError when there is neither."""
    if pinned:
        return read_public_key(pinned)
    path = Path(signing_key_path)
    pub = path.with_name(path.name + ".pub")
    if pub.is_file():
        return read_public_key(pub)
    if path.is_file():
        return load_signing_key(path, create=False).public
    raise SigningKeyError(f"no public key to check signatures with: pin the service's key (service_public_key in "
                          f"mergeops.yaml or MERGEOPS_SERVICE_PUBLIC_KEY), or run where {path} is")
