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

A change is an enrolment (the subject with its templates), a deletion, or a decision (an
adjudication case as decided at its site: the receiver closes its own cases on the same
pair with it, or opens a conflict case where it decided that pair otherwise; see
:meth:`store.cases.CaseBook._adopt`).

Relaying: a change applied from a peer joins the receiver's own change log, so a country
server passes one field site's enrolments and deletions on to the others (a person
registered at camp A is known at camp B after both sync). Each change carries the site
that made it and its number there; it is never sent back to that site or to the peer it
came through (a ``skip`` record keeps the numbering), and an enrolment that arrives a
second time by another path is recognised by that origin, not flagged as a conflict.

An acknowledgement (``b"TMBA"``, signed, not secret) tells the sender how far this site
applied its changes, which advances what the sender's next export starts from.

Owns: site identities and peers (``site``), bundles and acknowledgements (``bundles``).
May import ``matcher/`` (types, the repository interfaces, errors, template parsing) and
``cryptography``; never ``store/`` (it works through :mod:`matcher.repository`), grpc or
``tambua/``. The online push over gRPC is the service's (:mod:`tambua.push`).
"""

from __future__ import annotations

import importlib

__all__ = ["SiteKeys", "SiteIdentity", "Peers", "BundleRefused", "Bundle", "ImportReport", "Record", "export_bundle",
           "read_bundle", "import_bundle", "make_ack", "import_ack", "ACK_MAGIC", "BUNDLE_MAGIC", "MAX_CHANGES"]
_HOMES = {name: "sync.site" for name in ("SiteKeys", "SiteIdentity", "Peers")} | {
    name: "sync.bundles" for name in __all__ if name not in ("SiteKeys", "SiteIdentity", "Peers")}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'sync' has no attribute {name!r}")
