"""The ``tambua`` command: ``serve`` and client commands (a stable contract for other tooling).

Client commands take ``--address HOST:PORT`` (default ``$TAMBUA_ADDRESS``, else
``localhost:50051``); ``--json`` prints
one JSON object on stdout. Errors exit non-zero with the gRPC status name and the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import grpc

from enroll.finger.networks import AUTO as FINGER_AUTO, NETWORKS as FINGER_NETWORKS
from matcher.errors import InvalidInput, TambuaError
from tambua.auth import ROLES


def _read(path: str | Path, what: str) -> bytes:
    """The bytes of a file the operator named, or exit with what and which file could not be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SystemExit(f"error: cannot read {what} {path}: {e.strerror or e}") from None


def _stub(args):
    """A stub over TLS when ``--ca`` is given (mutual with ``--cert``/``--key``), else plain text."""
    from tambua.v1 import tambua_pb2_grpc

    if not args.ca:
        return tambua_pb2_grpc.MatcherStub(grpc.insecure_channel(args.address))
    if bool(args.cert) != bool(args.key):
        raise SystemExit("error: --cert and --key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(args.ca, "the server CA (--ca)"),
        private_key=_read(args.key, "the client key (--key)") if args.key else None,
        certificate_chain=_read(args.cert, "the client certificate (--cert)") if args.cert else None)
    return tambua_pb2_grpc.MatcherStub(grpc.secure_channel(args.address, creds))


