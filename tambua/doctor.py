"""What needs a person at a site, in plain words: ``tambua doctor`` (RPC ``Doctor``) and the
metrics the alert rules of ``docker/alerts.yml`` watch say the same things, from the same
numbers, so a site without Prometheus is checked as one with it.

The checks: each configured peer's time since its last successful sync against its limit
(``sync_max_lag``; a peer that never synced counts from when it was added); changes made here
that a peer has not taken within that limit; bundles from a peer refused with none accepted
since; the audit chain; free disk under the data directory; and, where configured, a site
that has stopped enrolling.

Owns :class:`Finding`, :class:`PeerFacts` and :class:`SiteWatch`; imports the audit chain's
verification and the store's and peers' read calls only.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from matcher.repository import PeerState
from tambua.audit import AuditLog


@dataclass(frozen=True)
class Finding:
    """One check's answer. ``ok`` False: something needs a person (``message`` says what)."""

    check: str  # sync_lag, sync_pending, sync_refused, audit_chain, disk, enrolments
    ok: bool
    message: str
    about: str = ""  # the peer site or path it is about
    value: float | None = None
    limit: float | None = None


@dataclass(frozen=True)
class PeerFacts:
    """What the store and the peers file know of one peer, read together."""

    state: PeerState
    pending: int
    oldest_pending_ms: int | None
    added_ms: int | None
    max_lag_s: float

    def last_success_ms(self) -> int | None:
        """The last import from the peer or acknowledgement by it (None: never)."""
        times = [t for t in (self.state.last_import_ms, self.state.last_ack_ms) if t]
        return max(times) if times else None

    def lag_s(self, now_ms: int) -> float | None:
        """Seconds since the last success, or since the peer was added (None: neither known)."""
        since = self.last_success_ms() or self.added_ms
        return None if since is None else max(0.0, (now_ms - since) / 1000)


