"""Site sync: offline field servers send their changes to peers as signed, encrypted bundles.

Every server that syncs has a site identity (``site.key`` in its data directory): an
Ed25519 key that signs what it sends and an X25519 key that peers encrypt for. Peers are
configured with each other's public identity (``peers.json``; ``tambua sync peer add``).

A change bundle carries this site's changes after the last one the peer acknowledged::

    b"TMBS" | version | header length (u32) | header JSON | ciphertext | Ed25519 signature

The header names sender, recipient, sequence range, the sender's audit log head (the
receiver keeps it: a log cut at the sender afterwards fails ``tambua audit verify --head``
there) and an ephemeral X25519 key; the
payload (zlib-compressed JSON) is sealed with AES-256-GCM under a key agreed between the
ephemeral key and the recipient's X25519 key (HKDF-SHA256), the header as associated
data; the signature covers everything before it. Import checks, before applying anything:
the format, a known sender, the signature by that sender's key, this site as recipient,
decryption, every template's bytes, and that the range starts no later than the next
change expected from the sender; then it applies the changes in order, each in one
transaction with the sender's cursor, skipping those already applied (idempotent).

Relaying: a change applied from a peer joins the receiver's own change log, so a country
server passes one field site's enrolments and deletions on to the others (a person
registered at camp A is known at camp B after both sync). Each change carries the site
that made it and its number there; it is never sent back to that site or to the peer it
came through (a ``skip`` record keeps the numbering), and an enrolment that arrives a
second time by another path is recognised by that origin, not flagged as a conflict.

An acknowledgement (``b"TMBA"``, signed, not secret) tells the sender how far this site
applied its changes, which advances what the sender's next export starts from.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from matcher.errors import InvalidInput, NotFound, SequenceGap
from matcher.repository import ChangeLog, Repository, SecretKeeper
from matcher.store import Applied, Flag, StoredTemplate, Subject
from matcher.templates import parse_template

BUNDLE_MAGIC, ACK_MAGIC = b"TMBS", b"TMBA"
VERSION = 1
_SIG = 64
_HKDF_INFO = b"tambua sync bundle v1"
MAX_CHANGES = 5_000  # per bundle: bounded memory on both sides; export again for the rest


class BundleRefused(InvalidInput):
    """A bundle or acknowledgement was refused before anything was applied; ``reason``
    says why (``TRUNCATED``, ``UNKNOWN_SITE``, ``BAD_SIGNATURE``, ``WRONG_RECIPIENT``,
    ``UNDECRYPTABLE``, ``MALFORMED``)."""

    default_reason = "BUNDLE_REFUSED"


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
        from matcher.sealing import KeyMismatch

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
        return self._box.exchange(_x25519_public(peer_public))


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

    def get(self, site: str) -> SiteIdentity:
        peer = self.all().get(site)
        if peer is None:
            raise NotFound(f"site {site!r} is not a configured peer (tambua sync peer add)")
        return peer

    def add(self, identity: SiteIdentity) -> None:
        for value in (identity.sign_key, identity.box_key):
            if len(bytes.fromhex(value)) != 32:
                raise InvalidInput("a site identity's keys are 32 bytes in hex")
        peers = {s: {"sign_key": p.sign_key, "box_key": p.box_key} for s, p in self.all().items()}
        peers[identity.site] = {"sign_key": identity.sign_key, "box_key": identity.box_key}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(peers, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def _x25519_public(raw: bytes):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)


def _key(shared: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt, _HKDF_INFO).derive(shared)


def _header_bytes(header: dict) -> bytes:
    """The one serialisation of a header: what is signed, and the associated data of the payload."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _frame(magic: bytes, header: dict, body: bytes, keys: SiteKeys) -> bytes:
    h = _header_bytes(header)
    unsigned = magic + bytes([VERSION]) + struct.pack("<I", len(h)) + h + body
    return unsigned + keys.sign(unsigned)


