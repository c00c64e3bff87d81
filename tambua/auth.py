"""Who may call what: principals (API keys and client certificates), roles, partition
scopes, and the one server interceptor that checks them on every call.

Principals live in ``access.sqlite`` beside the subject store, managed by an administrator
on the server host (``tambua keys create|list|revoke|seal``); the interceptor reads the table on
every call, so a revocation takes effect at once, also from another process.

Every row carries an HMAC-SHA256 under a key kept in the file sealed by the subject
store's data key (so the KEK protects it as it protects templates, and rotating the KEK
leaves it alone): whoever can write the file but lacks the KEK cannot grant a role, widen
a partition, un-revoke a key or add a principal; such a row is refused and logged. Rows
from before this (no MAC) are refused until an administrator vouches for them once with
``tambua keys seal``. What a MAC cannot show is a whole row put back as it was before a
revocation (a rollback); the audit log and backups are where that shows.

API keys are ``tmb_<id>_<secret>`` with a 256-bit random secret; only a salted HMAC-SHA256
of the secret is stored. A slow password hash (scrypt, argon2) protects low-entropy
passwords against guessing; a 256-bit secret cannot be guessed, and a per-call hash must
be cheap. Client certificates are named by the SHA-256 fingerprint of their DER bytes
(a common name can repeat across issuers; a fingerprint cannot).

Hygiene: a principal may carry an expiry (in its authenticated row; refused after it, with
the reason said), and the server keeps each principal's last use in a side table, written
behind the calls in batches (a call never waits on a disk write for it). From those,
:func:`review` ranks principals by risk, and ``tambua keys prune`` revokes the unused ones;
``tambua keys rotate-key`` gives a key's holder a new key while the old one stays valid
for a grace period (no downtime while devices are updated).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from matcher.errors import InvalidInput, KeyMismatch, PermissionDenied, RecordTampered, Unauthenticated
from matcher.repository import SecretKeeper
from tambua.audit import AuditLog
from tambua.interceptors import OPEN_SERVICES, final_code, method_name, rewrap

log = logging.getLogger(__name__)

ROLES = ("registrar", "verifier", "adjudicator", "auditor", "admin")
ALL_PARTITIONS = "*"
DEFAULT_PARTITION = "default"


def partition_of(request) -> str:
    """A request's partition: an empty one is the default partition (said here only)."""
    return getattr(request, "partition", "") or DEFAULT_PARTITION
_KEY_PREFIX = "tmb"

