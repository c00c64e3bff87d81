"""Bulk import of legacy records through a running server: ``tambua import --manifest`` or
``--nist`` (ANSI/NIST-ITL transactions, one subject each: ``tambua/ansi_nist.py``).

A manifest lists samples, one per line: CSV with a header, or JSON Lines, with the keys
``subject_id, partition, modality, position, path`` (modality ``face``, ``finger`` or
``iris``; position 1-10 for a finger, ``left`` or ``right`` for an iris, empty for a face;
the path relative to the manifest; other keys are the record's metadata, kept in the
report). The lines of one subject (partition and id) make one record, enrolled by one
``Enroll`` call, so a record is stored whole or not at all; several calls are in flight at
once so that the server extracts on every core.

Idempotent and resumable: each record carries an import key (a hash of its id and its
images), so the server answers a record it enrolled already as ``replayed`` and stores
nothing; and a state file beside the manifest lists the records done, so a run killed at
any moment and started again sends only what is left. Every record that fails is in the
report with its reason (the server's, or the manifest's own: a missing file, an unknown
modality, a position out of range). ``dedup``: ``hold`` (the default) deduplicates each
record as it goes and holds the doubtful duplicates as adjudication cases; ``refuse``
reports duplicates and stores nothing; ``skip`` loads without deduplicating (an admin's
choice, for an audit after).

Owns the manifest, the state file, the report and the progress display; talks to the
server through the generated stub only (no server code).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tambua import ansi_nist
from tambua.status import reason_of

FIELDS = ("subject_id", "partition", "modality", "position", "path")
EYES = {"right": 1, "left": 2}  # ISO/IEC 19794-6 eye labels, as the CLI's --iris
DEDUP_MODES = ("hold", "refuse", "skip")


@dataclass(frozen=True)
class Row:
    """One sample line of the manifest."""

    line: int
    subject_id: str
    partition: str
    modality: str
    position: int
    path: Path
    metadata: dict = field(default_factory=dict, compare=False)
    member: str = ""  # an ANSI/NIST-ITL file's record (``TYPE.IDC``) that holds the sample


@dataclass(frozen=True)
class Record:
    """One subject's lines: enrolled together or not at all."""

    partition: str
    subject_id: str
    rows: tuple[Row, ...]

    def signature(self) -> str:
        """What the state file remembers a record by: its lines and their files' sizes and
        times (cheap: no image is read to skip a record done before)."""
        h = hashlib.sha256(json.dumps([self.partition, self.subject_id]).encode())
        for r in self.rows:
            st = r.path.stat()
            h.update(json.dumps([r.modality, r.position, str(r.path), st.st_size, st.st_mtime_ns]).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What became of one record: ``enrolled``, ``duplicate`` (with its case, or beyond
    doubt), ``already`` (done before), or ``failed`` with a reason."""

    record: Record
    outcome: str
    reason: str = ""
    message: str = ""
    case_id: str = ""
    candidates: tuple[str, ...] = ()


def _row(line: int, d: dict, base: Path) -> Row:
    """A manifest line checked; ValueError(reason, message) when it cannot be a sample."""
    missing = [k for k in ("subject_id", "modality", "path") if not str(d.get(k) or "").strip()]
    if missing:
        raise ValueError("MISSING_FIELD", f"line {line}: no {', '.join(missing)}")
    modality = str(d["modality"]).strip().lower()
    position = str(d.get("position") or "").strip().lower()
    if modality == "face":
        if position not in ("", "0"):
            raise ValueError("BAD_POSITION", f"line {line}: a face has no position, not {position!r}")
        pos = 0
    elif modality == "finger":
        if not position.isdigit() or not 1 <= int(position) <= 10:
            raise ValueError("BAD_POSITION", f"line {line}: a finger's position is 1-10, not {position!r}")
        pos = int(position)
    elif modality == "iris":
        if position not in EYES:
            raise ValueError("BAD_POSITION", f"line {line}: an iris is left or right, not {position!r}")
        pos = EYES[position]
    else:
        raise ValueError("UNKNOWN_MODALITY", f"line {line}: modality is face, finger or iris, not {modality!r}")
    path = (base / str(d["path"]).strip()).resolve()
    if not path.is_file():
        raise ValueError("FILE_MISSING", f"line {line}: no file {d['path']!r}")
    meta = {k: v for k, v in d.items() if k not in FIELDS}
    return Row(line, str(d["subject_id"]).strip(), str(d.get("partition") or "").strip(), modality, pos, path, meta)


def read_manifest(path: Path) -> tuple[list[Record], list[Outcome]]:
    """The records of a manifest (CSV with a header, or JSON Lines), and the ones that
    cannot be imported as they stand (a subject with a bad line fails whole, with that
    line's reason).

    Raises:
        ValueError: the file is neither (no header with the required columns).
    """
    text = path.read_text(encoding="utf-8-sig")
    base = path.parent
    if path.suffix.lower() in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    d = None
                raw.append((n, d if isinstance(d, dict) else None))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"subject_id", "modality", "path"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a manifest needs a header with {', '.join(FIELDS)}")
        raw = [(n, d) for n, d in enumerate(reader, 2)]
    rows: dict[tuple[str, str], list[Row]] = {}
    bad: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
    unreadable = []
    for n, d in raw:
        if d is None:
            unreadable.append(Outcome(Record("", "", (Row(n, "", "", "", 0, Path()),)), "failed", "MALFORMED",
                                      f"line {n} is not a JSON object"))
            continue
        key = (str(d.get("partition") or "").strip(), str(d.get("subject_id") or "").strip())
        try:
            rows.setdefault(key, []).append(_row(n, d, base))
        except ValueError as e:  # kept as written, for the report
            rows.setdefault(key, []).append(Row(n, key[1], key[0], str(d.get("modality") or ""), 0,
                                                Path(str(d.get("path") or "")),
                                                {k: v for k, v in d.items() if k not in FIELDS}))
            bad.setdefault(key, []).append((n, *e.args))
    records, failed = [], list(unreadable)
    for key, group in rows.items():
        seen = Counter((r.modality, r.position) for r in group)
        twice = [f"{m} {p}" for (m, p), k in seen.items() if k > 1]
        if twice and key not in bad:
            bad[key] = [(group[0].line, "DUPLICATE_SAMPLE", f"{key[1]!r} lists {', '.join(twice)} twice")]
        record = Record(key[0], key[1], tuple(group))
        if key in bad:
            line, reason, message = bad[key][0]
            failed.append(Outcome(record, "failed", reason, message))
        else:
            records.append(record)
    return records, failed


class State:
    """The records done, one JSON line each, appended and flushed as each finishes: what a
    run started again skips."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[tuple[str, str, str]] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    self.done.add((d["partition"], d["subject_id"], d["signature"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a kill: that record is sent again (the server knows it)
        self._file = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def has(self, record: Record, signature: str) -> bool:
        return (record.partition, record.subject_id, signature) in self.done

    def add(self, record: Record, signature: str, outcome: str) -> None:
        with self._lock:
            self._file.write(json.dumps({"partition": record.partition, "subject_id": record.subject_id,
                                         "signature": signature, "outcome": outcome}) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class Progress:
    """A bar on a terminal (items, rate, time left, failures); plain lines every
    ``every_s`` seconds otherwise (a log, a CI job)."""

    def __init__(self, total: int, stream=sys.stderr, every_s: float = 10.0, label: str = "import") -> None:
        self.total, self.stream, self.every_s, self.label = total, stream, every_s, label
        self.done = self.failed = self.skipped = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="subject", file=stream, dynamic_ncols=True, desc=label)

    def step(self, failed: bool) -> None:
        self.advance(self.done + 1, self.total, failed)

    def advance(self, done: int, total: int, failed: bool = False, skipped: int = 0) -> None:
        """``done`` of ``total`` so far (``skipped`` of them done before this run: not in the rate)."""
        if self.bar is not None and total != self.total:
            self.bar.total = total
        step, self.done, self.total = done - self.done, done, total
        self.failed += failed
        self.skipped = skipped
        if self.bar is not None:
            self.bar.update(step)
            self.bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        rate = (self.done - self.skipped) / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{int(left // 60)}m{int(left % 60):02d}s" if left != float("inf") else "?"
        return (f"{self.label}: {self.done}/{self.total} subjects ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.1f}/s, about {eta} left, {self.failed} failed")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_nist(paths: list[Path], partition: str = "", subject_field: str = ansi_nist.SUBJECT_FIELD
              ) -> tuple[list[Record], list[Outcome]]:
    """The records of ANSI/NIST-ITL transaction files (one subject a file; a folder stands
    for the files in it), and the files that cannot be imported, with their reasons."""
    files = sorted(f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p])
                   if f.is_file() and not f.name.startswith("."))  # not the state file kept in the folder
    records, failed = [], []
    for n, path in enumerate(files, 1):
        try:
            tx = ansi_nist.parse(path.read_bytes(), subject_field)
        except ansi_nist.NistError as e:
            failed.append(Outcome(Record(partition, "", (Row(n, "", partition, "", 0, path),)), "failed", e.reason,
                                  f"{path.name}: {e.message}"))
            continue
        rows = tuple(Row(n, tx.subject_id, partition, i.modality, i.position, path, {"kind": i.kind}, i.record)
                     for i in tx.samples())
        records.append(Record(partition, tx.subject_id, rows))
    return records, failed


def _samples(record: Record) -> tuple[list, str]:
    """The record's samples for Enroll and its import key (a hash of its id and sample bytes)."""
    from tambua.v1 import tambua_pb2 as pb

    modality = {"face": pb.FACE, "finger": pb.FINGER, "iris": pb.IRIS}
    h = hashlib.sha256(json.dumps([record.partition, record.subject_id]).encode())
    samples = []
    transactions: dict[Path, dict[str, ansi_nist.Item]] = {}
    for r in sorted(record.rows, key=lambda r: (r.modality, r.position)):
        if r.member:  # a record of an ANSI/NIST-ITL file (read once per file)
            if r.path not in transactions:
                tx = ansi_nist.parse(r.path.read_bytes())
                transactions[r.path] = {i.record + i.kind: i for i in tx.items}
            item = transactions[r.path][r.member + r.metadata["kind"]]
            data, dpi, as_image = item.data, item.dpi, item.kind == "image"
        else:
            data, dpi, as_image = r.path.read_bytes(), 0, True
        h.update(json.dumps([r.modality, r.position, hashlib.sha256(data).hexdigest()]).encode())
        samples.append(pb.Sample(modality=modality[r.modality], position=r.position, dpi=dpi,
                                 **({"image": data} if as_image else {"template": data})))
    return samples, h.hexdigest()


def enrol(stub, metadata, record: Record, dedup: str, timeout_s: float = 300) -> Outcome:
    """One record through Enroll."""
    from tambua.v1 import tambua_pb2 as pb

    try:
        samples, key = _samples(record)
    except OSError as e:
        return Outcome(record, "failed", "FILE_UNREADABLE", str(e.strerror or e))
    except (ansi_nist.NistError, KeyError) as e:  # the file changed since it was listed
        return Outcome(record, "failed", getattr(e, "reason", "NIST_CHANGED"),
                       getattr(e, "message", "the transaction no longer holds the sample it listed"))
    try:
        r = stub.Enroll(pb.EnrollRequest(subject_id=record.subject_id, partition=record.partition, samples=samples,
                                         hold=dedup == "hold", skip_dedup=dedup == "skip", import_key=key),
                        timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as e:
        return Outcome(record, "failed", reason_of(e), e.details() or "")
    if r.outcome == pb.EnrollResponse.ENROLLED:
        return Outcome(record, "already" if r.replayed else "enrolled")
    return Outcome(record, "duplicate", "CLEAR_MATCH" if r.clear_match else "", "", r.case_id,
                   tuple(c.subject_id for c in r.candidates))


def run(stub, metadata, manifest: Path | None = None, dedup: str = "hold", jobs: int = 2,
        state_path: Path | None = None, progress_stream=sys.stderr, nist: list[Path] = (), partition: str = "",
        subject_field: str = ansi_nist.SUBJECT_FIELD) -> tuple[list[Outcome], dict]:
    """Import a manifest, or ANSI/NIST-ITL files (``nist``: files or folders, into
    ``partition``): (every record's outcome, in input order; the summary)."""
    started = time.monotonic()
    if manifest is not None:
        records, outcomes = read_manifest(manifest)
        state_path = state_path or manifest.with_name(manifest.name + ".import-state")
    else:
        records, outcomes = read_nist(list(nist), partition, subject_field)
        first = Path(nist[0])
        state_path = state_path or (first / ".import-state" if first.is_dir() else
                                    first.with_name(first.name + ".import-state"))
    state = State(state_path)
    todo, signatures = [], {}
    for record in records:
        signatures[record] = record.signature()
        if state.has(record, signatures[record]):
            outcomes.append(Outcome(record, "already"))
        else:
            todo.append(record)
    progress = Progress(len(todo), progress_stream)
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            for out in pool.map(lambda rec: enrol(stub, metadata, rec, dedup), todo):
                outcomes.append(out)
                if out.outcome != "failed":  # a failure is tried again by the next run
                    state.add(out.record, signatures[out.record], out.outcome)
                progress.step(out.outcome == "failed")
    finally:
        progress.close()
        state.close()
    outcomes.sort(key=lambda o: o.record.rows[0].line if o.record.rows else 0)
    counts = Counter(o.outcome for o in outcomes)
    seconds = time.monotonic() - started
    summary = {"records": len(outcomes), "samples": sum(len(o.record.rows) for o in outcomes),
               "enrolled": counts["enrolled"], "duplicates": counts["duplicate"],
               "cases": sum(1 for o in outcomes if o.case_id), "already": counts["already"],
               "failed": counts["failed"],
               "failure_reasons": dict(Counter(o.reason for o in outcomes if o.outcome == "failed")),
               "seconds": round(seconds, 2), "records_per_s": round(len(todo) / max(seconds, 1e-9), 2)}
    return outcomes, summary


def write_report(outcomes: list[Outcome], path: Path) -> None:
    """Every manifest line with its record's outcome: CSV, or JSON when ``path`` ends .json."""
    rows = []
    for o in outcomes:
        for r in o.record.rows:
            rows.append({"line": r.line, "subject_id": o.record.subject_id, "partition": o.record.partition,
                         "modality": r.modality, "position": r.position,
                         "path": str(r.path) if r.path != Path() else "", "outcome": o.outcome, "reason": o.reason,
                         "message": o.message, "case_id": o.case_id, "candidates": " ".join(o.candidates),
                         **{f"meta_{k}": v for k, v in r.metadata.items()}})
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["line", "outcome", "reason"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