def ago(seconds: float) -> str:
    """``2 d 4 h``, ``7 h 12 min``, ``3 min``, ``40 s``: a lag for a person."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min" if s >= 60 else f"{s} s"


def sync_findings(peers: dict[str, PeerFacts], now_ms: int) -> list[Finding]:
    out = []
    for site, f in sorted(peers.items()):
        lag, limit = f.lag_s(now_ms), f.max_lag_s
        if lag is None:
            out.append(Finding("sync_lag", False, f"{site} has never synced with this server", site, None, limit))
        elif lag > limit:
            what = "last synced" if f.last_success_ms() else "was added"
            out.append(Finding("sync_lag", False, f"{site} is late: it {what} {ago(lag)} ago (limit {ago(limit)}); "
                               "what it enrolled since is at risk if its server is lost", site, lag, limit))
        else:
            what = f"synced {ago(lag)} ago" if f.last_success_ms() else f"added {ago(lag)} ago, not synced yet"
            out.append(Finding("sync_lag", True, f"{site} {what} (limit {ago(limit)})", site, lag, limit))
        waited = None if f.oldest_pending_ms is None else max(0.0, (now_ms - f.oldest_pending_ms) / 1000)
        if waited is not None and waited > limit:
            out.append(Finding("sync_pending", False, f"{f.pending} changes made here have waited {ago(waited)} for "
                               f"{site} (limit {ago(limit)})", site, waited, limit))
        else:
            out.append(Finding("sync_pending", True, f"{f.pending} changes waiting for {site}", site, waited, limit))
        refused = f.state.last_refused_ms
        if refused and refused > (f.state.last_import_ms or 0):
            out.append(Finding("sync_refused", False, f"bundles from {site} are refused ({f.state.refused} in all, "
                               f"the last {ago((now_ms - refused) / 1000)} ago) and none accepted since: signed "
                               "with another key, or altered; the server log says which", site, f.state.refused))
        else:
            out.append(Finding("sync_refused", True, f"no bundle from {site} refused since its last good one", site,
                               f.state.refused))
    return out


def audit_finding(log: AuditLog | None) -> Finding:
    if log is None:
        return Finding("audit_chain", True, "no audit log kept (insecure development mode)")
    report = log.check()
    if report.ok:
        return Finding("audit_chain", True, f"the audit chain holds ({report.entries} entries)", str(log.path),
                       report.entries)
    return Finding("audit_chain", False, f"the audit chain is broken: {report.problem}; keep the file as it is "
                   "and compare it with the last backup (tambua audit verify)", str(log.path), report.entries)


def disk_finding(path: Path, min_free: float) -> Finding:
    usage = shutil.disk_usage(path)
    free = usage.free / usage.total if usage.total else 1.0
    gib = usage.free / 2**30
    if free < min_free:
        return Finding("disk", False, f"the disk under {path} is nearly full: {gib:.1f} GiB free ({100 * free:.0f}%, "
                       f"limit {100 * min_free:.0f}%); enrolments stop when it is full", str(path), free, min_free)
    return Finding("disk", True, f"{gib:.1f} GiB free under {path} ({100 * free:.0f}%)", str(path), free, min_free)


def enrolment_finding(last_ms: int | None, stall_s: float, now_ms: int) -> Finding:
    quiet = None if last_ms is None else (now_ms - last_ms) / 1000
    if quiet is not None and quiet > stall_s:
        return Finding("enrolments", False, f"nothing enrolled for {ago(quiet)} (limit {ago(stall_s)}): is the "
                       "registration team able to reach this server?", "", quiet, stall_s)
    said = "nothing enrolled yet" if quiet is None else f"last enrolment {ago(quiet)} ago"
    return Finding("enrolments", True, said, "", quiet, stall_s)


class SiteWatch:
    """The checks over one server's store, peers file, audit log and disk, read when asked.

    Args:
        max_lag_s: each peer site's sync limit in seconds.
        enrolment_stall_s: report a site that enrols nothing for this long (None: not checked).
    """

    def __init__(self, store, peers, audit: AuditLog | None, data_dir: Path, max_lag_s: Callable[[str], float],
                 enrolment_stall_s: float | None = None, disk_min_free: float = 0.1) -> None:
        self.store, self.peers, self.audit, self.data_dir = store, peers, audit, data_dir
        self.max_lag_s, self.enrolment_stall_s, self.disk_min_free = max_lag_s, enrolment_stall_s, disk_min_free
        self._audit_lock = threading.Lock()
        self.audit_state: tuple[bool, int] | None = None  # (chain holds, when checked): the last check

    def peer_facts(self) -> dict[str, PeerFacts]:
        return {site: PeerFacts(self.store.peer(site), self.store.pending(site), self.store.oldest_pending_ms(site),
                                self.peers.added_ms(site), self.max_lag_s(site))
                for site in sorted(self.peers.all())} if self.peers is not None else {}

    def check_audit(self) -> Finding:
        """The audit chain checked now (the whole file; one check at a time)."""
        with self._audit_lock:
            found = audit_finding(self.audit)
            self.audit_state = (found.ok, int(time.time() * 1000))
        return found

    def findings(self, now_ms: int | None = None) -> list[Finding]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        out = sync_findings(self.peer_facts(), now_ms)
        out.append(self.check_audit())
        out.append(disk_finding(self.data_dir, self.disk_min_free))
        if self.enrolment_stall_s is not None:
            out.append(enrolment_finding(self.store.last_enrolled_ms(), self.enrolment_stall_s, now_ms))
        return out


def report(findings: list[Finding], site: str = "", now_ms: int | None = None) -> dict:
    """The JSON ``tambua doctor --json`` prints: ``ok`` (nothing needs action),
    ``needs_action`` (the failing findings' messages) and every finding."""
    return {"site": site, "unix_ms": int(time.time() * 1000) if now_ms is None else now_ms,
            "ok": all(f.ok for f in findings), "needs_action": [f.message for f in findings if not f.ok],
            "findings": [asdict(f) for f in findings]}
