"""Online backup and restore of a server's data directory.

``tambua backup`` runs on the server host while the server serves: SQLite's own backup
API copies each database as one consistent snapshot (in WAL mode writers go on during
the copy), so every enrolment acknowledged before the backup began is in it. Templates
stay as they are on disk, sealed by the store's data key: a backup is as encrypted as the
store, and restoring it needs the same key-encryption key. The audit log is copied up to
its last whole entry and its head recorded in the manifest, so ``tambua audit verify
--head`` can later prove no entry was cut.

A backup is a folder: the database snapshots, the audit log and ``manifest.json`` with
SHA-256 sums that restore checks before it writes anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from matcher.errors import AlreadyExists, InvalidInput, NotFound
from tambua.audit import head_of

DATABASES = ("subjects.sqlite", "access.sqlite")
# The site's identity (its private keys, sealed under the store's data key when the store is
# encrypted) and its peers: a field server restored without them could no longer sync as itself.
SITE_FILES = ("site.key", "peers.json")
AUDIT = "audit.jsonl"
MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    """What a backup holds: when, how many subjects, the audit head and the file sums."""

    format: int
    created_unix_ms: int
    subjects: int
    encryption: str
    audit_head: str
    files: dict[str, str]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _snapshot(src: Path, dst: Path) -> None:
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)  # all pages in one step: one read transaction, one consistent state
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no WAL beside it
    finally:
        target.close()
        source.close()


def backup(data_dir: Path, out: Path) -> Manifest:
    """Snapshot ``data_dir`` into the new folder ``out``.

    Raises:
        NotFound: no store in ``data_dir``.
        AlreadyExists: ``out`` exists and is not empty.
    """
    if not (data_dir / "subjects.sqlite").exists():
        raise NotFound(f"no store in {data_dir}")
    if out.exists() and any(out.iterdir()):
        raise AlreadyExists(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for name in DATABASES:
        if (data_dir / name).exists():
            _snapshot(data_dir / name, out / name)
    for name in SITE_FILES:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, out / name)  # keeps the owner-only mode of site.key
    head = "0:" + "0" * 64
    if (data_dir / AUDIT).exists():
        raw = (data_dir / AUDIT).read_bytes()
        (out / AUDIT).write_bytes(raw[:raw.rfind(b"\n") + 1])  # whole entries only
        seq, digest = head_of(out / AUDIT)  # verifying needs the KEK; the backup does not
        head = f"{seq}:{digest}"
    with sqlite3.connect(out / "subjects.sqlite") as db:
        subjects = db.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
        encryption = dict(db.execute("SELECT key, value FROM meta").fetchall()).get("encryption", "none")
    db.close()
    files = {p.name: _sha256(p) for p in sorted(out.iterdir()) if p.name != MANIFEST}
    manifest = Manifest(FORMAT, int(time.time() * 1000), subjects, encryption, head, files)
    (out / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a backup, checked against the files beside it.

    Raises:
        InvalidInput: no manifest, another format, or a file missing or changed.
    """
    try:
        m = Manifest(**json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise InvalidInput(f"{folder} is not a Tambua backup (no readable {MANIFEST})") from e
    if m.format != FORMAT:
        raise InvalidInput(f"backup format {m.format} is not the supported {FORMAT}")
    for name, digest in m.files.items():
        if not (folder / name).exists() or _sha256(folder / name) != digest:
            raise InvalidInput(f"backup file {name} is missing or changed since the backup")
    return m


def restore(folder: Path, data_dir: Path) -> Manifest:
    """Bring the backup in ``folder`` into the empty (or new) ``data_dir``.

    Raises:
        InvalidInput: the backup does not check out (nothing is written then).
        AlreadyExists: ``data_dir`` already holds a store.
    """
    m = read_manifest(folder)
    if (data_dir / "subjects.sqlite").exists():
        raise AlreadyExists(f"{data_dir} already holds a store: restore into an empty folder")
    with sqlite3.connect(f"file:{folder / 'subjects.sqlite'}?mode=ro", uri=True) as db:
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise InvalidInput("the backup's database fails SQLite's integrity check")
    db.close()
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / ".restoring"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in m.files:
        shutil.copy2(folder / name, staging / name)
    for name in m.files:  # the store last: a half-done restore has no store and starts empty, never mixed
        if name != "subjects.sqlite":
            (staging / name).replace(data_dir / name)
    (staging / "subjects.sqlite").replace(data_dir / "subjects.sqlite")
    staging.rmdir()
    return m
