"""The keyed, hash-chained audit log: what verify catches (also an edit whose chain was
recomputed without the key), crash recovery, and the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys

import pytest

from matcher.errors import RecordTampered
from store.sealing import load_kek
from store.sqlite import SubjectStore
from tambua.audit import KEY_NAME, AuditLog, verify
from tests.tambua.test_server import REPO


@pytest.fixture
def key(tmp_path):
    """The chain key of an encrypted store in ``tmp_path`` (its KEK in ``tmp_path/kek``)."""
    (tmp_path / "kek").write_text(os.urandom(32).hex())
    store = SubjectStore(tmp_path / "subjects.sqlite", load_kek(tmp_path / "kek"))
    try:
        return store.derive_key(KEY_NAME)
    finally:
        store.close()


@pytest.fixture
def log_path(tmp_path, key):
    log = AuditLog(tmp_path / "audit.jsonl", key)
    for i in range(6):
        log.append("k1", "tablet 1", "Enroll", "default", (f"S{i}",), "OK")
    log.append("k2", "dp 3", "Verify", "default", ("S2",), "OK")
    log.append("", "unauthenticated", "Identify", "default", (), "UNAUTHENTICATED")
    log.close()
    return tmp_path / "audit.jsonl"


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def test_an_untouched_log_verifies_and_continues_after_a_restart(log_path, key):
    report = verify(log_path, key=key)
    assert report.ok and report.entries == 8 and report.head[0] == 8
    log = AuditLog(log_path, key)
    assert log.head == report.head
    entry = log.append("k1", "tablet 1", "DeleteSubject", "default", ("S1",), "OK")
    log.close()
    assert entry.seq == 9 and entry.prev == report.head[1] and verify(log_path, key=key).ok


def _rechain(lines, key):
    """What someone with write access but without the store's key can do: recompute every
    hash after an edit, plain SHA-256 or an HMAC under a key of their own."""
    prev = "0" * 64
    out = []
    for seq, line in enumerate(lines, start=1):
        e = json.loads(line)
        e.update(seq=seq, prev=prev)
        body = json.dumps({k: v for k, v in e.items() if k != "hash"}, sort_keys=True, separators=(",", ":")).encode()
        e["hash"] = prev = (hashlib.sha256(body).hexdigest() if key is None
                            else hmac.new(key, body, hashlib.sha256).hexdigest())
        out.append(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n")
    return out


@pytest.mark.parametrize("forger_key", [None, os.urandom(32)], ids=["sha256", "own-key"])
def test_removing_a_subject_s_entries_and_recomputing_the_chain_is_caught(log_path, key, forger_key):
    lines = [line for line in _lines(log_path) if '"S3"' not in line]
    log_path.write_text("".join(_rechain(lines, forger_key)))
    assert verify(log_path, key=forger_key).ok  # a consistent chain under the forger's key ...
    report = verify(log_path, key=key)  # ... that the store's key exposes from the first line rewritten
    assert not report.ok and report.problem.startswith("line 1 (seq 1)"), report.problem
    with pytest.raises(RecordTampered):  # and the server appends nothing to it
        AuditLog(log_path, key)


def _edit(lines):
    e = json.loads(lines[3])
    e["subject_ids"] = ["someone-else"]
    lines[3] = json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"


def _edit_outcome(lines):
    lines[6] = lines[6].replace('"OK"', '"PERMISSION_DENIED"')


def _remove(lines):
    del lines[4]


def _swap(lines):
    lines[2], lines[3] = lines[3], lines[2]


def _remove_first(lines):
    del lines[0]


def _duplicate(lines):
    lines.insert(5, lines[4])


@pytest.mark.parametrize("tamper, fault", [
    pytest.param(_edit, "line 4 (seq 4): edited", id="edited-entry"),
    pytest.param(_edit_outcome, "line 7 (seq 7): edited", id="edited-outcome"),
    pytest.param(_remove, "line 5 (seq 6, expected 5): chain broken", id="removed-entry"),
    pytest.param(_remove_first, "line 1 (seq 2, expected 1)", id="removed-first"),
    pytest.param(_swap, "line 3 (seq 4, expected 3)", id="swapped-pair"),
    pytest.param(_duplicate, "line 6 (seq 5, expected 6)", id="replayed-entry"),
])
def test_verify_names_the_first_tampered_line(log_path, key, tamper, fault):
    lines = _lines(log_path)
    tamper(lines)
    log_path.write_text("".join(lines))
    report = verify(log_path, key=key)
    assert not report.ok and report.problem.startswith(fault), report.problem


def test_a_cut_tail_is_caught_against_a_head_kept_elsewhere(log_path, key):
    head = verify(log_path, key=key).head
    log_path.write_text("".join(_lines(log_path)[:-2]))
    assert verify(log_path, key=key).ok  # a shorter chain is still a chain ...
    report = verify(log_path, expect_head=head, key=key)
    assert not report.ok and "cut" in report.problem  # ... which the kept head exposes


def test_a_half_written_last_entry_is_cut_off_at_start(log_path, key):
    whole = log_path.read_bytes()
    log_path.write_bytes(whole + b'{"seq":9,"unix_ms":17')  # the crash came mid-write
    log = AuditLog(log_path, key)
    assert log.head[0] == 8 and log_path.read_bytes() == whole
    log.append("k1", "tablet 1", "Identify", "default", (), "OK")
    log.close()
    assert verify(log_path, key=key).ok


def test_cli_audit_verify_exit_codes(log_path):
    def run(*extra, kek=True):
        return subprocess.run([sys.executable, "-m", "tambua.cli", "audit", "verify", "--data-dir",
                               str(log_path.parent), "--json", *(["--kek-file", str(log_path.parent / "kek")] if kek
                                                                 else []), *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "TAMBUA_KEK"})

    ok = run()
    assert ok.returncode == 0 and json.loads(ok.stdout)["entries"] == 8
    head = json.loads(ok.stdout)["head"]
    assert run("--head", head).returncode == 0
    no_key = run(kek=False)
    assert no_key.returncode == 1 and "TAMBUA_KEK" in no_key.stderr
    archived = log_path.parent / "before-keying.jsonl"  # a log from before the chain was keyed
    archived.write_text("".join(_rechain(_lines(log_path), None)))
    assert run("--log", str(archived)).returncode == 1
    assert run("--log", str(archived), "--unkeyed", kek=False).returncode == 0
    lines = _lines(log_path)
    _swap(lines)
    log_path.write_text("".join(lines))
    bad = run()
    assert bad.returncode == 1 and "chain broken" in json.loads(bad.stdout)["problem"]


def test_concurrent_calls_share_fsyncs_and_each_returns_durable(tmp_path, monkeypatch):
    """Group commit: 8 threads x 40 calls on a slow disk take fewer than 320 flushes,
    and no call returns before a flush that began after its line was written."""
    import os
    import threading
    import time

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    flushed = [0]  # lines on disk after the newest completed fsync
    calls = [0]
    real_fsync = os.fsync

    def slow_fsync(fd):  # a disk that takes 5 ms a flush; records what each flush covered
        lines = path.read_bytes().count(b"\n")
        time.sleep(0.005)
        real_fsync(fd)
        calls[0] += 1
        flushed[0] = max(flushed[0], lines)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    early = []

    def worker(k):
        for i in range(40):
            e = log.append(f"k{k}", "dp", "Verify", "default", (f"S{k}-{i}",), "OK")
            if flushed[0] < e.seq:
                early.append(e.seq)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert not early, f"calls returned before their entry was flushed: {early[:5]}"
    assert calls[0] < 240, calls[0]  # one flush each: 320 (75-110 measured here with CPU hogs beside it)
    report = verify(path)  # no key: the plain SHA-256 chain of a store without encryption
    assert report.ok and report.entries == 320 and report.head[0] == 320


def test_another_process_appending_keeps_one_chain(tmp_path, key):
    """The server and `tambua keys` on the host append to one file: interleaved appends
    from two processes (and from two writers in this one) stay one verifiable chain."""
    import threading

    path = tmp_path / "audit.jsonl"
    ours, second = AuditLog(path, key), AuditLog(path, key)  # two open files: locked like two processes
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from tambua.audit import AuditLog\n"
        "log = AuditLog(Path(sys.argv[1]), bytes.fromhex(sys.argv[2]))\n"
        "for i in range(150): log.append('host:admin', 'admin', f'keys revoke k{i}', '', (), 'OK')\n"
    ), str(path), key.hex()], cwd=REPO)

    def calls(log, name):
        for i in range(150):
            log.append("k1", name, "Enroll", "default", (f"{name}-{i}",), "OK")

    threads = [threading.Thread(target=calls, args=(log, name)) for log, name in ((ours, "a"), (second, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other.wait(timeout=120) == 0
    ours.close()
    second.close()
    report = verify(path, key=key)
    assert report.ok, report.problem
    assert report.entries == 450
