"""Principals' rows in ``access.sqlite`` are authenticated: whoever can write the file but
lacks the KEK cannot grant a role, widen a partition, un-revoke a key or add a principal."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from store import sealing
from matcher.errors import KeyMismatch, RecordTampered
from store.sqlite import SubjectStore
from tambua.auth import AccessStore


@pytest.fixture
def access(tmp_path):
    subjects = SubjectStore(tmp_path / "subjects.sqlite", sealing.new_key())
    store = AccessStore(tmp_path / "access.sqlite", subjects)
    yield store
    store.close()
    subjects.close()


def _edit(path: Path, sql: str, *params) -> None:
    """What someone with write access to the file (and no KEK) can do."""
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


def _authentic(store: AccessStore, principal_id: str) -> bool:
    return {r.principal.id: r.authentic for r in store.list()}[principal_id]


@pytest.mark.parametrize("column, value", [("roles", "admin,verifier"), ("partitions", "*"), ("name", "root"),
                                           ("kind", "cert")])
def test_an_edited_row_is_refused(access, tmp_path, column, value):
    p, key = access.create_key("distribution point", {"verifier"}, {"kakuma"})
    assert access.by_key(key) == p and _authentic(access, p.id)
    _edit(tmp_path / "access.sqlite", f"UPDATE principals SET {column} = ? WHERE id = ?", value, p.id)
    assert access.by_key(key) is None
    assert not _authentic(access, p.id)


def test_a_revoked_key_cannot_be_revived_by_editing_the_file(access, tmp_path):
    p, key = access.create_key("lost tablet", {"registrar"}, {"*"})
    assert access.revoke(p.id) and access.by_key(key) is None
    _edit(tmp_path / "access.sqlite", "UPDATE principals SET revoked_ms = NULL WHERE id = ?", p.id)
    assert access.by_key(key) is None


def test_a_known_secret_moved_onto_an_admin_row_is_refused(access, tmp_path):
    mine, my_key = access.create_key("verifier", {"verifier"}, {"*"})
    admin, _ = access.create_key("admin", {"admin"}, {"*"})
    _edit(tmp_path / "access.sqlite", "UPDATE principals SET (salt, digest) = "
          "(SELECT salt, digest FROM principals WHERE id = ?) WHERE id = ?", mine.id, admin.id)
    secret = my_key.split("_", 2)[2]
    assert access.by_key(f"tmb_{admin.id}_{secret}") is None
    assert access.by_key(my_key) == mine


def test_an_inserted_row_is_refused_with_or_without_a_borrowed_mac(access, tmp_path):
    other, _ = access.create_key("verifier", {"verifier"}, {"*"})
    salt, secret = secrets.token_bytes(16), "s3cret"
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    for key_id, mac in [("feedfacefeedface", None), ("deadbeefdeadbeef", b"\0" * 32)]:
        _edit(tmp_path / "access.sqlite", "INSERT INTO principals (id, kind, name, roles, partitions, salt, digest,"
              " created_ms, revoked_ms, mac) VALUES (?, 'key', 'intruder', 'admin', '*', ?, ?, 1,"
              " NULL, COALESCE(?, (SELECT mac FROM principals WHERE id = ?)))", key_id, salt, digest, mac, other.id)
        assert access.by_key(f"tmb_{key_id}_{secret}") is None


@pytest.mark.parametrize("expires", ["NULL", "expires_ms + 86400000"], ids=["removed", "extended"])
def test_an_expiry_cannot_be_removed_or_extended_by_editing_the_file(access, tmp_path, expires):
    p, key = access.create_key("tablet on loan", {"registrar"}, {"*"}, expires_ms=int(time.time() * 1000) + 60_000)
    assert access.by_key(key) == p
    _edit(tmp_path / "access.sqlite", f"UPDATE principals SET expires_ms = {expires} WHERE id = ?", p.id)
    assert access.by_key(key) is None and not _authentic(access, p.id)


def test_an_expiry_cannot_be_added_to_a_row_either(access, tmp_path):
    """A row without an expiry is MACed as rows were before the column existed (so those
    still authenticate); the expiry, once there, is part of what the MAC covers."""
    p, key = access.create_key("old tablet", {"registrar"}, {"*"})
    assert access.by_key(key) == p and _authentic(access, p.id)
    _edit(tmp_path / "access.sqlite", "UPDATE principals SET expires_ms = 1 WHERE id = ?", p.id)  # made to look expired
    assert access.by_key(key) is None and not _authentic(access, p.id)


def test_revoking_an_altered_row_does_not_make_it_authentic(access, tmp_path):
    p, key = access.create_key("tablet", {"registrar"}, {"*"})
    _edit(tmp_path / "access.sqlite", "UPDATE principals SET roles = 'admin' WHERE id = ?", p.id)
    assert access.revoke(p.id)
    _edit(tmp_path / "access.sqlite", "UPDATE principals SET revoked_ms = NULL WHERE id = ?", p.id)
    assert access.by_key(key) is None and not _authentic(access, p.id)


def test_rows_from_before_row_macs_are_refused_until_an_administrator_seals_them(tmp_path):
    # The table as it was written before rows carried MACs, with one key in it.
    db = sqlite3.connect(tmp_path / "access.sqlite")
    db.execute("CREATE TABLE principals (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,"
               " roles TEXT NOT NULL, partitions TEXT NOT NULL, salt BLOB, digest BLOB,"
               " created_ms INTEGER NOT NULL, revoked_ms INTEGER)")
    salt = secrets.token_bytes(16)
    db.execute("INSERT INTO principals VALUES ('0123456789abcdef', 'key', 'old tablet', 'registrar', '*', ?, ?,"
               " 1, NULL)", (salt, hmac.new(salt, b"old-secret", hashlib.sha256).digest()))
    db.commit()
    db.close()
    subjects = SubjectStore(tmp_path / "subjects.sqlite", sealing.new_key())
    access = AccessStore(tmp_path / "access.sqlite", subjects)
    token = "tmb_0123456789abcdef_old-secret"
    assert access.by_key(token) is None and not _authentic(access, "0123456789abcdef")
    assert [r.principal.name for r in access.seal()] == ["old tablet"]
    assert access.by_key(token).roles == {"registrar"}
    assert access.seal() == []  # once: nothing left without a MAC


def test_the_file_opens_only_with_the_store_that_sealed_its_key(tmp_path):
    kek = sealing.new_key()
    subjects = SubjectStore(tmp_path / "subjects.sqlite", kek)
    AccessStore(tmp_path / "access.sqlite", subjects).create_key("tablet", {"registrar"}, {"*"})
    other = SubjectStore(tmp_path / "other.sqlite", sealing.new_key())
    with pytest.raises(RecordTampered, match="not sealed by this store"):
        AccessStore(tmp_path / "access.sqlite", other)
    plain = SubjectStore(tmp_path / "plain.sqlite")
    with pytest.raises(KeyMismatch, match="must be encrypted"):
        AccessStore(tmp_path / "access2.sqlite", plain)
