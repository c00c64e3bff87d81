"""Change bundles and acknowledgements: export this site's changes for a peer, check and
open a peer's bundle, apply it through the engine, and answer with an acknowledgement
(the format is in :mod:`sync`)."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from enum import StrEnum

from matcher.cases import Case, CaseState
from matcher.errors import InvalidInput, NotFound, SequenceGap
from matcher.repository import Applied, Change, ChangeLog, Flag, Repository
from matcher.templates import parse_template
from matcher.types import StoredTemplate, Subject
from sync.site import Peers, SiteKeys, x25519_public

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


class Kind(StrEnum):
    """What a bundle's record says happened at its number."""

    ENROL = "enrol"
    DELETE = "delete"
    DECISION = "decision"  # an adjudication case decided at its origin: the case record travels
    ERASED = "erased"  # an enrolment or deletion whose subject is gone: the number was used, nothing to apply
    SKIP = "skip"  # a change the recipient holds already (it made it, or relayed it here)


@dataclass(frozen=True)
class Record:
    """One change as a bundle carries it (JSON on the wire, this inside the code).

    Attributes:
        origin / origin_seq: the site that made the change and its number there.
        subject: for an enrolment, the subject with every template.
        case: for a decision, the decided case (its record; no capture, no images).
    """

    seq: int
    kind: Kind
    partition: str = ""
    subject_id: str = ""
    unix_ms: int = 0
    origin: str = ""
    origin_seq: int = 0
    subject: Subject | None = field(default=None, repr=False)
    case: Case | None = field(default=None, repr=False)

    @classmethod
    def of(cls, change: Change, site: str, to_site: str, store: Repository) -> "Record":
        """The record of one of this site's changes for ``to_site``."""
        if change.held_by(to_site):  # keep the numbering, send nothing
            return cls(change.seq, Kind.SKIP, unix_ms=change.unix_ms)
        kind, subject = Kind(change.kind), None
        if kind is Kind.DELETE and not change.subject_id:
            kind = Kind.ERASED  # a deletion whose id was dropped: this peer never had the subject
        case = None
        if kind is Kind.ENROL:
            try:
                subject = store.get(change.partition, change.subject_id)
            except NotFound:
                kind = Kind.ERASED  # deleted since: its deletion follows; the templates are gone
        elif kind is Kind.DECISION:
            try:
                case = store.case(change.partition, change.case_id)
            except NotFound:
                kind = Kind.ERASED  # erased with a subject it named
        return cls(change.seq, kind, change.partition, change.subject_id, change.unix_ms,
                   change.origin or site, change.origin_seq or change.seq, subject, case)

    def to_json(self) -> dict:
        if self.kind is Kind.SKIP:
            return {"seq": self.seq, "kind": "skip", "partition": "", "subject_id": "", "unix_ms": self.unix_ms}
        d = {"seq": self.seq, "kind": str(self.kind), "partition": self.partition, "subject_id": self.subject_id,
             "unix_ms": self.unix_ms, "origin": self.origin, "origin_seq": self.origin_seq}
        if self.subject is not None:
            d.update(created_ns=self.subject.created_ns, linked=list(self.subject.linked), templates=[
                {"modality": t.modality, "position": t.position,
                 "data": base64.b64encode(t.template.to_bytes()).decode()} for t in self.subject.templates])
        if self.case is not None:
            d["case"] = json.loads(self.case.to_json())
        return d

    @classmethod
    def from_json(cls, d: dict, sender: str) -> "Record":
        """Read and check one record (every template parsed).

        Raises:
            BundleRefused: MALFORMED.
        """
        try:
            kind = Kind(d["kind"])
            seq, partition, subject_id, unix_ms = d["seq"], d["partition"], d["subject_id"], d.get("unix_ms", 0)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleRefused(f"change {d.get('seq') if isinstance(d, dict) else '?'} is not readable",
                                "MALFORMED") from e
        if kind is Kind.SKIP:
            return cls(seq, kind, unix_ms=unix_ms, origin=sender, origin_seq=seq)
        # A bundle from before relaying names no origin: the sender made the change.
        origin, origin_seq = d.get("origin", sender), d.get("origin_seq", seq)
        if not isinstance(origin, str) or not origin or type(origin_seq) is not int or origin_seq < 1:
            raise BundleRefused(f"change {seq} names no valid origin", "MALFORMED")
        subject = _subject_of(d) if kind is Kind.ENROL else None
        case = _case_of(d, partition) if kind is Kind.DECISION else None
        return cls(seq, kind, partition, subject_id, unix_ms, origin, origin_seq, subject, case)