def _unframe(data: bytes, magic: bytes, peers: Peers) -> tuple[dict, bytes, bytes]:
    """Parse and check the signature. Returns (header, header bytes, body)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(data) < 9 + _SIG:
        raise BundleRefused("the file is too short to be a bundle", "TRUNCATED")
    if data[:4] != magic:
        other = "an acknowledgement" if data[:4] == ACK_MAGIC else "a change bundle" if data[:4] == BUNDLE_MAGIC else None
        raise BundleRefused(f"this is {other}, not what was expected" if other else "not a Tambua sync file",
                            "MALFORMED")
    if data[4] != VERSION:
        raise BundleRefused(f"bundle version {data[4]} is not the supported {VERSION}", "MALFORMED")
    (hlen,) = struct.unpack("<I", data[5:9])
    if 9 + hlen + _SIG > len(data):
        raise BundleRefused("the bundle is cut short", "TRUNCATED")
    hbytes = data[9:9 + hlen]
    try:
        header = json.loads(hbytes)
        sender = str(header["from"])
    except (ValueError, KeyError, TypeError) as e:
        raise BundleRefused("the bundle header is not readable", "MALFORMED") from e
    peer = peers.all().get(sender)
    if peer is None:
        raise BundleRefused(f"the bundle claims to come from {sender!r}, which is not a configured peer",
                            "UNKNOWN_SITE")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(peer.sign_key)).verify(data[-_SIG:], data[:-_SIG])
    except InvalidSignature as e:
        raise BundleRefused(f"the signature is not {sender!r}'s: altered, cut, or not from that site",
                            "BAD_SIGNATURE") from e
    return header, hbytes, data[9 + hlen:-_SIG]


@dataclass(frozen=True)
class Bundle:
    """An exported bundle: its bytes and the range of this site's changes it carries."""

    data: bytes
    first_seq: int
    last_seq: int
    count: int
    subject_ids: tuple[str, ...] = ()


def export_bundle(store: Repository, keys: SiteKeys, peers: Peers, to_site: str,
                  limit: int = MAX_CHANGES, from_seq: int = 0, audit_head: tuple[int, str] | None = None) -> Bundle:
    """The changes ``to_site`` has not acknowledged (or those from ``from_seq`` on, to
    resend after the peer lost some), sealed for it and signed.

    A bundle with no changes is still a valid, signed file (count 0): it proves the link.
    ``audit_head`` (this site's audit log head) goes in the signed header: the peer keeps
    it, so a log cut here after the export is caught by ``tambua audit verify --head``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    peer = peers.get(to_site)
    after = from_seq - 1 if from_seq > 0 else store.peer(to_site).acked_seq
    changes = store.changes_since(after, limit)
    records = []
    for c in changes:
        if c.held_by(to_site):  # keep the numbering, send nothing
            records.append({"seq": c.seq, "kind": "skip", "partition": "", "subject_id": "", "unix_ms": c.unix_ms})
            continue
        record = {"seq": c.seq, "kind": c.kind, "partition": c.partition, "subject_id": c.subject_id,
                  "unix_ms": c.unix_ms, "origin": c.origin or keys.site, "origin_seq": c.origin_seq or c.seq}
        if c.kind == "delete" and not c.subject_id:
            record["kind"] = "erased"  # a deletion whose id was dropped: this peer never had the subject
        if c.kind == "enrol":
            try:
                s = store.get(c.partition, c.subject_id)
            except NotFound:
                record["kind"] = "erased"  # deleted since: its deletion follows; the templates are gone
            else:
                record.update(created_ns=s.created_ns, linked=list(s.linked), templates=[
                    {"modality": t.modality, "position": t.position,
                     "data": base64.b64encode(t.template.to_bytes()).decode()} for t in s.templates])
        records.append(record)
    first = changes[0].seq if changes else after + 1
    last = changes[-1].seq if changes else first - 1
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nonce = os.urandom(12)
    header = {"from": keys.site, "to": to_site, "first": first, "last": last, "count": len(records),
              "created_ms": int(time.time() * 1000), "eph": eph_public.hex(), "nonce": nonce.hex()}
    if audit_head is not None:
        header["audit"] = f"{audit_head[0]}:{audit_head[1]}"
    key = _key(ephemeral.exchange(_x25519_public(bytes.fromhex(peer.box_key))), eph_public)
    h = _header_bytes(header)
    body = AESGCM(key).encrypt(nonce, zlib.compress(json.dumps({"changes": records}).encode(), 6), h)
    data = _frame(BUNDLE_MAGIC, header, body, keys)
    store.note_peer(to_site, last_export_ms=int(time.time() * 1000))
    return Bundle(data, first, last, len(records), _subject_ids(records))


@dataclass(frozen=True)
class ImportReport:
    """What an import did: counts by outcome, the flagged enrolments, and the ack to send back."""

    from_site: str
    first_seq: int
    last_seq: int
    applied: int = 0
    already: int = 0
    flagged: tuple[Flag, ...] = ()
    ack: bytes = field(default=b"", repr=False)
    subject_ids: tuple[str, ...] = ()


def read_bundle(data: bytes, keys: SiteKeys, peers: Peers) -> tuple[dict, list[dict]]:
    """Check and open a change bundle addressed to this site (nothing is applied).

    Raises:
        BundleRefused: with the reason.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header, hbytes, body = _unframe(data, BUNDLE_MAGIC, peers)
    if header.get("to") != keys.site:
        raise BundleRefused(f"the bundle is addressed to {header.get('to')!r}, this is {keys.site!r}",
                            "WRONG_RECIPIENT")
    try:
        eph = bytes.fromhex(header["eph"])
        key = _key(keys.agree(eph), eph)
        payload = json.loads(zlib.decompress(AESGCM(key).decrypt(bytes.fromhex(header["nonce"]), body, hbytes)))
        records = payload["changes"]
    except InvalidTag as e:
        raise BundleRefused("the bundle does not decrypt for this site", "UNDECRYPTABLE") from e
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise BundleRefused("the bundle's contents are not readable", "MALFORMED") from e
    seqs = [r.get("seq") for r in records]
    if seqs != list(range(header["first"], header["first"] + len(records))) or len(records) != header["count"]:
        raise BundleRefused("the bundle's changes are not the contiguous range its header states", "MALFORMED")
    return header, records


