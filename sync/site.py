"""A site's identity (Ed25519 signing and X25519 agreement keys, ``site.key``, sealed under
the store's data key when it has one) and the peers it syncs with (``peers.json``)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from matcher.errors import InvalidInput, NotFound
from matcher.repository import SecretKeeper


@dataclass(frozen=True)
class SiteIdentity:
    """The public half of a site: what peers configure."""

    site: str
    sign_key: str  # hex Ed25519 public key
    box_key: str  # hex X25519 public key

    def to_json(self) -> str:
        return json.dumps({"site": self.site, "sign_key": self.sign_key, "box_key": self.box_key})


class SiteKeys:
    """This site's private keys (``site.key``, readable by the service user only)."""

    def __init__(self, site: str, sign_seed: bytes, box_seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        if not site or not site.isprintable() or len(site) > 64:
            raise InvalidInput("a site id is 1-64 printable characters")
        self.site = site
        self._sign = Ed25519PrivateKey.from_private_bytes(sign_seed)
        self._box = X25519PrivateKey.from_private_bytes(box_seed)

    @classmethod
    def create(cls, data_dir: Path, site: str, store: SecretKeeper | None = None) -> "SiteKeys":
        """New keys for ``site`` in ``data_dir`` (refuses to replace existing ones), sealed
        under the data key of ``store`` when it is encrypted."""
        path = data_dir / "site.key"
        if path.exists():
            raise InvalidInput(f"{path} exists: a site keeps its identity")
        keys = cls(site, os.urandom(32), os.urandom(32))
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys._file(store))
        return keys

    @classmethod
    def load(cls, data_dir: Path, store: SecretKeeper | None = None) -> "SiteKeys | None":
        """The site's keys, or None when this server has no site identity.

        With an encrypted ``store`` the keys are kept sealed under its data key (the KEK
        protects them as it protects templates): a file still in clear is sealed now.

        Raises:
            KeyMismatch: the file is sealed and no encrypted store was given to open it.
        """
        from matcher.errors import KeyMismatch

        path = data_dir / "site.key"
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        if "sealed" in d:
            if store is None or not store.encrypted:
                raise KeyMismatch(f"{path} is sealed by the store's key: give the key-encryption key")
            seeds = store.open_secret(bytes.fromhex(d["sealed"]), f"site.key/{d['site']}")
            return cls(d["site"], seeds[:32], seeds[32:])
        keys = cls(d["site"], bytes.fromhex(d["sign_seed"]), bytes.fromhex(d["box_seed"]))
        if store is not None and store.encrypted:  # written before the store had a key: seal it
            staged = path.with_suffix(".sealing")
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(keys._file(store))
                f.flush()
                os.fsync(f.fileno())
            staged.replace(path)
        return keys

    def _file(self, store: SecretKeeper | None) -> str:
        seeds = self._seed(self._sign) + self._seed(self._box)
        if store is not None and store.encrypted:
            return json.dumps({"site": self.site, "sealed": store.seal_secret(seeds, f"site.key/{self.site}").hex()})
        return json.dumps({"site": self.site, "sign_seed": seeds[:32].hex(), "box_seed": seeds[32:].hex()})

    @staticmethod
    def _seed(key) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())

    def identity(self) -> SiteIdentity:
        from cryptography.hazmat.primitives import serialization

        raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return SiteIdentity(self.site, self._sign.public_key().public_bytes(*raw).hex(),
                            self._box.public_key().public_bytes(*raw).hex())

    def sign(self, data: bytes) -> bytes:
        return self._sign.sign(data)

    def agree(self, peer_public: bytes) -> bytes:
        return self._box.exchange(x25519_public(peer_public))


class Peers:
    """The configured peer sites (``peers.json``), read afresh on each use so that a peer
    added with ``tambua sync peer add`` counts without a restart."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "peers.json"

    def all(self) -> dict[str, SiteIdentity]:
        if not self.path.exists():
            return {}
        return {site: SiteIdentity(site, d["sign_key"], d["box_key"])
                for site, d in json.loads(self.path.read_text()).items()}

    def added_ms(self, site: str) -> int | None:
        """When the peer was first added (None: before this was recorded, or no such peer)."""
        if not self.path.exists():
            return None
        return json.loads(self.path.read_text()).get(site, {}).get("added_unix_ms")

    @staticmethod
    def _since(known: dict, site: str) -> dict:
        added = known.get(site, {}).get("added_unix_ms")
        return {"added_unix_ms": added} if added is not None else {}

    def get(self, site: str) -> SiteIdentity:
        peer = self.all().get(site)
        if peer is None:
            raise NotFound(f"site {site!r} is not a configured peer (tambua sync peer add)")
        return peer

    def add(self, identity: SiteIdentity) -> None:
        for value in (identity.sign_key, identity.box_key):
            if len(bytes.fromhex(value)) != 32:
                raise InvalidInput("a site identity's keys are 32 bytes in hex")
        known = json.loads(self.path.read_text()) if self.path.exists() else {}
        peers = {s: {"sign_key": p.sign_key, "box_key": p.box_key, **self._since(known, s)} for s, p in self.all().items()}
        # When it was first added: a peer that never synced is late from then (tambua doctor).
        peers[identity.site] = {"sign_key": identity.sign_key, "box_key": identity.box_key,
                                **(self._since(known, identity.site) or {"added_unix_ms": int(time.time() * 1000)})}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(peers, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def x25519_public(raw: bytes):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)