# RPC -> roles that may call it (any one suffices); enrol-anyway (``force``) is
# adjudication and needs ``adjudicator`` (see authorize()). Verify and Compare answer about one claimed subject or one pair
# and never return other subject ids: what a distribution point needs and no more.
RULES: dict[str, frozenset[str]] = {
    "Enroll": frozenset({"registrar"}),
    "Identify": frozenset({"registrar"}),
    "Extract": frozenset({"registrar"}),
    "GetSubject": frozenset({"registrar", "adjudicator"}),
    "Verify": frozenset({"verifier"}),
    "Compare": frozenset({"verifier"}),
    "DeleteSubject": frozenset({"adjudicator"}),
    "ReadAudit": frozenset({"auditor"}),
    "Stats": frozenset({"admin"}),
    "SyncExport": frozenset({"admin"}),
    "SyncImport": frozenset({"admin"}),
    "SyncStatus": frozenset({"admin"}),
    "SyncPush": frozenset({"admin"}),
    "ListCases": frozenset({"adjudicator", "admin"}),
    "GetCase": frozenset({"adjudicator", "admin"}),
    "DecideCase": frozenset({"adjudicator", "admin"}),
    "AuditDuplicates": frozenset({"admin"}),
    "RunAudit": frozenset({"admin"}),
    "QualityReport": frozenset({"admin"}),
    "ExportSubject": frozenset({"admin"}),
    "Doctor": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        id: key id, or ``sha256:<hex>`` of a client certificate.
        kind: ``key``, ``cert`` or ``dev`` (insecure local development).
        name: what the administrator called it (a device, a partner, a person).
        roles: granted roles (subset of :data:`ROLES`).
        partitions: partitions it may touch; ``{"*"}`` for all.
    """

    id: str
    kind: str
    name: str
    roles: frozenset[str]
    partitions: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise InvalidInput(f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
        if not self.roles or not self.partitions:
            raise InvalidInput("a principal needs at least one role and one partition")

    def may_use(self, partition: str) -> bool:
        return ALL_PARTITIONS in self.partitions or (partition or DEFAULT_PARTITION) in self.partitions


DEV_PRINCIPAL = Principal("dev", "dev", "insecure local development", frozenset(ROLES), frozenset({ALL_PARTITIONS}))
# The caller of the call being served, set by AuthInterceptor (the servicer and the audit read it).
current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=DEV_PRINCIPAL)
# Subject ids a call touched beyond its request and response fields (a sync bundle's), for the audit.
_touched: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("touched", default=None)


def note_touched(subject_ids) -> None:
    """Record subject ids the current call read or wrote in bulk (sync), for its audit entry."""
    ids = _touched.get()
    if ids is not None:
        ids.extend(subject_ids)


@dataclass(frozen=True)
class PrincipalRecord:
    """A row of ``tambua keys list``: the principal and its life."""

    principal: Principal
    created_unix_ms: int
    revoked_unix_ms: int | None
    authentic: bool = True  # False: the row fails its MAC (altered, or never sealed); it is refused
    expires_unix_ms: int | None = None
    last_used_unix_ms: int | None = None  # as last flushed by a server (None: never used)
    calls: int = 0

    def expired(self, now_ms: int) -> bool:
        return _expired(self.expires_unix_ms, now_ms)

    def unused(self, now_ms: int, limit_ms: float) -> bool:
        """Not used for ``limit_ms`` (or never used, and created longer ago than that)."""
        return now_ms - (self.last_used_unix_ms or self.created_unix_ms) > limit_ms


def _expired(expires_ms: int | None, now_ms: float) -> bool:
    return expires_ms is not None and now_ms >= expires_ms


def certificate_id(pem: bytes) -> str:
    """``sha256:<hex>`` of a PEM certificate's DER bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise InvalidInput("not a PEM X.509 certificate") from e
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


_COLUMNS = "id, kind, name, roles, partitions, salt, digest, created_ms, revoked_ms, expires_ms"
_N = 10  # columns in _COLUMNS; the MAC follows them
_ROW_KEY = "access.sqlite/row-mac"  # what the row key is sealed under


class AccessStore:
    """The principals table (``access.sqlite``). Thread-safe; every read sees the latest
    committed state, so revocations by another process apply on the next call.

    Args:
        path: the database file.
        keeper: the encrypted subject store whose data key seals the row key.

    Raises:
        KeyMismatch: ``keeper`` is not encrypted (rows could not be authenticated).
        RecordTampered: the file's row key was not sealed by ``keeper`` (another store's
            file, or an altered one).
    """

    def __init__(self, path: Path, keeper: SecretKeeper) -> None:
        if not keeper.encrypted:
            raise KeyMismatch("principals are authenticated under the subject store's data key: "
                              "the store must be encrypted (kek_file or TAMBUA_KEK)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS principals (id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,"
            " roles TEXT NOT NULL, partitions TEXT NOT NULL, salt BLOB, digest BLOB,"
            " created_ms INTEGER NOT NULL, revoked_ms INTEGER, mac BLOB)")
        have = {r[1] for r in self._db.execute("PRAGMA table_info(principals)")}
        if "mac" not in have:
            self._db.execute("ALTER TABLE principals ADD COLUMN mac BLOB")  # a file from before row MACs
        if "expires_ms" not in have:
            self._db.execute("ALTER TABLE principals ADD COLUMN expires_ms INTEGER")  # before expiry
        # Last use: hygiene, not a grant (nothing here lets anyone in), so no MAC; written
        # behind the calls by note_use/flush_use.
        self._db.execute("CREATE TABLE IF NOT EXISTS last_use (id TEXT PRIMARY KEY, unix_ms INTEGER NOT NULL,"
                         " calls INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        # Two processes may open a new file at once: the first key written wins, both read it.
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('row_key', ?)",
                         (keeper.seal_secret(secrets.token_bytes(32), _ROW_KEY),))
        (sealed,) = self._db.execute("SELECT value FROM meta WHERE key = 'row_key'").fetchone()
        try:
            self._key = keeper.open_secret(sealed, _ROW_KEY)
        except RecordTampered as e:
            raise RecordTampered(f"{path.name}: its row key is not sealed by this store's data key "
                                 "(the file of another store, or altered)") from e
        self._lock = threading.Lock()
        self._cert_ids: dict[bytes, str] = {}  # PEM -> id: parsing a certificate per call costs more
        self._uses: dict[str, list[int]] = {}  # principal id -> [last use ms, calls] not yet written
        self._uses_lock = threading.Lock()

    def close(self) -> None:
        self.flush_use()
        self._db.close()

    def note_use(self, principal_id: str) -> None:
        """Remember that a principal made a call now; written by the next :meth:`flush_use`."""
        now = int(time.time() * 1000)
        with self._uses_lock:
            seen = self._uses.setdefault(principal_id, [now, 0])
            seen[0] = now
            seen[1] += 1

    def flush_use(self) -> int:
        """Write the uses noted since the last flush in one transaction; returns principals written."""
        with self._uses_lock:
            uses, self._uses = self._uses, {}
        if uses:
            with self._write():
                self._db.executemany(
                    "INSERT INTO last_use VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                    " unix_ms = MAX(unix_ms, excluded.unix_ms), calls = calls + excluded.calls",
                    [(pid, ms, n) for pid, (ms, n) in uses.items()])
        return len(uses)

    def policy(self) -> dict:
        """What the server's configuration set for new keys (``key_lifetime_days``), as it
        last started; the host's ``keys create`` applies it."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key = 'policy'").fetchone()
        return json.loads(found[0]) if found else {}

    def set_policy(self, policy: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('policy', ?)", (json.dumps(policy, sort_keys=True),))

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, rolled back on any error (another process may write too)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _mac(self, row: tuple) -> bytes:
        """HMAC of a row's columns (``_COLUMNS``, in order) in one unambiguous spelling. A
        row without an expiry is spelled without that column, as rows were before expiry
        existed (their MACs still hold); adding or removing an expiry breaks the MAC."""
        row = row[:9] if row[9] is None else row
        body = [v.hex() if isinstance(v, bytes) else v for v in row]
        return hmac.new(self._key, json.dumps(body, separators=(",", ":")).encode(), hashlib.sha256).digest()

    def _authentic(self, row: tuple, mac: bytes | None) -> bool:
        return mac is not None and hmac.compare_digest(mac, self._mac(row))

    def _insert(self, p: Principal, salt: bytes | None, digest: bytes | None, expires_ms: int | None) -> None:
        now = int(time.time() * 1000)
        if expires_ms is not None and expires_ms <= now:
            raise InvalidInput("the expiry is in the past")
        row = (p.id, p.kind, p.name, ",".join(sorted(p.roles)), ",".join(sorted(p.partitions)),
               salt, digest, now, None, expires_ms)
        with self._lock:
            try:
                self._insert_row(row)
            except sqlite3.IntegrityError as e:
                raise InvalidInput(f"principal {p.id} is already registered") from e

    def _insert_row(self, row: tuple) -> None:
        """Write a row (``_COLUMNS``, in order) with its MAC (caller holds the lock)."""
        self._db.execute(f"INSERT INTO principals ({_COLUMNS}, mac) VALUES ({', '.join('?' * (_N + 1))})",
                         (*row, self._mac(row)))

    def create_key(self, name: str, roles: set[str], partitions: set[str],
                   expires_ms: int | None = None) -> tuple[Principal, str]:
        """Create an API key (``expires_ms``: refused from then on; None: never). Returns the
        principal and the key, shown this once only."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        p = Principal(key_id, "key", name, frozenset(roles), frozenset(partitions))
        salt = secrets.token_bytes(16)
        self._insert(p, salt, _digest(salt, secret), expires_ms)
        return p, f"{_KEY_PREFIX}_{key_id}_{secret}"

    def add_certificate(self, pem: bytes, name: str, roles: set[str], partitions: set[str],
                        expires_ms: int | None = None) -> Principal:
        """Grant roles to the holder of a client certificate (issued by the configured CA)
        until ``expires_ms`` (None: as long as the certificate itself is valid)."""
        p = Principal(certificate_id(pem), "cert", name, frozenset(roles), frozenset(partitions))
        self._insert(p, None, None, expires_ms)
        return p

    def rotate_key(self, key_id: str, grace_ms: int) -> tuple[Principal, str, int]:
        """A new key for the holder of ``key_id`` (same name, roles and partitions, and the
        old key's expiry if it had one); the old key stays valid for ``grace_ms`` more (or
        until its own expiry, if sooner), then is refused as expired, so devices can be
        moved over without downtime. Returns the new principal, its key, and when the old
        key expires (as stored: what the caller tells the holder).

        Raises:
            InvalidInput: no active, authentic API key ``key_id``.
        """
        now = int(time.time() * 1000)
        with self._write():
            found = self._unrevoked(key_id)
            if found is None or found[0][1] != "key" or not self._authentic(*found):
                raise InvalidInput(f"no active API key {key_id!r}")
            row = found[0]
            if _expired(row[9], now):
                raise InvalidInput(f"API key {key_id!r} has expired: create a new one")
            old = _principal(row)
            secret = secrets.token_urlsafe(32)
            new = Principal(secrets.token_hex(8), "key", old.name, old.roles, old.partitions)
            salt = secrets.token_bytes(16)
            fresh = (new.id, "key", row[2], row[3], row[4], salt, _digest(salt, secret), now, None, row[9])
            self._insert_row(fresh)
            ends = now + max(0, grace_ms)
            if row[9] is None or ends < row[9]:
                shortened = (*row[:9], ends)
                self._db.execute("UPDATE principals SET expires_ms = ?, mac = ? WHERE id = ?",
                                 (ends, self._mac(shortened), key_id))
            else:
                ends = row[9]
        return new, f"{_KEY_PREFIX}_{new.id}_{secret}", ends

    def revoke(self, principal_id: str) -> bool:
        """Revoke a key or certificate at once. Returns False if it is unknown or already revoked.

        A row that fails its MAC is marked revoked but not given a new MAC: revoking must
        never make an altered row authentic.
        """
        with self._write():
            found = self._unrevoked(principal_id)
            if found is not None:
                row, mac = found
                revoked = (*row[:8], int(time.time() * 1000), row[9])
                self._db.execute("UPDATE principals SET revoked_ms = ?, mac = ? WHERE id = ?",
                                 (revoked[8], self._mac(revoked) if self._authentic(row, mac) else mac, principal_id))
        return found is not None

    def list(self) -> list[PrincipalRecord]:
        """Every principal, revoked ones and ones that fail their MAC included."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join('p.' + c for c in _COLUMNS.split(', '))}, p.mac, u.unix_ms, u.calls"
                " FROM principals p LEFT JOIN last_use u ON u.id = p.id ORDER BY p.created_ms, p.id").fetchall()
        return [PrincipalRecord(_principal(r), r[7], r[8], self._authentic(r[:_N], r[_N]), r[9], r[_N + 1],
                                r[_N + 2] or 0) for r in rows]

    def seal(self) -> list[PrincipalRecord]:
        """Give a MAC to every row that has none (written before rows were authenticated):
        the administrator vouches for them, once, after checking ``list``. Rows whose MAC
        is wrong are left alone. Returns the rows sealed."""
        with self._write():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM principals WHERE mac IS NULL").fetchall()
            self._db.executemany("UPDATE principals SET mac = ? WHERE id = ?", [(self._mac(r), r[0]) for r in rows])
        return [PrincipalRecord(_principal(r), r[7], r[8], expires_unix_ms=r[9]) for r in rows]

    def _unrevoked(self, principal_id: str) -> tuple[tuple, bytes | None] | None:
        """(row as ``_COLUMNS``, its MAC) of a principal not revoked, or None (caller holds the lock)."""
        found = self._db.execute(f"SELECT {_COLUMNS}, mac FROM principals WHERE id = ? AND revoked_ms IS NULL",
                                 (principal_id,)).fetchone()
        return None if found is None else (found[:_N], found[_N])

    def _active(self, principal_id: str) -> tuple | None:
        """The row of an unrevoked principal whose MAC holds, or None."""
        with self._lock:
            found = self._unrevoked(principal_id)
        if found is None:
            return None
        row, mac = found
        if not self._authentic(row, mac):
            log.error("principal %s refused: its access.sqlite row fails authentication (%s)", principal_id,
                      "never sealed: run `tambua keys seal`" if mac is None else "altered")
            return None
        return row

    @staticmethod
    def _unexpired(row: tuple, what: str) -> Principal:
        """The row's principal, unless its expiry has passed (said, with when, to the caller)."""
        if _expired(row[9], time.time() * 1000):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row[9] / 1000))
            raise Unauthenticated(f"this {what} expired at {when}: ask an administrator for a new one",
                                  "CREDENTIAL_EXPIRED")
        return _principal(row)

    def by_key(self, token: str) -> Principal | None:
        """The active principal an API key belongs to, or None."""
        prefix, _, rest = token.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != _KEY_PREFIX or not key_id or not secret:
            return None
        row = self._active(key_id)
        if row is None or row[1] != "key" or not hmac.compare_digest(row[6], _digest(row[5], secret)):
            return None
        return self._unexpired(row, "API key")

    def by_certificate(self, pem: bytes) -> Principal | None:
        """The active principal a verified client certificate was registered as, or None."""
        cert_id = self._cert_ids.get(pem)
        if cert_id is None:
            cert_id = certificate_id(pem)
            if len(self._cert_ids) < 10_000:
                self._cert_ids[pem] = cert_id
        row = self._active(cert_id)
        return None if row is None or row[1] != "cert" else self._unexpired(row, "client certificate's registration")


