"""Model signatures: OpenSSF model-signing over every file of a registered ``model/`` directory.

The bundle is a Sigstore bundle (DSSE envelope, in-toto statement listing each file's sha256),
signed with the registry's ECDSA P-256 key (registry/keys.py). Key-based signing needs no
certificate authority, transparency log or network: signing and checking stay on this machine.

Registration signs the staged release dir and logs the bundle beside it, outside ``model/``, so
the content id and manifest are unchanged. Whoever can rewrite the store's artifacts and tags can
make weights, manifest, lineage and tags agree again, but cannot forge the signature without the
private key: promote and verify check it with the trusted (pinned) public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from merge.bounded import KIB, MIB, loads_json
from merge.errors import UsageError
from registry.errors import RegistryError, SignatureInvalid
from registry.keys import SigningKey, key_id, load_public, public_pem

# A bundle holds ~150 bytes per file; 1 MiB is thousands of shards. Anything larger is not ours.
MAX_BUNDLE = 1 * MIB
_NO_SIGNATURE = "registered without a model signature; run its recipe again to register a signed version"


def _hashing():
    # sha256 per file, as our manifest; nothing ignored (the library skips .git* files by default)
    # and symlinks refused, so the signature covers every byte the directory holds.
    # model_signing is imported only where used: it loads sigstore (~0.4 s), which `lineage` never needs.
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False).set_allow_symlinks(False)


def _key_hint(pem: bytes) -> str:
    """What model-signing writes into a bundle to name its key: sha256 of the PEM public key."""
    return hashlib.sha256(public_pem(load_public(pem, "public key"))).hexdigest()


def sign_model(model_dir: Path, key: SigningKey) -> bytes:
    """The signature bundle (JSON bytes) of every file under ``model_dir``."""
    from model_signing import signing

    with tempfile.TemporaryDirectory(prefix="mergeops-sign-") as tmp:
        sig = Path(tmp) / "model.sig"
        try:
            (signing.Config().use_elliptic_key_signer(private_key=key.path)
             .set_hashing_config(_hashing()).sign(Path(model_dir), sig))
        except (ValueError, OSError) as exc:
            raise RegistryError(f"{model_dir}: cannot sign the model ({exc})") from None
        return sig.read_bytes()


def read_bundle(path: Path) -> bytes:
    """At most ``MAX_BUNDLE + 1`` bytes of a downloaded bundle: enough to refuse a huge one."""
    with open(path, "rb") as fh:
        return fh.read(MAX_BUNDLE + 1)


def oversized_bundle(where: str, size: int | None = None) -> SignatureInvalid:
    said = f"{size:,} bytes, " if size else ""
    return SignatureInvalid(f"{where}: the model signature is {said}over the {MAX_BUNDLE // KIB:,} KiB a signature "
                            "takes; not one this registry wrote")


def check_model_signature(model_dir: Path, bundle: bytes | None, public_pem: bytes, where: str,
                          *, signer: str | None = None) -> None:
    """Raise SignatureInvalid, in one line, unless ``bundle`` is ``public_pem``'s signature of exactly
    the files under ``model_dir``. ``signer``: the key id the version's tags name (for the message)."""
    if bundle is None:
        raise SignatureInvalid(f"{where}: {_NO_SIGNATURE}")
    if len(bundle) > MAX_BUNDLE:
        raise oversized_bundle(where)
    try:
        doc = loads_json(bundle, what="model signature")
        hint = doc["verificationMaterial"]["publicKey"]["hint"]
    except (UsageError, KeyError, TypeError):
        raise SignatureInvalid(f"{where}: the model signature is not a model-signing bundle") from None
    expected = key_id(public_pem)
    if hint != _key_hint(public_pem):
        by = f"key {signer} (as tagged at registration)" if signer and signer != expected else "another key"
        raise SignatureInvalid(f"{where}: the model signature is by {by}, not the trusted key {expected}; pin the "
                               "public key of the registry that signed it (service_public_key) or register it again")
    from model_signing import verifying

    with tempfile.TemporaryDirectory(prefix="mergeops-verify-sig-") as tmp:
        sig, pub = Path(tmp) / "model.sig", Path(tmp) / "key.pub"
        sig.write_bytes(bundle)
        pub.write_bytes(public_pem)
        try:
            (verifying.Config().use_elliptic_key_verifier(public_key=pub)
             .set_hashing_config(_hashing()).verify(Path(model_dir), sig))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, InvalidSignature) as exc:
            if str(exc).startswith("Signature mismatch"):  # the signature is good; the files are not
                raise SignatureInvalid(f"{where}: does not match its model signature "
                                       f"({_differences(model_dir, doc)}); the stored model is not the one "
                                       "registered") from None
            raise SignatureInvalid(f"{where}: the model signature does not verify with the trusted key "
                                   f"{expected} ({type(exc).__name__})") from None


def _differences(model_dir: Path, doc: dict) -> str:
    """Which files changed, went missing or appeared, against a bundle whose signature verified."""
    try:
        statement = loads_json(base64.b64decode(doc["dsseEnvelope"]["payload"]), what="signed statement")
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (UsageError, KeyError, TypeError, binascii.Error):
        return "files differ"
    have = {rd.identifier: rd.digest.digest_hex for rd in _hashing().hash(Path(model_dir)).resource_descriptors()}
    changed = sorted(p for p in signed.keys() & have.keys() if signed[p] != have[p])
    missing, extra = sorted(signed.keys() - have.keys()), sorted(have.keys() - signed.keys())
    parts = [f"{label}: {', '.join(paths)}" for label, paths in
             (("changed", changed), ("missing", missing), ("unexpected", extra)) if paths]
    return "; ".join(parts) or "files differ"