def _sync_local(args) -> int:
    """``sync identity`` and ``sync peer add``: files in the data directory (on the host)."""
    import sync

    data_dir = Path(args.data_dir)
    store = None
    try:
        if args.sync_command == "identity":
            from store.sealing import load_kek
            from store.sqlite import SubjectStore

            # The keys are sealed under the store's data key where the store is encrypted:
            # open it (with the KEK) if it exists or a KEK is given, else leave it uncreated.
            kek = load_kek(Path(args.kek_file) if args.kek_file else None)
            if kek is not None or (data_dir / "subjects.sqlite").exists():
                store = SubjectStore(data_dir / "subjects.sqlite", kek)
            keys = sync.SiteKeys.load(data_dir, store)
            if keys is None and args.site_id:
                keys = sync.SiteKeys.create(data_dir, args.site_id, store)
            if keys is None:
                print("error: this data directory has no site identity: give --site-id", file=sys.stderr)
                return 1
            if args.site_id and args.site_id != keys.site:
                print(f"error: this site is already {keys.site!r}", file=sys.stderr)
                return 1
            print(keys.identity().to_json())
        else:
            d = json.loads(args.identity.read_text())
            sync.Peers(data_dir).add(sync.SiteIdentity(d["site"], d["sign_key"], d["box_key"]))
            print(json.dumps({"peer_added": d["site"]}))
    except (TambuaError, OSError, ValueError, KeyError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    return 0


def _sync_rpc(args, stub, md) -> dict:
    from tambua.v1 import tambua_pb2 as pb

    if args.sync_command == "export":
        b = stub.SyncExport(pb.SyncExportRequest(to_site=args.to, from_seq=args.from_seq), timeout=300, metadata=md)
        args.out.write_bytes(b.data)
        return {"to": args.to, "first_seq": b.first_seq, "last_seq": b.last_seq, "changes": b.count,
                "out": str(args.out)}
    if args.sync_command == "push":
        from types import SimpleNamespace

        from tambua.push import push

        peer = _stub(SimpleNamespace(address=args.peer, ca=args.peer_ca, cert=args.peer_cert, key=args.peer_key))
        peer_md = [("authorization", f"Bearer {args.peer_api_key}")] if args.peer_api_key else None
        r = push(stub, peer, args.to, args.batch, md, peer_md)
        return {"to": args.to, "bundles": r.bundles, "applied": r.applied, "already": r.already,
                "acked_seq": r.acked_seq, "flagged": [_flag(f) for f in r.flagged]}
    if args.sync_command == "import":
        r = stub.SyncImport(pb.SyncImportRequest(data=_read(args.file, "the sync bundle")), timeout=600, metadata=md)
        if r.was_ack:
            return {"ack_from": r.from_site, "acked_seq": r.acked_seq}
        if args.ack_out:
            args.ack_out.write_bytes(r.ack)
        return {"from": r.from_site, "first_seq": r.first_seq, "last_seq": r.last_seq, "applied": r.applied,
                "already": r.already, "flagged": [_flag(f) for f in r.flagged]}
    r = stub.SyncStatus(pb.SyncStatusRequest(), timeout=30, metadata=md)
    now_ms = time.time() * 1000
    return {"site": r.site, "last_seq": r.last_seq, "peers": [
        {"site": p.site, "pending": p.pending, "acked_seq": p.acked_seq, "applied_seq": p.applied_seq,
         "last_import_unix_ms": p.last_import_unix_ms or None, "last_export_unix_ms": p.last_export_unix_ms or None,
         "last_ack_unix_ms": p.last_ack_unix_ms or None,
         "lag_s": round((now_ms - max(p.last_import_unix_ms, p.last_ack_unix_ms)) / 1000, 1)
         if max(p.last_import_unix_ms, p.last_ack_unix_ms) else None,
         "refused": p.refused, "gaps": p.gaps, "audit_head": p.audit_head or None} for p in r.peers],
        "flagged": [_flag(f) for f in r.flagged]}


def _flag(f) -> dict:
    return {"subject_id": f.subject_id, "partition": f.partition, "kind": f.kind, "site": f.site,
            "candidates": list(f.candidates)}


def _backup(args) -> int:
    """``tambua backup`` and ``tambua restore`` (on the server host)."""
    from dataclasses import asdict

    from tambua import backup

    try:
        if args.command == "backup":
            m = backup.backup(Path(args.data_dir), args.out)
        else:
            m = backup.restore(args.source, Path(args.data_dir))
    except TambuaError as e:
        print(f"error: {e.reason}: {e.message}", file=sys.stderr)
        return 1
    out = asdict(m)
    out.pop("files")
    _print(out, args.json)
    return 0


def _audit_verify(args) -> int:
    """``tambua audit verify``: exit 0 when the chain is whole, 1 with the first fault."""
    from store.sealing import load_kek
    from store.sqlite import SubjectStore
    from tambua.audit import KEY_NAME, verify

    head = None
    if args.head:
        seq, _, digest = args.head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise SystemExit("error: --head is SEQ:HASH (64 hex digits)")
        head = (int(seq), digest)
    data_dir = Path(args.data_dir)
    path = Path(args.log) if args.log else data_dir / "audit.jsonl"
    if not path.exists():
        print(f"error: no audit log at {path}", file=sys.stderr)
        return 1
    key = None
    if not args.unkeyed:  # the chain key is derived from the store's data key: open the store
        if not (data_dir / "subjects.sqlite").exists():
            print(f"error: no store in {data_dir}/ to take the chain's key from (--data-dir; --unkeyed for "
                  "a log from before the chain was keyed)", file=sys.stderr)
            return 1
        try:
            store = SubjectStore(data_dir / "subjects.sqlite", load_kek(Path(args.kek_file) if args.kek_file else None))
        except TambuaError as e:
            print(f"error: {e.message} (the audit chain is keyed under the store's data key: give "
                  "--kek-file or TAMBUA_KEK)", file=sys.stderr)
            return 1
        try:
            key = store.derive_key(KEY_NAME)
        finally:
            store.close()
    report = verify(path, head, key)
    _print({"ok": report.ok, "entries": report.entries, "head": f"{report.head[0]}:{report.head[1]}",
            "problem": report.problem}, args.json)
    return 0 if report.ok else 1


def _kek(args) -> int:
    """``keys new-kek`` and ``keys rotate``: the key-encryption key of encryption at rest."""
    from store import sealing
    from store.sqlite import SubjectStore

    if args.keys_command == "new-kek":
        print(sealing.new_key().hex())
        return 0
    path = Path(args.data_dir or "tambua-data") / "subjects.sqlite"
    if not path.exists():
        print(f"error: no store at {path}", file=sys.stderr)
        return 1
    try:
        old, new = sealing.load_kek(Path(args.old_kek_file)), sealing.load_kek(Path(args.new_kek_file))
        store = SubjectStore(path, old)
        try:
            out = {"kek_id": store.rotate_kek(old, new)}
        finally:
            store.close()
    except (TambuaError, OSError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    _print(out, args.json)
    return 0


def _keys(args) -> int:
    """``tambua keys create|list|review|prune|rotate-key|revoke|seal`` on the server's data
    directory (administrators)."""
    from matcher.errors import KeyMismatch
    from store.sealing import load_kek
    from store.sqlite import SubjectStore
    from tambua.audit import KEY_NAME as AUDIT_KEY
    from tambua import auth
    from tambua.auth import AccessStore

    if args.keys_command in ("new-kek", "rotate"):
        return _kek(args)

    data_dir = Path(args.data_dir or "tambua-data")
    if args.data_dir is None and not (data_dir / "subjects.sqlite").exists():
        # Named, a new data directory is one being prepared for a server; unnamed, creating
        # ./tambua-data would register the key where no server looks.
        print(f"error: no Tambua store in {data_dir}/: give the server's data directory (--data-dir or "
              "TAMBUA_DATA_DIR)", file=sys.stderr)
        return 1
    try:
        kek = load_kek(Path(args.kek_file) if args.kek_file else None)
        if kek is None:
            raise KeyMismatch("give the store's key-encryption key (--kek-file or TAMBUA_KEK): "
                              "principals are authenticated under the store's data key")
        subjects = SubjectStore(data_dir / "subjects.sqlite", kek)
        try:
            store = AccessStore(data_dir / "access.sqlite", subjects)
            audit_key = subjects.derive_key(AUDIT_KEY)
        finally:
            subjects.close()
    except (TambuaError, OSError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    now = int(time.time() * 1000)
    try:
        if args.keys_command == "create":
            partitions = set(args.partition or ["*"])
            lifetime = store.policy().get("key_lifetime_days", 0)
            expires = (_expiry(args.expires, now) if args.expires else
                       now + int(lifetime * 86_400_000) if lifetime else None)
            if args.cert:
                p, secret = store.add_certificate(_read(args.cert, "the client certificate (--cert)"), args.name,
                                                  set(args.role), partitions, expires), None
            else:
                p, secret = store.create_key(args.name, set(args.role), partitions, expires)
            out = {**_principal_json(p), "expires_unix_ms": expires}
            if secret:
                out["api_key"] = secret  # shown this once: only its salted hash is kept
            change = (f"create {p.id} ({p.kind} {p.name!r}; roles {','.join(sorted(p.roles))}; "
                      f"partitions {','.join(sorted(p.partitions))}"
                      f"{'; expires ' + _utc(expires) if expires else ''})")
        elif args.keys_command == "list":
            out = {"principals": [
                {**_principal_json(r.principal), "created_unix_ms": r.created_unix_ms,
                 "revoked_unix_ms": r.revoked_unix_ms, "authentic": r.authentic,
                 "expires_unix_ms": r.expires_unix_ms, "expired": r.expired(now),
                 "last_used_unix_ms": r.last_used_unix_ms, "calls": r.calls}
                for r in store.list()]}
            change = ""
        elif args.keys_command == "review":
            out = {"now_unix_ms": now, "unused_days": args.unused_days,
                   "principals": auth.review(store.list(), now, args.unused_days)}
            change = ""
            if not args.json:
                _print_review(out)
                return 0
        elif args.keys_command == "prune":
            stale = auth.unused(store.list(), now, args.unused_days)
            pruned = [r.principal for r in stale if args.dry_run or store.revoke(r.principal.id)]
            out = {"dry_run": args.dry_run, "unused_days": args.unused_days,
                   ("would_revoke" if args.dry_run else "revoked"): [
                       {**_principal_json(r.principal), "last_used_unix_ms": r.last_used_unix_ms}
                       for r in stale if r.principal in pruned]}
            change = "" if args.dry_run or not pruned else (
                f"prune (unused {args.unused_days:g} days): revoke {','.join(p.id for p in pruned)}")
        elif args.keys_command == "rotate-key":
            grace_ms = _duration_ms(args.grace)
            p, secret, old_expires = store.rotate_key(args.id, grace_ms)
            out = {**_principal_json(p), "api_key": secret, "replaces": args.id,
                   "old_key_expires_unix_ms": old_expires}
            change = f"rotate-key {args.id} -> {p.id} (the old key valid {args.grace} more)"
        elif args.keys_command == "seal":
            sealed = [r.principal for r in store.seal()]
            out = {"sealed": [_principal_json(p) for p in sealed]}
            change = f"seal {','.join(p.id for p in sealed)}" if sealed else ""
        else:
            if not store.revoke(args.id):
                print(f"error: no active key or certificate {args.id!r}", file=sys.stderr)
                return 1
            out = {"revoked": args.id}
            change = f"revoke {args.id}"
    except InvalidInput as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if change:
        _audit_on_host(data_dir, f"keys {change}", audit_key)
    _print(out, args.json)
    return 0


def _duration_ms(text: str) -> int:
    """``90d``, ``12h``, ``30m`` or ``45s`` in milliseconds."""
    from tambua.config import duration_s

    try:
        return int(duration_s(text) * 1000)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


def _expiry(text: str, now_ms: int) -> int | None:
    """``--expires``: ``never``, a duration from now (``90d``), or a UTC date or time
    (``2027-06-30``, ``2027-06-30T12:00``)."""
    import datetime

    if text == "never":
        return None
    if text[-1:] in "dhms" and text[:1].isdigit() and "-" not in text:
        return now_ms + _duration_ms(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--expires {text!r}: give never, a duration (90d, 12h) or a UTC date "
                           "(2027-06-30)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def _utc(unix_ms: int | None) -> str:
    return "never" if unix_ms is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix_ms / 1000))


def _print_review(out: dict) -> None:
    """``keys review`` for a person: riskiest first, each risk in words."""
    principals = out["principals"]
    print(f"{len(principals)} active keys and certificates, riskiest first "
          f"(unused: more than {out['unused_days']:g} days):")
    for e in principals:
        last = "never used" if e["last_used_unix_ms"] is None else f"last used {_utc(e['last_used_unix_ms'])}"
        print(f"\n{e['id']}  {e['kind']} {e['name']!r}  roles {', '.join(e['roles'])}; partitions "
              f"{', '.join(e['partitions'])}; {last}; expires {_utc(e['expires_unix_ms'])}  (risk {e['risk']})")
        for why in e["why"]:
            print(f"  - {why}")


def _print_doctor(out: dict) -> None:
    """``tambua doctor`` for a person: what needs action first, then what is fine."""
    site = f" at {out['site']}" if out.get("site") else ""
    if out["needs_action"]:
        print(f"{len(out['needs_action'])} things need action{site}:")
        for message in out["needs_action"]:
            print(f"  ! {message}")
    else:
        print(f"nothing needs action{site}")
    for f in out["findings"]:
        if f["ok"]:
            print(f"  ok {f['message']}")


def _principal_json(p) -> dict:
    return {"id": p.id, "kind": p.kind, "name": p.name, "roles": sorted(p.roles), "partitions": sorted(p.partitions)}


def _audit_on_host(data_dir: Path, action: str, key: bytes | None) -> None:
    """Record a change an administrator made on the server host (not through an RPC) in
    the data directory's audit log, chained with the server's own entries."""
    import getpass

    from tambua.audit import AuditLog

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = f"uid {os.getuid()}"
    audit = AuditLog(data_dir / "audit.jsonl", key)
    try:
        audit.append(f"host:{user}", f"{user} on the server host", action, "", (), "OK")
    finally:
        audit.close()


def _finger_arg(text: str) -> tuple[int, str]:
    """``POS=IMG`` with POS 1-10 (1 right thumb ... 10 left little, ISO/IEC 19794-4) or 0 unknown."""
    pos, sep, path = text.partition("=")
    if not sep or not pos.isdigit() or not 0 <= int(pos) <= 10 or not path:
        raise argparse.ArgumentTypeError(f"expected POS=IMG with POS 0-10, got {text!r}")
    return int(pos), path


_EYES = {"right": 1, "left": 2}  # ISO/IEC 19794-6 eye labels


def _iris_arg(text: str) -> tuple[int, str]:
    """``left=IMG`` or ``right=IMG``."""
    eye, sep, path = text.partition("=")
    if not sep or eye not in _EYES or not path:
        raise argparse.ArgumentTypeError(f"expected left=IMG or right=IMG, got {text!r}")
    return _EYES[eye], path


def _samples(args) -> list:
    """The request's samples from --face, repeated --finger POS=IMG and --iris EYE=IMG."""
    from tambua.v1 import tambua_pb2 as pb

    out = []
    if args.face:
        out.append(pb.Sample(modality=pb.FACE, position=0, image=_read(args.face, "image")))
    for pos, path in args.finger or []:
        out.append(pb.Sample(modality=pb.FINGER, position=pos, image=_read(path, "image"), dpi=args.dpi))
    for eye, path in args.iris or []:
        out.append(pb.Sample(modality=pb.IRIS, position=eye, image=_read(path, "image")))
    if not out:
        raise SystemExit("error: give --face IMG, --finger POS=IMG and/or --iris left|right=IMG")
    return out


def _templates(msgs) -> list[dict]:
    """Templates as JSON: what they are and their quality, never their bytes."""
    from tambua.v1 import tambua_pb2 as pb

    return [{"modality": pb.Modality.Name(t.modality).lower(), "position": t.position, "model_id": t.model_id,
             "quality": t.quality, "bytes": len(t.data), "quality_components": dict(sorted(t.quality_components.items()))}
            for t in msgs]


def _candidates(msgs) -> list[dict]:
    return [{"subject_id": c.subject_id, "score": c.score, "fpir": c.fpir} for c in msgs]


def _case(c) -> dict:
    """A case as JSON: ids, scores and the decision; never template bytes."""
    from tambua.v1 import tambua_pb2 as pb

    out = {"case_id": c.case_id, "partition": c.partition, "subject_id": c.subject_id,
           "state": pb.CaseState.Name(c.state).removeprefix("CASE_").lower(), "source": c.source, "kind": c.kind,
           "site": c.site, "opened_by": c.principal_name, "created_unix_ms": c.created_unix_ms,
           "candidates": [{"subject_id": x.subject_id, "score": x.score, "fpir": x.fpir, "vouched_fpir": x.vouched_fpir,
                           "samples": [{"modality": pb.Modality.Name(s.modality).lower(), "position": s.position,
                                        "score": s.score, "fmr": s.fmr} for s in x.samples]}
                          for x in c.candidates],
           "attempts": [{"unix_ms": a.unix_ms, "by": a.principal_name, "subject_id": a.subject_id,
                         "score": a.score} for a in c.attempts]}
    if c.templates:
        out["templates"] = _templates(c.templates)
    def decision(d) -> dict:
        return {"verdict": pb.Verdict.Name(d.verdict).lower(), "by": d.principal_name, "unix_ms": d.unix_ms,
                "reason": d.reason, "subject_id": d.subject_id, "attached": d.attached,
                "candidates": list(d.candidates), **({"removed": d.removed} if d.removed else {}),
                **({"site": d.site, "decided_in": d.decided_in} if d.site else {})}

    if c.HasField("decision"):
        out["decision"] = decision(c.decision)
    if c.conflicting:
        out["conflicting"] = [decision(d) for d in c.conflicting]
        out["supersedes"] = list(c.supersedes)
    return out


def _print_cases(out: dict) -> None:
    """Cases for a person at a terminal: a line per case, or one case's candidates and decision."""
    for c in out.get("cases", [out]):
        best = c["candidates"][0] if c["candidates"] else None
        print(f"{c['case_id']}  {c['state']:<9} {c['partition']}  held {c['subject_id']}  "
              f"{len(c['candidates'])} candidates" + (f", best {best['subject_id']} FPIR {best['fpir']:.1e}" if best
                                                     else "") + f"  opened by {c['opened_by'] or '?'}")
        if "cases" not in out:
            for x in c["candidates"]:
                per = ", ".join(f"{s['modality']} {s['position']}: {s['score']:.1f}" for s in x["samples"])
                print(f"  {x['subject_id']}: score {x['score']:.1f}, FPIR {x['fpir']:.1e} ({per})")
            if "decision" in c:
                d = c["decision"]
                print(f"  {d['verdict']} by {d['by']}" + (f" at {d['site']}" if "site" in d else "") +
                      f": {d['reason']}" + (f" -> use {d['subject_id']}" if d["subject_id"] else ""))
            for d in c.get("conflicting", ()):
                print(f"  conflicting: {d['verdict']} by {d['by']} at {d.get('site') or 'this site'}: {d['reason']}")
    if out.get("next_page_token"):
        print(f"more: --page-token {out['next_page_token']}")


def _cases_rpc(args, stub, md) -> dict:
    from tambua.v1 import tambua_pb2 as pb

    if args.cases_command == "list":
        state = {"open": pb.CASE_OPEN, "decided": pb.CASE_DECIDED, "withdrawn": pb.CASE_WITHDRAWN,
                 "any": pb.CASE_ANY}[args.state]
        r = stub.ListCases(pb.ListCasesRequest(partition=args.partition, state=state, source=args.source,
                                               min_age_s=args.min_age, limit=args.limit, page_token=args.page_token),
                           timeout=30, metadata=md)
        return {"cases": [_case(c) for c in r.cases], "next_page_token": r.next_page_token,
                "open_by_source": dict(r.open_by_source)}
    if args.cases_command == "show":
        return _case(stub.GetCase(pb.GetCaseRequest(case_id=args.case_id, partition=args.partition),
                                  timeout=30, metadata=md))
    verdict = pb.SAME_PERSON if args.same else pb.DIFFERENT_PEOPLE if args.different else pb.RECAPTURE
    return _case(stub.DecideCase(pb.DecideCaseRequest(case_id=args.case_id, partition=args.partition,
                                                      verdict=verdict, subject_id=args.same or "",
                                                      discard=args.discard, reason=args.reason),
                                 timeout=60, metadata=md))


def _print(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def _export(args, r) -> dict:
    """``tambua export``: the files written, and what they hold."""
    from tambua import ansi_nist, iso19794
    from tambua.v1 import tambua_pb2 as pb

    names = {pb.FACE: "face", pb.FINGER: "finger", pb.IRIS: "iris"}
    templates = [(names[t.modality], t.position, t.data, t.iso19794_2) for t in r.subject.templates]
    images = [(names[i.modality], i.position, i.data) for i in r.images]
    out = {"subject_id": r.subject.subject_id, "templates": len(templates), "images": len(images), "files": []}
    if args.nist:
        args.nist.parent.mkdir(parents=True, exist_ok=True)
        args.nist.write_bytes(ansi_nist.build(r.subject.subject_id, templates, images))
        out["files"].append(str(args.nist))
    if args.iso:
        args.iso.mkdir(parents=True, exist_ok=True)
        for name, data in iso19794.records(templates, images).items():
            path = args.iso / f"{r.subject.subject_id}{name}"
            path.write_bytes(data)
            out["files"].append(str(path))
    return out


def _run_audit(stub, md, request):
    """RunAudit's stream with a progress bar (a line every 10 s off a terminal); its result."""
    from tambua.importer import Progress

    progress = None
    try:
        for message in stub.RunAudit(request, timeout=24 * 3600, metadata=md):
            if message.HasField("result"):
                return message.result
            if progress is None:  # the first message: where it starts (what an earlier run searched)
                progress, resumed = Progress(message.subjects, label="audit"), message.searched
            progress.advance(message.searched, message.subjects, skipped=resumed)
    finally:
        if progress is not None:
            progress.close()
    raise OSError("the audit's stream ended without a result")


def _print_quality(report: dict) -> None:
    """The report's headline in lines (the whole is in --json, --out and --html)."""
    print(f"subjects: {report['totals']['subjects']}")
    for m, d in report["modalities"].items():
        q = d["quality"]
        print(f"{m}: {d['samples']} samples, mean quality {q.get('mean', '-')}, {d['refused']} refused "
              f"({100 * d['refusal_rate']:.1f}%)" + (f": {', '.join(f'{r} {n}' for r, n in d['refusal_reasons'].items())}"
                                                     if d["refusal_reasons"] else ""))
    miss = report["missing"]
    print(f"short of a modality: {miss['without_face']} without a face, {miss['without_iris']} without an iris, "
          f"{miss['fingers_short_of_ten']} with fewer than ten fingers")
    for peer in report["sync"]:
        print(f"peer {peer['site']}: last sync {peer['lag_s']} s ago, {peer['pending']} changes pending")


def _import(args, stub, md) -> int:
    """``tambua import``: the summary printed, the report written; exit 1 if a record failed."""
    from tambua import importer

    try:
        outcomes, summary = importer.run(stub, md, args.manifest, args.dedup, args.jobs, args.state,
                                         nist=args.nist or (), partition=args.partition,
                                         subject_field=args.subject_field)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.report:
        importer.write_report(outcomes, args.report)
        summary["report"] = str(args.report)
    _print(summary, args.json)
    return 1 if summary["failed"] else 0


def _error(e: grpc.RpcError) -> int:
    from tambua.status import reason_of

    reason = reason_of(e)
    # The code, then the reason where it says more than the code (NOT_FOUND, not NOT_FOUND NOT_FOUND).
    code = e.code().name
    said = f"{code} ({reason})" if reason != code else code
    print(f"error: {said}: {e.details()}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    # Whatever a command writes (stores, keys, backups, certificates) is this user's alone.
    os.umask(0o077)
    p = argparse.ArgumentParser(prog="tambua", description="Tambua biometric matching service.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the service")
    s.add_argument("--config", type=Path)
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir", type=Path)
    s.add_argument("--metrics-port", type=int)
    s.add_argument("--mtls-port", type=int, help="client certificates' port when API keys are on too (mixed mode)")
    s.add_argument("--finger-network", choices=sorted({FINGER_AUTO, *FINGER_NETWORKS}),
                   help="minutiae network (default auto: the one the store's finger templates were made "
                        "with, leader for a store with none; lite is ~4x faster, see the finger model card; "
                        "lite-v2 and lite-v1 only for stores filled with them)")
    s.add_argument("--insecure", action="store_true", default=None,
                   help="plain text, no authentication: local development only")
    s.add_argument("--cluster", metavar="HOST:PORT",
                   help="join the Ray cluster there (started with `ray start`; see the README)")
    s.add_argument("--shards", type=int, help="cluster mode: shards holding the galleries")
    s.add_argument("--replicas", type=int, help="cluster mode: copies of each shard (2: searches survive a node)")
    s.add_argument("--web-port", type=int, help="serve the adjudication pages on this port (default: none)")
    s.add_argument("--keep-images", choices=["none", "cases", "all"],
                   help="sample images kept for adjudication (default cases: held captures only)")

    cl = sub.add_parser("cluster", help="cluster mode: what the Ray cluster holds")
    clsub = cl.add_subparsers(dest="cluster_command", required=True)
    for name, text in (("status", "nodes, shard copies, subjects and resident bytes per copy and node"),
                       ("rebalance", "spread the shard copies over the live nodes (after adding nodes)")):
        cs = clsub.add_parser(name, help=text)
        cs.add_argument("--address", default=os.environ.get("TAMBUA_CLUSTER"),
                        required=not os.environ.get("TAMBUA_CLUSTER"),
                        help="the Ray cluster's HOST:PORT (else $TAMBUA_CLUSTER)")
        cs.add_argument("--json", action="store_true")

    a = sub.add_parser("audit", help="the hash-chained audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="check the chain of the log on this host (exit 1 on any fault)")
    av.add_argument("--data-dir", default=os.environ.get("TAMBUA_DATA_DIR", "tambua-data"))
    av.add_argument("--head", help="SEQ:HASH of a head kept elsewhere: the log must still contain it")
    av.add_argument("--kek-file", help="the store's key-encryption key (else TAMBUA_KEK): the chain is keyed "
                                       "under the store's data key")
    av.add_argument("--log", help="another log file to check (an archived one) with the data directory's key")
    av.add_argument("--unkeyed", action="store_true",
                    help="check a plain SHA-256 chain (a log from before the chain was keyed): proves order, "
                         "not who wrote it")
    av.add_argument("--json", action="store_true")

    b = sub.add_parser("backup", help="consistent online snapshot of the data directory (stays encrypted)")
    b.add_argument("--data-dir", default=os.environ.get("TAMBUA_DATA_DIR", "tambua-data"))
    b.add_argument("--out", required=True, type=Path, help="new folder for the backup")
    b.add_argument("--json", action="store_true")
    r = sub.add_parser("restore", help="restore a backup into an empty data directory")
    r.add_argument("--from", dest="source", required=True, type=Path, help="the backup folder")
    r.add_argument("--data-dir", default=os.environ.get("TAMBUA_DATA_DIR", "tambua-data"))
    r.add_argument("--json", action="store_true")

    d = sub.add_parser("dev-certs", help="a throw-away CA, server and client certificates for trying TLS locally")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--client", action="append", default=[], help="client certificate name; repeatable")
    d.add_argument("--days", type=int, default=30)

    k = sub.add_parser("keys", help="API keys and client certificates (run on the server host)")
    # The store options go before or after the subcommand (`keys --json list` and `keys list
    # --json` alike): declared on both, the subcommand's copies leave alone what was not given.
    store_options = argparse.ArgumentParser(add_help=False)
    for where, unset in ((k, None), (store_options, argparse.SUPPRESS)):
        where.add_argument("--data-dir", default=unset or os.environ.get("TAMBUA_DATA_DIR"),
                           help="the server's data directory (else $TAMBUA_DATA_DIR, else ./tambua-data)")
        where.add_argument("--kek-file", default=unset, help="the store's key-encryption key (else TAMBUA_KEK): "
                                                             "principals are authenticated under the store's data key")
        where.add_argument("--json", action="store_true", default=unset or False)
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser("create", parents=[store_options],
                       help="create an API key, or register a client certificate with --cert")
    kc.add_argument("--name", required=True, help="who holds it: a device, a partner, a person")
    kc.add_argument("--role", action="append", required=True, choices=ROLES, help="repeatable")
    kc.add_argument("--partition", action="append", help="repeatable; default: every partition")
    kc.add_argument("--cert", help="PEM client certificate to register instead of creating a key")
    kc.add_argument("--expires", help="never, a duration (90d, 12h) or a UTC date (2027-06-30); default: the "
                                      "server's key_lifetime_days (0: never)")
    ks.add_parser("list", parents=[store_options], help="list keys and certificates (never their secrets)")
    ks.add_parser("seal", parents=[store_options], help="authenticate principals written before rows carried a MAC (once, after "
                               "checking `keys list`); until then they are refused")
    ks.add_parser("new-kek", parents=[store_options], help="print a new random key-encryption key (64 hex digits) for kek_file")
    kk = ks.add_parser("rotate", parents=[store_options], help="re-wrap the store's data key under a new key-encryption key, online")
    kk.add_argument("--old-kek-file", required=True)
    kk.add_argument("--new-kek-file", required=True)
    kr = ks.add_parser("revoke", parents=[store_options], help="revoke a key or certificate at once")
    kr.add_argument("id")
    kv = ks.add_parser("review", parents=[store_options],
                       help="every active key and certificate by risk: expired, unused, never used, broad grants, admin")
    kv.add_argument("--unused-days", type=float, default=90.0, help="unused this long is a risk (default 90)")
    kp = ks.add_parser("prune", parents=[store_options],
                       help="revoke keys and certificates unused for --unused-days (or never used, and that old)")
    kp.add_argument("--unused-days", type=float, required=True)
    kp.add_argument("--dry-run", action="store_true", help="say what would be revoked; change nothing")
    kt = ks.add_parser("rotate-key", parents=[store_options],
                       help="a new API key for the holder of one; the old one stays valid for --grace, then expires")
    kt.add_argument("id")
    kt.add_argument("--grace", default="7d", help="how long the old key stays valid (90d, 12h, 30m; default 7d)")

    def client(name: str, help_: str, parent=sub):
        c = parent.add_parser(name, help=help_)
        c.add_argument("--address", default=os.environ.get("TAMBUA_ADDRESS", "localhost:50051"),
                       help="server HOST:PORT (default $TAMBUA_ADDRESS or localhost:50051)")
        c.add_argument("--json", action="store_true")
        c.add_argument("--partition", default="")
        c.add_argument("--ca", default=os.environ.get("TAMBUA_CA"), help="server CA (PEM): connect over TLS")
        c.add_argument("--cert", default=os.environ.get("TAMBUA_CERT"), help="client certificate (PEM), mutual TLS")
        c.add_argument("--key", default=os.environ.get("TAMBUA_KEY"), help="client private key (PEM)")
        c.add_argument("--api-key", default=os.environ.get("TAMBUA_API_KEY"), help="API key (default $TAMBUA_API_KEY)")
        return c

    def samples(c):
        c.add_argument("--face", help="face photo")
        c.add_argument("--finger", type=_finger_arg, action="append", metavar="POS=IMG",
                       help="finger image at position POS (1 right thumb ... 10 left little); repeatable")
        c.add_argument("--dpi", type=int, default=0, help="finger scan resolution (default 500)")
        c.add_argument("--iris", type=_iris_arg, action="append", metavar="left|right=IMG",
                       help="near-infrared eye image of the left or right eye; repeatable")

    c = client("enroll", "enrol a subject (deduplicated first)")
    c.add_argument("--subject", required=True)
    samples(c)
    c.add_argument("--force", action="store_true", help="enrol anyway after adjudication")
    c.add_argument("--hold", action="store_true",
                   help="a duplicate opens an adjudication case holding this capture (see `tambua cases`)")
    c.add_argument("--adjudicated", action="append", default=[], metavar="ID",
                   help="with --force: a candidate the adjudicator looked at (repeatable; the candidates "
                        "the server finds are recorded too)")
    c = client("identify", "1:N search")
    samples(c)
    c.add_argument("--max-candidates", type=int, default=0, help="at most this many (default: the server's)")
    c.add_argument("--max-fpir", type=float, default=0.0,
                   help="only candidates at or below this FPIR (default: the server's identify_fpir; "
                        "1 lists every ranked candidate)")
    c = client("get", "a subject's record: templates, when enrolled, adjudication links")
    c.add_argument("--subject", required=True)
    samples(client("extract", "templates and quality measures of samples, nothing stored"))
    c = client("verify", "1:1 against an enrolled subject")
    c.add_argument("--subject", required=True)
    samples(c)
    c = client("audit-read", "read audit entries over gRPC (auditor role)")
    c.add_argument("--after", type=int, default=0, help="entries after this sequence number")
    c.add_argument("--limit", type=int, default=1000)
    c.add_argument("--subject", default="", help="only entries about this subject (also after it was erased)")
    c = client("delete", "delete a subject")
    c.add_argument("--subject", required=True)
    client("stats", "gallery statistics")

    c = client("import", "bulk enrolment from a manifest (CSV or JSON Lines) or ANSI/NIST-ITL files: resumable, "
                         "idempotent, reported")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path,
                        help="subject_id,partition,modality,position,path per sample (paths relative to it)")
    source.add_argument("--nist", type=Path, nargs="+", metavar="FILE_OR_DIR",
                        help="ANSI/NIST-ITL 1-2011 transactions, one subject each (Type-4/14 fingers, WSQ too; "
                             "Type-10 face; Type-17 iris; Type-9 minutiae; Type-99 Tambua templates), into --partition")
    c.add_argument("--subject-field", default="2.015", help="the field that holds a transaction's subject id "
                                                            "(default 2.015)")
    c.add_argument("--report", type=Path, help="every line's outcome and reason: CSV, or JSON for a .json name")
    c.add_argument("--dedup", choices=["hold", "refuse", "skip"], default="hold",
                   help="hold: duplicates become adjudication cases (default); refuse: reported, not stored; "
                        "skip: load without deduplicating, to audit after (admin)")
    c.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="records in flight at once")
    c.add_argument("--state", type=Path, help="the resume file (default: beside the manifest)")

    c = client("audit-duplicates", "the partition's gallery searched against itself: clusters of suspected "
                                   "duplicates (admin)")
    c.add_argument("--fpir", type=float, default=0.0, help="a pair at or below this FPIR ties two subjects "
                                                            "(default: the server's dedup_fpir)")
    c.add_argument("--cases", action="store_true", help="open an adjudication case per cluster")
    c.add_argument("--restart", action="store_true", help="start over instead of going on from the checkpoint an "
                                                          "interrupted audit left")
    c.add_argument("--block", type=int, default=0, help="subjects searched between checkpoints (default 10,000)")
    c.add_argument("--csv", type=Path, help="also write one row per tying pair here")
    c.add_argument("--html", type=Path, help="also write a page of the clusters here")

    c = client("export", "a subject as an ANSI/NIST-ITL transaction and ISO/IEC 19794 records, to leave "
                         "Tambua (admin)")
    c.add_argument("--subject", required=True)
    c.add_argument("--nist", type=Path, help="write the ANSI/NIST-ITL 1-2011 transaction here")
    c.add_argument("--iso", type=Path, metavar="DIR", help="write ISO/IEC 19794 records here (fingers: -2 minutiae; "
                                                           "face -5 and irises -6 where images were kept)")

    c = client("quality-report", "the data-quality report: quality, refused captures, missing modalities, "
                                 "image sizes, duplicates and sync lag per site, partition, operator and day (admin)")
    c.add_argument("--since", type=int, default=0, metavar="UNIX_MS", help="count enrolments and refusals from then")
    c.add_argument("--html", type=Path, help="write the report as a page (plots inside) here")
    c.add_argument("--out", type=Path, help="write the report's JSON here")

    client("doctor", "what needs a person at this site, in plain words: sync lag and pending changes per peer, "
                     "refused bundles, the audit chain, disk, enrolments (admin). Exit 0: nothing; 1: something "
                     "needs action; 2: the server could not be asked")

    cs = sub.add_parser("cases", help="adjudication cases: suspected duplicates a person decides (adjudicator role)")
    csub = cs.add_subparsers(dest="cases_command", required=True)
    c = client("list", "cases, oldest first", csub)
    c.add_argument("--state", choices=["open", "decided", "withdrawn", "any"], default="open")
    c.add_argument("--source", default="", help="only cases from this source (enrol, sync, audit)")
    c.add_argument("--min-age", type=int, default=0, metavar="SECONDS", help="only cases at least this old")
    c.add_argument("--limit", type=int, default=100)
    c.add_argument("--page-token", default="")
    c = client("show", "one case: the held capture's candidates, their scores per sample, attempts, decision", csub)
    c.add_argument("case_id")
    c = client("decide", "decide a case (audited; exactly one decision applies)", csub)
    c.add_argument("case_id")
    verdict = c.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--same", metavar="SUBJECT", help="the capture is this candidate")
    verdict.add_argument("--different", action="store_true", help="a different person: enrol the held subject")
    verdict.add_argument("--recapture", action="store_true", help="cannot tell: withdraw, capture again")
    c.add_argument("--discard", action="store_true", help="with --same: drop the capture instead of attaching it")
    c.add_argument("--reason", required=True, help="why (kept with the decision)")

    sy = sub.add_parser("sync", help="field-site sync: identity, peers, bundles, status")
    ssub = sy.add_subparsers(dest="sync_command", required=True)
    si = ssub.add_parser("identity", help="this site's public identity (created with --site-id)")
    si.add_argument("--data-dir", default=os.environ.get("TAMBUA_DATA_DIR", "tambua-data"))
    si.add_argument("--site-id", help="create the site's keys with this id if it has none")
    si.add_argument("--kek-file", help="the store's key-encryption key (else TAMBUA_KEK): the site's private "
                    "keys are sealed under the store's data key")
    sp = ssub.add_parser("peer", help="configure a peer site")
    sp.add_argument("action", choices=["add"])
    sp.add_argument("identity", type=Path, help="the peer's `tambua sync identity` output (a JSON file)")
    sp.add_argument("--data-dir", default=os.environ.get("TAMBUA_DATA_DIR", "tambua-data"))
    c = client("export", "write the changes a peer has not acknowledged as one signed, encrypted file", ssub)
    c.add_argument("--to", required=True, help="the peer's site id")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--from-seq", type=int, default=0, help="resend from this change (a peer restored from backup)")
    c = client("import", "apply a peer's bundle (or acknowledgement) file", ssub)
    c.add_argument("file", type=Path)
    c.add_argument("--ack-out", type=Path, help="write the acknowledgement to send back here")
    client("status", "per peer: pending changes, last sync, refusals, gaps; flagged enrolments", ssub)
    c = client("push", "online sync: stream the changes a peer has not acknowledged to its server", ssub)
    c.add_argument("--to", required=True, help="the peer's site id")
    c.add_argument("--peer", required=True, help="the peer server's HOST:PORT")
    c.add_argument("--peer-ca", help="the peer server's CA (PEM): TLS")
    c.add_argument("--peer-cert", help="client certificate for the peer (PEM)")
    c.add_argument("--peer-key", help="its private key (PEM)")
    c.add_argument("--peer-api-key", default=os.environ.get("TAMBUA_PEER_API_KEY"))
    c.add_argument("--batch", type=int, default=200, help="changes per bundle on the stream")
    args = p.parse_args(argv)

    if args.command == "serve":
        if argv is None:  # run as a program, not called
            from matcher import memory

            # The galleries scan ~25% faster on huge pages, and glibc reads the setting
            # only at process start (see matcher.memory).
            memory.restart_with_huge_pages()
        from tambua.config import Config
        from tambua.server import serve

        try:
            config = Config.load(args.config, port=args.port, data_dir=args.data_dir,
                                 metrics_port=args.metrics_port, mtls_port=args.mtls_port, insecure=args.insecure,
                                 finger_network=args.finger_network, cluster=args.cluster, shards=args.shards,
                                 replicas=args.replicas, web_port=args.web_port, keep_images=args.keep_images)
        except ValueError as e:
            print(f"error: configuration: {e}", file=sys.stderr)
            return 2
        try:
            serve(config)
        except TambuaError as e:  # a wrong or missing key, a model not built: say so, no traceback
            print(f"error: {e.reason}: {e.message}", file=sys.stderr)
            return 2
        # Stopped in order: requests drained, the store closed, nothing left to save. The
        # interpreter's own teardown (joining library threads, native destructors) once
        # held a stopped server past 60 s in CI, so it is skipped.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.command == "cluster":
        from cluster.client import rebalance, status

        try:
            if args.cluster_command == "rebalance":
                moves = rebalance(args.address)
                print(json.dumps({"moves": moves}, indent=2) if args.json else
                      "\n".join(f"shard {m['shard']} copy {m['copy']}: node {m['from'][:12]} -> {m['to'][:12]}"
                                for m in moves) or "balanced already: nothing moved")
                return 0
            state = status(args.address)
        except TambuaError as e:
            print(f"error: {e.reason}: {e.message}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(state, indent=2, sort_keys=True))
        else:
            for n in state["nodes"]:
                print(f"node {n['node'][:12]} {n['address']} {'alive' if n['alive'] else 'DEAD'}: "
                      f"{n['copies']} shard copies, {n['subjects']} subjects, {n['resident_bytes'] / 2**20:.0f} MiB")
            print(f"{state['subjects']} subjects; shards without a live copy: {state['unserved_shards'] or 'none'}")
        return 1 if state["unserved_shards"] else 0
    if args.command == "keys":
        return _keys(args)
    if args.command == "audit":
        return _audit_verify(args)
    if args.command in ("backup", "restore"):
        return _backup(args)
    if args.command == "sync" and args.sync_command in ("identity", "peer"):
        return _sync_local(args)
    if args.command == "dev-certs":
        from tambua.devpki import DevCA

        ca = DevCA(args.out, days=args.days)
        ca.issue("server", server=True)
        for name in args.client:
            ca.issue(name)
        print(f"wrote {ca.ca_pem}, server.pem/.key and {len(args.client)} client certificates to {args.out} "
              "(development only)")
        return 0

    from tambua.v1 import tambua_pb2 as pb

    stub = _stub(args)
    md = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
    try:
        if args.command == "enroll":
            r = stub.Enroll(pb.EnrollRequest(subject_id=args.subject, samples=_samples(args),
                                             partition=args.partition, force=args.force, hold=args.hold,
                                             adjudicated_candidates=args.adjudicated), timeout=60, metadata=md)
            out = {"outcome": pb.EnrollResponse.Outcome.Name(r.outcome), "subject_id": r.subject_id,
                   "candidates": _candidates(r.candidates), **({"case_id": r.case_id} if r.case_id else {}),
                   **({"clear_match": True} if r.clear_match else {})}
        elif args.command == "identify":
            r = stub.Identify(pb.IdentifyRequest(samples=_samples(args), partition=args.partition,
                                                 max_candidates=args.max_candidates, max_fpir=args.max_fpir),
                              timeout=60, metadata=md)
            out = {"candidates": _candidates(r.candidates)}
        elif args.command == "get":
            r = stub.GetSubject(pb.SubjectRequest(subject_id=args.subject, partition=args.partition),
                                timeout=30, metadata=md)
            out = {"subject_id": r.subject_id, "partition": r.partition, "created_unix_ms": r.created_unix_ms,
                   "linked_subject_ids": list(r.linked_subject_ids), "encounters": r.encounters,
                   "templates": _templates(r.templates)}
        elif args.command == "extract":
            r = stub.Extract(pb.ExtractRequest(samples=_samples(args)), timeout=60, metadata=md)
            out = {"templates": _templates(r.templates)}
        elif args.command == "verify":
            r = stub.Verify(pb.VerifyRequest(subject_id=args.subject, samples=_samples(args),
                                             partition=args.partition), timeout=60, metadata=md)
            out = {"match": r.match, "score": r.score, "fmr": r.fmr}
        elif args.command == "audit-read":
            r = stub.ReadAudit(pb.ReadAuditRequest(after_seq=args.after, limit=args.limit, subject_id=args.subject),
                               timeout=30, metadata=md)
            out = {"head_seq": r.head_seq, "head_hash": r.head_hash, "entries": [
                {"seq": e.seq, "unix_ms": e.unix_ms, "principal_id": e.principal_id,
                 "principal_name": e.principal_name, "rpc": e.rpc, "partition": e.partition,
                 "subject_ids": list(e.subject_ids), "outcome": e.outcome, "hash": e.hash} for e in r.entries]}
        elif args.command == "import":
            return _import(args, stub, md)
        elif args.command == "audit-duplicates":
            r = _run_audit(stub, md, pb.AuditDuplicatesRequest(partition=args.partition, max_fpir=args.fpir,
                                                               open_cases=args.cases, restart=args.restart,
                                                               block=args.block))
            out = {"subjects": r.subjects, "max_fpir": r.max_fpir, "seconds": round(r.seconds, 3), "resumed": r.resumed,
                   "clusters": [{"partition": c.partition, "subject_ids": list(c.subject_ids),
                                 "best_fpir": c.best_fpir,
                                 "pairs": [{"subject_ids": list(p.subject_ids), "score": p.score, "fpir": p.fpir}
                                           for p in c.pairs]} for c in r.clusters],
                   **({"case_ids": list(r.case_ids)} if args.cases else {})}
            from tambua import audit_report

            if args.csv:
                audit_report.write_csv(out, args.csv)
            if args.html:
                audit_report.write_html(out, args.html)
        elif args.command == "export":
            out = _export(args, stub.ExportSubject(pb.SubjectRequest(subject_id=args.subject,
                                                                     partition=args.partition),
                                                   timeout=120, metadata=md))
        elif args.command == "quality-report":
            r = stub.QualityReport(pb.QualityReportRequest(partitions=[args.partition] if args.partition else [],
                                                           since_unix_ms=args.since), timeout=600, metadata=md)
            out = json.loads(r.report_json)
            if args.out:
                args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            if args.html:
                from tambua import quality_report

                quality_report.write_html(out, args.html)
        elif args.command == "doctor":
            out = json.loads(stub.Doctor(pb.DoctorRequest(), timeout=600, metadata=md).report_json)
        elif args.command == "sync":
            out = _sync_rpc(args, stub, md)
        elif args.command == "cases":
            out = _cases_rpc(args, stub, md)
        elif args.command == "delete":
            stub.DeleteSubject(pb.SubjectRequest(subject_id=args.subject, partition=args.partition), timeout=30, metadata=md)
            out = {"deleted": args.subject}
        else:
            r = stub.Stats(pb.StatsRequest(), timeout=30, metadata=md)
            out = {"subjects": r.subjects, "templates_by_model": dict(r.templates_by_model)}
    except grpc.RpcError as e:
        if args.command == "doctor":  # not asked is not healthy: a code of its own
            _error(e)
            return 2
        return _error(e)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "doctor":
        if args.json:
            _print(out, True)
        else:
            _print_doctor(out)
        return 0 if out["ok"] else 1
    if args.command == "cases" and not args.json:
        _print_cases(out)
    elif args.command == "quality-report" and not args.json:
        _print_quality(out)
    else:
        _print(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
