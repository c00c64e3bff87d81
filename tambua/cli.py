"""The ``tambua`` command: ``serve`` and client commands (a stable contract for other tooling).

Client commands take ``--address HOST:PORT`` (default ``$TAMBUA_ADDRESS``, else
``localhost:50051``); ``--json`` prints
one JSON object on stdout. Errors exit non-zero with the gRPC status name and the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def _stub(address: str):
    from tambua.v1 import tambua_pb2_grpc

    return tambua_pb2_grpc.MatcherStub(grpc.insecure_channel(address))


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
        out.append(pb.Sample(modality=pb.FACE, position=0, image=Path(args.face).read_bytes()))
    for pos, path in args.finger or []:
        out.append(pb.Sample(modality=pb.FINGER, position=pos, image=Path(path).read_bytes(), dpi=args.dpi))
    for eye, path in args.iris or []:
        out.append(pb.Sample(modality=pb.IRIS, position=eye, image=Path(path).read_bytes()))
    if not out:
        raise SystemExit("error: give --face IMG, --finger POS=IMG and/or --iris left|right=IMG")
    return out


def _candidates(msgs) -> list[dict]:
    return [{"subject_id": c.subject_id, "score": c.score, "fpir": c.fpir} for c in msgs]


def _print(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        for k, v in obj.items():
            print(f"{k}: {v}")


def _error(e: grpc.RpcError) -> int:
    reason = ""
    status = rpc_status.from_call(e)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
    print(f"error: {e.code().name} {reason}: {e.details()}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tambua", description="Tambua biometric matching service.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the service")
    s.add_argument("--config", type=Path)
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir", type=Path)
    s.add_argument("--metrics-port", type=int)

    def client(name: str, help_: str):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--address", default=os.environ.get("TAMBUA_ADDRESS", "localhost:50051"),
                       help="server HOST:PORT (default $TAMBUA_ADDRESS or localhost:50051)")
        c.add_argument("--json", action="store_true")
        c.add_argument("--partition", default="")
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
    samples(client("identify", "1:N search"))
    c = client("verify", "1:1 against an enrolled subject")
    c.add_argument("--subject", required=True)
    samples(c)
    c = client("delete", "delete a subject")
    c.add_argument("--subject", required=True)
    client("stats", "gallery statistics")
    args = p.parse_args(argv)

    if args.command == "serve":
        from tambua.config import Config
        from tambua.server import serve

        serve(Config.load(args.config, port=args.port, data_dir=args.data_dir, metrics_port=args.metrics_port))
        return 0

    from tambua.v1 import tambua_pb2 as pb

    stub = _stub(args.address)
    try:
        if args.command == "enroll":
            r = stub.Enroll(pb.EnrollRequest(subject_id=args.subject, samples=_samples(args),
                                             partition=args.partition, force=args.force), timeout=60)
            out = {"outcome": pb.EnrollResponse.Outcome.Name(r.outcome), "subject_id": r.subject_id,
                   "candidates": _candidates(r.candidates)}
        elif args.command == "identify":
            r = stub.Identify(pb.IdentifyRequest(samples=_samples(args), partition=args.partition), timeout=60)
            out = {"candidates": _candidates(r.candidates)}
        elif args.command == "verify":
            r = stub.Verify(pb.VerifyRequest(subject_id=args.subject, samples=_samples(args),
                                             partition=args.partition), timeout=60)
            out = {"match": r.match, "score": r.score, "fmr": r.fmr}
        elif args.command == "delete":
            stub.DeleteSubject(pb.SubjectRequest(subject_id=args.subject, partition=args.partition), timeout=30)
            out = {"deleted": args.subject}
        else:
            r = stub.Stats(pb.StatsRequest(), timeout=30)
            out = {"subjects": r.subjects, "templates_by_model": dict(r.templates_by_model)}
    except grpc.RpcError as e:
        return _error(e)
    except OSError as e:
        print(f"error: cannot read image: {e.strerror}", file=sys.stderr)
        return 2
    _print(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