def _subject_of(d: dict) -> Subject:
    """The subject an ``enrol`` record carries, every template parsed (BundleRefused if not)."""
    try:
        templates = tuple(StoredTemplate(t["modality"], int(t["position"]),
                                         parse_template(base64.b64decode(t["data"], validate=True)))
                          for t in d["templates"])
        return Subject(d["subject_id"], d["partition"], templates, tuple(d.get("linked", ())), int(d["created_ns"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleRefused(f"change {d.get('seq')} is not a readable enrolment", "MALFORMED") from e


def _case_of(d: dict, partition: str) -> Case:
    """The decided case a ``decision`` record carries (BundleRefused if it is not one)."""
    try:
        case = Case.from_json(json.dumps(d["case"]).encode())
    except (KeyError, TypeError, ValueError) as e:
        raise BundleRefused(f"change {d.get('seq')} is not a readable decision", "MALFORMED") from e
    if case.decision is None or case.state is CaseState.OPEN or case.partition != partition:
        raise BundleRefused(f"change {d.get('seq')} carries no decided case of its partition", "MALFORMED")
    return case


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
    records = [Record.of(c, keys.site, to_site, store) for c in changes]
    first = changes[0].seq if changes else after + 1
    last = changes[-1].seq if changes else first - 1
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nonce = os.urandom(12)
    header = {"from": keys.site, "to": to_site, "first": first, "last": last, "count": len(records),
              "created_ms": int(time.time() * 1000), "eph": eph_public.hex(), "nonce": nonce.hex()}
    if audit_head is not None:
        header["audit"] = f"{audit_head[0]}:{audit_head[1]}"
    key = _key(ephemeral.exchange(x25519_public(bytes.fromhex(peer.box_key))), eph_public)
    h = _header_bytes(header)
    payload = json.dumps({"changes": [r.to_json() for r in records]}).encode()
    body = AESGCM(key).encrypt(nonce, zlib.compress(payload, 6), h)
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


def read_bundle(data: bytes, keys: SiteKeys, peers: Peers) -> tuple[dict, list[Record]]:
    """Check and open a change bundle addressed to this site, every record read and every
    template parsed (nothing is applied).

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
    seqs = [r.get("seq") if isinstance(r, dict) else None for r in records]
    if seqs != list(range(header["first"], header["first"] + len(records))) or len(records) != header["count"]:
        raise BundleRefused("the bundle's changes are not the contiguous range its header states", "MALFORMED")
    return header, [Record.from_json(r, header["from"]) for r in records]


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
            store.note_peer(sender, refused=1, last_refused_ms=int(time.time() * 1000))
        raise
    site = header["from"]
    applied_before = store.peer(site).applied_seq
    if header["first"] > applied_before + 1:
        store.note_peer(site, gaps=1)
        raise SequenceGap(f"the bundle from {site!r} starts at change {header['first']}, but {applied_before + 1} "
                          "is next: import the bundle before it first")
    applied = already = 0
    flagged = []
    for r in records:
        outcome, candidates = engine.import_change(site, r.seq, str(r.kind), r.subject, r.partition,
                                                   r.subject_id, r.origin, r.origin_seq, r.case)
        if outcome in (Applied.ALREADY, Applied.KNOWN, Applied.SKIPPED):
            already += 1
            continue
        applied += 1
        if outcome is Applied.DISPUTED:  # a decision there contradicts one made here: a new case
            flagged.append(Flag(r.subject_id, r.partition, "DECISION_CONFLICT", site,
                                tuple(c.subject_id for c in r.case.candidates), int(time.time() * 1000)))
        elif candidates or outcome is Applied.CONFLICT:
            flagged.append(Flag(r.subject_id, r.partition,
                                "ID_CONFLICT" if outcome is Applied.CONFLICT else "CROSS_SITE_DUPLICATE", site,
                                tuple(c.subject_id for c in candidates), int(time.time() * 1000)))
    if audit_head is not None:
        store.note_audit_head(site, *audit_head)
    return ImportReport(site, header["first"], header["last"], applied, already, tuple(flagged),
                        make_ack(store, keys, site), _subject_ids(records))


def _subject_ids(records: list[Record]) -> tuple[str, ...]:
    """Whose data a bundle carries (for the audit log), each once, skips left out."""
    return tuple(dict.fromkeys(r.subject_id for r in records if r.subject_id))


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