# What makes a principal a risk, and how much (the review's order). A grant nobody uses is
# a door nobody watches; a wide one opens more; an expired or altered row should not exist.
RISKS: dict[str, tuple[int, str]] = {
    "unauthentic": (100, "its row fails authentication (altered, or never sealed): it is refused; find out why"),
    "expired": (50, "expired but not revoked: revoke it"),
    "unused": (30, "not used for longer than the review's limit"),
    "never_used": (20, "never used since it was created"),
    "admin": (10, "holds the admin role"),
    "all_partitions": (10, "may use every partition"),
    "broad_roles": (10, "holds three or more roles"),
    "no_expiry": (5, "never expires"),
    "expires_soon": (2, "expires within 14 days"),
}


def review(records: list[PrincipalRecord], now_ms: int, unused_days: float) -> list[dict]:
    """Every unrevoked principal with its risks (:data:`RISKS`), riskiest first.

    Args:
        unused_days: a principal unused this long (or never used and this old) is ``unused``.
    """
    limit = unused_days * 86_400_000
    out = []
    for r in records:
        if r.revoked_unix_ms is not None:
            continue
        p, risks = r.principal, []
        if not r.authentic:
            risks.append("unauthentic")
        if r.expired(now_ms):
            risks.append("expired")
        risks += ["never_used"] if r.last_used_unix_ms is None else []
        risks += ["unused"] if r.unused(now_ms, limit) else []
        risks += [name for name, hit in (("admin", "admin" in p.roles), ("all_partitions", ALL_PARTITIONS in p.partitions),
                                         ("broad_roles", len(p.roles) >= 3),
                                         ("no_expiry", r.expires_unix_ms is None),
                                         ("expires_soon", r.expires_unix_ms is not None and not r.expired(now_ms)
                                          and r.expires_unix_ms - now_ms < 14 * 86_400_000)) if hit]
        out.append({"id": p.id, "kind": p.kind, "name": p.name, "roles": sorted(p.roles),
                    "partitions": sorted(p.partitions), "created_unix_ms": r.created_unix_ms,
                    "expires_unix_ms": r.expires_unix_ms, "last_used_unix_ms": r.last_used_unix_ms, "calls": r.calls,
                    "risk": sum(RISKS[k][0] for k in risks), "risks": risks,
                    "why": [RISKS[k][1] for k in risks]})
    out.sort(key=lambda e: (-e["risk"], e["last_used_unix_ms"] or 0, e["id"]))
    return out


