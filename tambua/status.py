"""The one mapping from Tambua errors to gRPC status codes.

Every servicer raises :class:`matcher.errors.TambuaError` subclasses (or lets anything
else escape); this module alone decides which status a caller sees. The stable
``reason`` travels as a ``google.rpc.ErrorInfo`` detail (domain ``tambua``) so clients
branch on it without parsing messages. Unknown exceptions become INTERNAL with a generic
message; their traceback goes to the log, never to the caller.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from matcher import errors

DOMAIN = "tambua"

# Most specific first: the first matching class wins.
_CODES: tuple[tuple[type[errors.TambuaError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ModelMissing, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (errors.KeyMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.SequenceGap, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RecordTampered, grpc.StatusCode.DATA_LOSS),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)
INTERNAL_MESSAGE = "internal error; the server log has the details"


def code_of(err: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception."""
    if isinstance(err, errors.TambuaError):
        for cls, code in _CODES:
            if isinstance(err, cls):
                return code
    return grpc.StatusCode.INTERNAL


def abort(context, err: BaseException):
    """End a call with ``err``'s status (raises, as ``context.abort`` does)."""
    context.abort_with_status(rpc_status.to_status(rich_status(err)))


def rich_status(err: BaseException) -> status_pb2.Status:
    """The google.rpc.Status for an exception: code, readable message, ErrorInfo(reason)."""
    code = code_of(err)
    if code is grpc.StatusCode.INTERNAL:
        reason, message, retriable = "INTERNAL", INTERNAL_MESSAGE, False
    else:
        reason, message, retriable = err.reason, err.message, err.retriable  # type: ignore[union-attr]
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata={"retriable": str(retriable).lower()})
    )
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])


def reason_of(e: grpc.RpcError) -> str:
    """A caller's side: the stable reason of a failed call (its ErrorInfo), else the code's name."""
    status = rpc_status.from_call(e)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason:
            return info.reason
    return e.code().name
