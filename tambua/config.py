"""The one service configuration: defaults, then a TOML file, then ``TAMBUA_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from enroll.finger.networks import AUTO, NETWORKS
from matcher.engine import Thresholds

FINGER_NETWORKS = (AUTO, *NETWORKS)


@dataclass(frozen=True)
class Config:
    """Validated at construction; passed into constructors, never read from globals.

    Attributes:
        host / port: gRPC listen address (port 0 picks a free port).
        metrics_port: Prometheus HTTP port (0 picks a free one, -1 disables).
        data_dir: folder of the subject store.
        workers: gRPC worker threads (requests in flight).
        max_message_mb: largest request accepted.
        verify_fmr / dedup_fpir / max_candidates: decision rates (see the model cards).
        identify_fpir: Identify returns candidates at or below this FPIR unless the
            request asks for another (``max_fpir``; 1 lists every ranked candidate).
        clear_match_fpir: the doubtful band's lower edge: a duplicate whose vouched FPIR
            is at or below it is decided without a person (0: every duplicate to a person;
            see :class:`matcher.engine.Thresholds`).
        grace_s: seconds in-flight requests get at shutdown.
        insecure: plain-text gRPC and no authentication, for local development only.
        tls_cert / tls_key: the server's PEM certificate chain and key (required unless insecure).
        client_ca: PEM of the CA that issues client certificates: enables mutual TLS; a
            registered certificate identifies its holder (``tambua keys create --cert``).
        api_keys: accept API keys from callers without a client certificate; with
            ``client_ca`` set and this off, a client certificate is required to connect.
        mtls_port: with ``client_ca`` set and ``api_keys`` on (mixed mode), the port where
            holders of client certificates connect (``port`` takes API keys). grpcio can
            ask for a client certificate only by requiring one, so one port cannot take both.
        kek_file: the key-encryption key (64 hex digits or base64 of 32 bytes); else
            ``$TAMBUA_KEK``. Required unless insecure: templates are encrypted at rest.
        finger_network: the minutiae network: ``auto`` (default: the network the
            store's finger templates were made with, ``leader`` for a store with none),
            ``leader`` (the most accurate) or ``lite`` (~4x faster, less accurate on
            some sensors: see the finger model card; ``lite-v2`` and ``lite-v1`` serve
            stores filled with earlier lite networks). Templates of one cannot be searched by
            another, so a store keeps the network it was filled with.
        cluster: ``HOST:PORT`` of a Ray cluster to join (cluster mode, see the README);
            empty: one process holds everything (the default).
        shards: in cluster mode, how many shards hold the galleries (set by the first
            front-end to start; later ones join what exists).
        replicas: in cluster mode, copies of each shard, on different nodes: with 2,
            searches keep answering while a node is down.
        keep_images: sample images kept (sealed) for adjudication: ``cases`` (default:
            the captures held by cases), ``all`` (every enrolment's too, so that a
            candidate's images show beside a probe's) or ``none``.
        image_retention_days: a decided case's images are dropped this long after the
            decision (0: at once).
        web_port: the adjudication pages' HTTPS port (HTTP when insecure); -1 (default)
            serves none, 0 picks a free one.
        key_lifetime_days: how long a key or certificate created on this server's host
            with no ``--expires`` stays valid (0: until revoked). The server records it
            in ``access.sqlite`` when it starts; ``tambua keys create`` applies it.
        last_use_flush_s: how often each principal's last use is written to
            ``access.sqlite`` (batched, behind the calls; ``tambua keys review`` reads it).
        sync_max_lag: how long a peer site may go without a successful sync before
            ``tambua doctor`` and the alert rules call it late: one duration for every
            peer (``24h``), or per site with a default (``camp-a=6h,camp-b=2d,24h``; in
            TOML also a table, ``[sync_max_lag]`` with ``camp-a = "6h"`` and ``"*" = "24h"``).
        enrolment_stall: a site that enrols nothing for this long is reported (``6h``;
            empty: not checked, the default: many sites are quiet at night and weekends).
        disk_min_free: the data directory's file system should keep this share free (0.1).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    data_dir: Path = Path("tambua-data")
    workers: int = 8
    max_message_mb: int = 32
    verify_fmr: float = 1e-3
    dedup_fpir: float = 1e-2
    max_candidates: int = 10
    identify_fpir: float = 1e-2
    clear_match_fpir: float = 1e-6
    grace_s: float = 5.0
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    api_keys: bool = True
    mtls_port: int = 50052
    kek_file: Path | None = None
    finger_network: str = AUTO
    cluster: str = ""
    shards: int = 2
    replicas: int = 1
    keep_images: str = "cases"
    image_retention_days: float = 90.0
    web_port: int = -1
    key_lifetime_days: float = 0.0
    last_use_flush_s: float = 10.0
    sync_max_lag: str = "24h"
    enrolment_stall: str = ""
    disk_min_free: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535 and 0 <= self.mtls_port <= 65535 and -1 <= self.metrics_port <= 65535
                and -1 <= self.web_port <= 65535):
            raise ValueError("ports must be within 0..65535 (metrics_port and web_port -1 disable)")
        if self.keep_images not in ("none", "cases", "all"):
            raise ValueError(f"keep_images must be none, cases or all, not {self.keep_images!r}")
        if self.image_retention_days < 0 or self.key_lifetime_days < 0:
            raise ValueError("image_retention_days and key_lifetime_days must not be negative")
        if self.last_use_flush_s <= 0:
            raise ValueError("last_use_flush_s must be positive")
        self.max_lag_s("")  # noqa: B018 - validates sync_max_lag
        if self.enrolment_stall:
            duration_s(self.enrolment_stall)
        if not 0 <= self.disk_min_free < 1:
            raise ValueError("disk_min_free is a share of the disk: 0 to 1")
        if self.workers < 1 or self.max_message_mb < 1 or self.shards < 1 or self.replicas < 1:
            raise ValueError("workers, max_message_mb, shards and replicas must be positive")
        self.thresholds  # noqa: B018 - validates the rates
        if self.finger_network not in FINGER_NETWORKS:
            raise ValueError(f"finger_network must be one of {', '.join(FINGER_NETWORKS)}, not {self.finger_network!r}")
        if not self.insecure and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("TLS needs tls_cert and tls_key (TAMBUA_TLS_CERT / TAMBUA_TLS_KEY); "
                             "for local development only, set insecure = true (--insecure)")
        if not self.insecure and not self.api_keys and self.client_ca is None:
            raise ValueError("api_keys = false leaves client certificates as the only way in: set client_ca")
        if self.mixed_mode and self.port and self.port == self.mtls_port:
            raise ValueError(f"port and mtls_port are both {self.port}: API keys and client certificates "
                             "need a port each")

    @property
    def mixed_mode(self) -> bool:
        """API keys on ``port`` and client certificates on ``mtls_port``."""
        return not self.insecure and self.client_ca is not None and self.api_keys

    def max_lag_s(self, site: str) -> float:
        """``sync_max_lag`` for one peer site, in seconds."""
        default, per_site = None, {}
        for part in filter(None, (p.strip() for p in self.sync_max_lag.split(","))):
            name, _, limit = part.rpartition("=")
            if name in ("", "*"):
                default = duration_s(limit)
            else:
                per_site[name.strip()] = duration_s(limit)
        if site in per_site:
            return per_site[site]
        if default is None:
            raise ValueError(f"sync_max_lag {self.sync_max_lag!r} gives no default (add one: ...,24h)")
        return default

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.verify_fmr, self.dedup_fpir, self.max_candidates, self.identify_fpir,
                          self.clear_match_fpir)

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None, **overrides) -> "Config":
        """Defaults < file (TOML, keys as the attributes) < ``TAMBUA_<ATTR>`` env < explicit overrides."""
        values: dict = {}
        if path is not None:
            values.update(tomllib.loads(Path(path).read_text()))
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        for name in fields:
            if f"TAMBUA_{name.upper()}" in env:
                values[name] = env[f"TAMBUA_{name.upper()}"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        typed = {}
        for name, value in values.items():
            typed[name] = _typed(fields[name], value)
        return cls(**typed)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def duration_s(text: str) -> float:
    """``90d``, ``12h``, ``30m`` or ``45s`` in seconds.

    Raises:
        ValueError: anything else, or a negative duration.
    """
    text = text.strip()
    try:
        value = float(text[:-1])
    except ValueError:
        value = -1.0
    if text[-1:] not in _UNITS or value < 0:
        raise ValueError(f"{text!r} is not a duration: a number and d, h, m or s (90d, 12h)")
    return value * _UNITS[text[-1]]


def _typed(field: dataclasses.Field, value):
    """A file or environment value as the field's type (paths, booleans spelt as words)."""
    if field.name == "sync_max_lag" and isinstance(value, dict):  # a TOML table: site = "6h"
        return ",".join(f"{site}={limit}" for site, limit in sorted(value.items()))
    if value is None or "Path" in str(field.type):
        return None if value in (None, "") else Path(value)
    if isinstance(field.default, bool) and isinstance(value, str):
        if value.lower() not in _TRUE | _FALSE:
            raise ValueError(f"{field.name}: expected true or false, got {value!r}")
        return value.lower() in _TRUE
    return type(field.default)(value)