def unused(records: list[PrincipalRecord], now_ms: int, unused_days: float) -> list[PrincipalRecord]:
    """Unrevoked principals not used for ``unused_days`` (or never, and created longer ago):
    what ``keys prune`` revokes."""
    return [r for r in records if r.revoked_unix_ms is None and r.unused(now_ms, unused_days * 86_400_000)]


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def _principal(row: tuple) -> Principal:
    """The principal of a row (its first five columns)."""
    return Principal(row[0], row[1], row[2], frozenset(row[3].split(",")), frozenset(row[4].split(",")))


def authorize(principal: Principal, method: str, request) -> None:
    """Raise :class:`PermissionDenied` unless ``principal`` may make this call.

    Args:
        method: the RPC's short name (``Enroll``).
        request: the request message: its ``partition`` (or ``partitions``), ``force`` and
            ``skip_dedup`` fields are checked.
    """
    # Enrol-anyway is adjudication; enrolling without deduplication (a legacy import loaded
    # first and audited after) is an administrator's call.
    special = ("force" if request.force else "skip_dedup" if request.skip_dedup else "") if method == "Enroll" else ""
    needed = {"force": frozenset({"adjudicator"}), "skip_dedup": frozenset({"admin"})}.get(special, RULES.get(method))
    if needed is None:
        raise PermissionDenied(f"{method} is not open to any role")
    if not principal.roles & needed:
        raise PermissionDenied(f"{method}{' with ' + special if special else ''} needs the role "
                               f"{' or '.join(sorted(needed))}; {principal.name!r} has "
                               f"{', '.join(sorted(principal.roles))}")
    if hasattr(request, "partition") and not principal.may_use(request.partition):
        raise PermissionDenied(f"{principal.name!r} may not use partition {partition_of(request)!r}")
    for partition in getattr(request, "partitions", ()):  # a call over several partitions (reports)
        if not principal.may_use(partition):
            raise PermissionDenied(f"{principal.name!r} may not use partition {partition!r}")


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call (client certificate first, else an API key in the
    ``authorization: Bearer <key>`` metadata) and authorises it by :func:`authorize`.

    With ``store`` None the server runs in insecure development mode: every caller is
    :data:`DEV_PRINCIPAL`. The principal is passed on to the servicer via ``current``.

    Args:
        store: the principals; None for insecure development mode.
        abort: ``abort(context, error)`` ends a call with the service's one error mapping.
        api_keys: whether API keys are accepted (False: client certificates only).
        audit: where every Matcher call is recorded, refused ones included (None: nowhere).
        on_refused: ``on_refused(method, error)`` for each call refused here (metrics).
        cert_port: in mixed mode, the port where client certificates are taken (named in
            the refusal of a caller without credentials).
    """

    def __init__(self, store: AccessStore | None, abort, api_keys: bool = True, audit: AuditLog | None = None,
                 on_refused=None, cert_port: int | None = None) -> None:
        self.store, self.abort, self.api_keys, self.audit = store, abort, api_keys, audit
        self.on_refused, self.cert_port = on_refused, cert_port

    def authenticate(self, context) -> Principal:
        if self.store is None:
            return DEV_PRINCIPAL
        auth = context.auth_context() or {}
        pems = auth.get("x509_pem_cert")
        if pems:
            p = self.store.by_certificate(pems[0])
            if p is None:
                raise Unauthenticated("this client certificate is not registered or was revoked")
            self.store.note_use(p.id)
            return p
        md = dict(context.invocation_metadata() or ())
        header = md.get("authorization", "")
        if not self.api_keys:
            raise Unauthenticated("a client certificate is required")
        if not header.startswith("Bearer "):
            elsewhere = f" (client certificates connect to port {self.cert_port})" if self.cert_port else ""
            raise Unauthenticated("no credentials: present a client certificate or 'authorization: Bearer <key>'"
                                  + elsewhere)
        p = self.store.by_key(header[len("Bearer "):].strip())
        if p is None:
            raise Unauthenticated("unknown or revoked API key")
        self.store.note_use(p.id)
        return p

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):  # liveness says nothing about anyone
            return handler
        short = method_name(method)
        # Reflection and future streams: authenticated callers only. A request that does not
        # parse reaches the guard as _Malformed, answered INVALID_ARGUMENT (gRPC: INTERNAL).
        return rewrap(handler, lambda b: self._guard(b, short), lambda b: self._guard_stream(b, short),
                      _lenient(handler.request_deserializer) if handler.unary_unary is not None else None)

    def _admit(self, request, context, short: str | None) -> Principal:
        """The caller, authenticated and authorised; a refusal is audited and aborts the call."""
        principal = None
        try:
            principal = self.authenticate(context)
            if isinstance(request, _Malformed):
                raise InvalidInput(f"the request is not a valid {short or 'protobuf'} message", "MALFORMED_REQUEST")
            if short is not None:
                authorize(principal, short, request)
            return principal
        except (Unauthenticated, PermissionDenied, InvalidInput) as e:
            log.warning("%s refused: %s", short or "call", e.reason)
            if self.on_refused is not None:
                self.on_refused(short, e)
            self._audit(principal, short, request, None, e.reason)
            self.abort(context, e)
            raise  # abort raises; this keeps the type checker and a stub abort honest

    def _guard(self, behaviour, short: str | None):
        def guarded(request, context):
            principal = self._admit(request, context, short)
            response, outcome = None, "OK"
            token = current.set(principal)
            touched = _touched.set([])
            try:
                response = behaviour(request, context)
                return response
            except BaseException:
                outcome = final_code(context).name
                raise
            finally:
                current.reset(token)
                extra = _touched.get()
                _touched.reset(touched)
                self._audit(principal, short, request, response, outcome, extra)

        return guarded

    def _guard_stream(self, behaviour, short: str | None):
        """As :meth:`_guard` for calls that answer with a stream (SyncPush): the audit entry
        is written when the stream ends, with its outcome and every subject it touched,
        not when it opens."""
        def guarded(request, context):
            principal = self._admit(request, context, short)
            outcome = "OK"
            token = current.set(principal)
            touched = _touched.set([])
            try:
                yield from behaviour(request, context)
            except GeneratorExit:  # the client went away mid-stream
                outcome = "CANCELLED"
                raise
            except BaseException:
                outcome = final_code(context).name
                raise
            finally:
                extra = _touched.get()
                current.reset(token)
                _touched.reset(touched)
                self._audit(principal, short, request, None, outcome, extra)

        return guarded

    def _audit(self, principal: Principal | None, short: str | None, request, response, outcome: str,
               extra: list[str] | None = None) -> None:
        if self.audit is None or short is None:
            return
        if isinstance(request, _Malformed):
            request = None
        ids = [request.subject_id] if getattr(request, "subject_id", "") else []
        ids += [c.subject_id for c in getattr(response, "candidates", ())]
        ids += extra or []
        self.audit.append(principal.id if principal else "", principal.name if principal else "unauthenticated",
                          short, partition_of(request) if hasattr(request, "partition") else "",
                          tuple(dict.fromkeys(ids)), outcome)


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the guard can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""


def _lenient(deserialize):
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: the caller's bytes
            return _Malformed()

    return parse
