"""Encryption at rest: template bytes sealed with AES-256-GCM before they reach the disk.

Envelope encryption: one random 256-bit data key (DEK) seals every template; the DEK is
stored only wrapped (AES-256-GCM) by a key-encryption key (KEK) that lives outside the
database (a file or the environment, the seam for an external KMS). Rotating the KEK
re-wraps the DEK and touches no template, so it needs no downtime.

Each sealed record binds where it belongs as associated data (partition, subject id,
modality, position, model id): a record copied onto another subject, another finger or
another model fails authentication instead of decrypting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Protocol

from matcher.errors import KeyMismatch, RecordTampered

_VERSION = b"\x01"  # sealed record layout: version, 12-byte nonce, ciphertext + 16-byte tag
_NONCE = 12
_WRAP_AAD = b"tambua data key v1"


def parse_key(text: str | bytes) -> bytes:
    """A 256-bit key from 64 hex digits or base64 (as files and environment variables hold it).

    Raises:
        KeyMismatch: not 32 bytes in either spelling.
    """
    s = text.decode() if isinstance(text, bytes) else text
    s = s.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", s):
        return bytes.fromhex(s)
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyMismatch("a key is 32 bytes written as 64 hex digits or base64")
    return raw


def load_kek(path: Path | None = None, env: dict[str, str] | None = None) -> bytes | None:
    """The key-encryption key from ``path``, else ``$TAMBUA_KEK``, else the file named by
    ``$TAMBUA_KEK_FILE`` (a mounted secret); None when none is set."""
    env = os.environ if env is None else env
    if path is None and not env.get("TAMBUA_KEK") and env.get("TAMBUA_KEK_FILE"):
        path = Path(env["TAMBUA_KEK_FILE"])
    if path is not None:
        return parse_key(Path(path).read_bytes())
    value = env.get("TAMBUA_KEK")
    return parse_key(value) if value else None


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(32)


def key_id(kek: bytes) -> str:
    """A short public name of a KEK (HMAC of a constant): tells a wrong key from a right one."""
    return hmac.new(kek, b"tambua kek id", hashlib.sha256).hexdigest()[:16]


def wrap(dek: bytes, kek: bytes) -> bytes:
    """The DEK sealed by the KEK."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(kek).encrypt(nonce, dek, _WRAP_AAD)


def unwrap(wrapped: bytes, kek: bytes) -> bytes:
    """The DEK, or KeyMismatch when ``kek`` is not the key that wrapped it."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _WRAP_AAD)
    except InvalidTag as e:
        raise KeyMismatch("the key-encryption key does not open this store's data key") from e


class AesGcmSealer:
    """Seals and opens template records with a data key (thread-safe: AESGCM is stateless)."""

    def __init__(self, dek: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(dek)
        self._dek = dek

    def seal(self, data: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE)  # random 96-bit nonces: safe far beyond 2^32 records a key
        return _VERSION + nonce + self._aead.encrypt(nonce, data, context)

    def derive(self, name: str) -> bytes:
        """A 256-bit key for ``name`` derived from the data key (HKDF-Expand, one block):
        nothing to store, so nothing to delete or swap, and it goes wherever the data key goes."""
        return hmac.new(self._dek, b"tambua derived key\x00" + name.encode() + b"\x01", hashlib.sha256).digest()

    def open(self, data: bytes, context: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if data[:1] != _VERSION:
            raise RecordTampered("a stored template is not a sealed record of a known version")
        try:
            return self._aead.decrypt(data[1:1 + _NONCE], data[1 + _NONCE:], context)
        except InvalidTag as e:
            raise RecordTampered("a stored template fails authentication (altered or moved)") from e


class Sealer(Protocol):
    """Turns template bytes into what is stored, and back; ``context`` says where the
    record belongs (authenticated, not stored); ``derive`` gives keys for other uses."""

    def seal(self, data: bytes, context: bytes) -> bytes: ...

    def open(self, data: bytes, context: bytes) -> bytes: ...

    def derive(self, name: str) -> bytes: ...


class PlainSealer:
    """Stores template bytes unchanged (stores created without a key-encryption key)."""

    def seal(self, data: bytes, context: bytes) -> bytes:
        return data

    def open(self, data: bytes, context: bytes) -> bytes:
        return data

    def derive(self, name: str) -> bytes:
        """A fixed key: without a key-encryption key there is no secret to derive from."""
        return hashlib.sha256(b"tambua plain store\x00" + name.encode()).digest()
