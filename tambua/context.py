"""Per-call context shared by the interceptors and the servicer: the request id that every
log line of a call carries (the caller's ``x-request-id``, else a new one), set by
:class:`tambua.interceptors.RequestIds`, the outermost interceptor, so that a call refused
before any servicer runs logs it too. Imports nothing of the service."""

from __future__ import annotations

import contextvars
import logging
import uuid

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id(context) -> str:
    """The id of a call: the caller's ``x-request-id``, else a new random one."""
    md = dict(context.invocation_metadata() or ())
    return md.get("x-request-id") or uuid.uuid4().hex[:16]


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