def subject_of(record: dict) -> Subject:
    """The subject an ``enrol`` record carries, every template parsed (InvalidInput if not)."""
    try:
        templates = tuple(StoredTemplate(t["modality"], int(t["position"]),
                                         parse_template(base64.b64decode(t["data"], validate=True)))
                          for t in record["templates"])
        return Subject(record["subject_id"], record["partition"], templates, tuple(record.get("linked", ())),
                       int(record["created_ns"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleRefused(f"change {record.get('seq')} is not a readable enrolment", "MALFORMED") from e


def import_bundle(engine, keys: SiteKeys, peers: Peers, data: bytes) -> ImportReport:
    """Verify, then apply a peer's bundle through ``engine`` (deduplicating each enrolment).

    Raises:
        BundleRefused: the file fails a check; nothing applied, the refusal counted.
        SequenceGap: the bundle starts after a missing one; nothing applied.
    """
    store: Repository = engine.store
    try:
        header, records = read_bundle(data, keys, peers)
        audit_head = _audit_head(header)
    except BundleRefused:
        sender = _claimed_sender(data)
        if sender in peers.all():
            store.note_peer(sender, refused=1)
        raise
    site = header["from"]
    subjects = {r["seq"]: subject_of(r) for r in records if r["kind"] == "enrol"}  # all parse, or none applied
    origins = {r["seq"]: _origin_of(r, site) for r in records}
    applied_before = store.peer(site).applied_seq
    if header["first"] > applied_before + 1:
        store.note_peer(site, gaps=1)
        raise SequenceGap(f"the bundle from {site!r} starts at change {header['first']}, but {applied_before + 1} "
                          "is next: import the bundle before it first")
    applied = already = 0
    flagged = []
    for r in records:
        outcome, candidates = engine.import_change(site, r["seq"], r["kind"], subjects.get(r["seq"]),
                                                   r["partition"], r["subject_id"], *origins[r["seq"]])
        if outcome in (Applied.ALREADY, Applied.KNOWN, Applied.SKIPPED):
            already += 1
            continue
        applied += 1
        if candidates or outcome is Applied.CONFLICT:
            flagged.append(Flag(r["subject_id"], r["partition"],
                                "ID_CONFLICT" if outcome is Applied.CONFLICT else "CROSS_SITE_DUPLICATE", site,
                                tuple(c.subject_id for c in candidates), int(time.time() * 1000)))
    if audit_head is not None:
        store.note_audit_head(site, *audit_head)
    return ImportReport(site, header["first"], header["last"], applied, already, tuple(flagged),
                        make_ack(store, keys, site), _subject_ids(records))


def _subject_ids(records: list[dict]) -> tuple[str, ...]:
    """Whose data a bundle carries (for the audit log), each once, skips left out."""
    return tuple(dict.fromkeys(r["subject_id"] for r in records if r["subject_id"]))


def _origin_of(record: dict, sender: str) -> tuple[str, int]:
    """(site that made the change, its number there); a bundle from before relaying has
    neither: the sender made it."""
    origin, origin_seq = record.get("origin", sender), record.get("origin_seq", record["seq"])
    if not isinstance(origin, str) or not origin or type(origin_seq) is not int or origin_seq < 1:
        raise BundleRefused(f"change {record['seq']} names no valid origin", "MALFORMED")
    return origin, origin_seq


def _audit_head(header: dict) -> tuple[int, str] | None:
    """The sender's audit head from a (verified) bundle header; None when it sent none."""
    if "audit" not in header:
        return None
    seq, _, digest = str(header["audit"]).partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BundleRefused("the bundle's audit head is not SEQ:HASH", "MALFORMED")
    return int(seq), digest


def _claimed_sender(data: bytes) -> str:
    try:
        (hlen,) = struct.unpack("<I", data[5:9])
        return str(json.loads(data[9:9 + hlen])["from"])
    except Exception:  # noqa: BLE001 - a file too broken to name its sender counts for no one
        return ""


def make_ack(store: ChangeLog, keys: SiteKeys, to_site: str) -> bytes:
    """A signed acknowledgement: how far this site applied ``to_site``'s changes."""
    return _frame(ACK_MAGIC, {"from": keys.site, "to": to_site, "applied": store.peer(to_site).applied_seq,
                              "created_ms": int(time.time() * 1000)}, b"", keys)


def import_ack(store: ChangeLog, keys: SiteKeys, peers: Peers, data: bytes) -> tuple[str, int]:
    """Apply a peer's acknowledgement: the next export to it starts after what it applied.

    Returns:
        (peer site, its applied sequence number).
    """
    header, _, body = _unframe(data, ACK_MAGIC, peers)
    if header.get("to") != keys.site:
        raise BundleRefused(f"the acknowledgement is addressed to {header.get('to')!r}", "WRONG_RECIPIENT")
    applied = int(header["applied"])
    if body or applied > store.last_seq():
        raise BundleRefused("the acknowledgement claims changes this site never made", "MALFORMED")
    store.note_peer(header["from"], acked_seq=applied, last_ack_ms=int(time.time() * 1000))
    return header["from"], applied


@dataclass(frozen=True)
class PushReport:
    """What one online push did: bundles sent, changes the peer applied, and where it ended."""

    bundles: int
    applied: int
    already: int
    acked_seq: int
    flagged: tuple[Flag, ...] = ()


def push(local, remote, to_site: str, batch: int = 200, local_metadata=None, remote_metadata=None,
         on_ack=None) -> PushReport:
    """Online sync: stream this site's unacknowledged changes to a peer over ``SyncPush``.

    ``local`` and ``remote`` are Matcher stubs (this site's server and the peer's). Bundles
    of ``batch`` changes are exported from the local server one after another; each answer
    carries the peer's acknowledgement, imported locally at once, so a stream that breaks
    (raising ``grpc.RpcError``) leaves the local cursor at the last change the peer
    applied, and the next push resumes from there. Re-sent changes are skipped by the
    peer's idempotent apply.

    Args:
        on_ack: called with each import result (tests use it to break a link mid-stream).
    """
    from tambua.v1 import tambua_pb2 as pb

    first = local.SyncExport(pb.SyncExportRequest(to_site=to_site, limit=batch), metadata=local_metadata,
                             timeout=300)

    def bundles():
        b = first
        while b.count:
            yield pb.SyncImportRequest(data=b.data)
            b = local.SyncExport(pb.SyncExportRequest(to_site=to_site, limit=batch, from_seq=b.last_seq + 1),
                                 metadata=local_metadata, timeout=300)

    sent = applied = already = 0
    acked = first.first_seq - 1
    flagged: list[Flag] = []
    for answer in remote.SyncPush(bundles(), metadata=remote_metadata):
        local.SyncImport(pb.SyncImportRequest(data=answer.ack), metadata=local_metadata, timeout=60)
        sent, applied, already, acked = sent + 1, applied + answer.applied, already + answer.already, answer.last_seq
        flagged += [Flag(f.subject_id, f.partition, f.kind, f.site, tuple(f.candidates)) for f in answer.flagged]
        if on_ack is not None:
            on_ack(answer)
    return PushReport(sent, applied, already, acked, tuple(flagged))
