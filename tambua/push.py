"""Online site sync over gRPC: stream this site's unacknowledged bundles to a peer's
``SyncPush`` and import each acknowledgement as it comes back."""

from __future__ import annotations

from dataclasses import dataclass

from matcher.repository import Flag
from tambua.v1 import tambua_pb2 as pb


@dataclass(frozen=True)
class PushReport:
    """What one online push did: bundles sent, changes the peer applied, and where it ended."""

    bundles: int
    applied: int
    already: int
    acked_seq: int
    flagged: tuple[Flag, ...] = ()


def push(local, remote, to_site: str, batch: int = 200, local_metadata=None, remote_metadata=None,
         on_ack=None) -> PushReport:
    """Online sync: stream this site's unacknowledged changes to a peer over ``SyncPush``.

    ``local`` and ``remote`` are Matcher stubs (this site's server and the peer's). Bundles
    of ``batch`` changes are exported from the local server one after another; each answer
    carries the peer's acknowledgement, imported locally at once, so a stream that breaks
    (raising ``grpc.RpcError``) leaves the local cursor at the last change the peer
    applied, and the next push resumes from there. Re-sent changes are skipped by the
    peer's idempotent apply.

    Args:
        on_ack: called with each import result (tests use it to break a link mid-stream).
    """
    first = local.SyncExport(pb.SyncExportRequest(to_site=to_site, limit=batch), metadata=local_metadata,
                             timeout=300)

    def bundles():
        b = first
        while b.count:
            yield pb.SyncImportRequest(data=b.data)
            b = local.SyncExport(pb.SyncExportRequest(to_site=to_site, limit=batch, from_seq=b.last_seq + 1),
                                 metadata=local_metadata, timeout=300)

    sent = applied = already = 0
    acked = first.first_seq - 1
    flagged: list[Flag] = []
    for answer in remote.SyncPush(bundles(), metadata=remote_metadata):
        local.SyncImport(pb.SyncImportRequest(data=answer.ack), metadata=local_metadata, timeout=60)
        sent, applied, already, acked = sent + 1, applied + answer.applied, already + answer.already, answer.last_seq
        flagged += [Flag(f.subject_id, f.partition, f.kind, f.site, tuple(f.candidates)) for f in answer.flagged]
        if on_ack is not None:
            on_ack(answer)
    return PushReport(sent, applied, already, acked, tuple(flagged))
