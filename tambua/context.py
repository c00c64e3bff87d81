"""Per-call context shared by the interceptors and the servicer: the request id that every
log line of a call carries (the caller's ``x-request-id``, else a new one). Imports nothing
of the service, so that the authentication interceptor, which answers refused calls before
any servicer runs, can set it too."""

from __future__ import annotations

import contextvars
import logging
import uuid

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def enter(context) -> contextvars.Token | None:
    """Give this call its request id, unless an outer layer of the same call already did.

    Returns:
        the token for :func:`leave`; None when the id was already set.
    """
    if request_id.get() != "-":
        return None
    md = dict(context.invocation_metadata() or ())
    return request_id.set(md.get("x-request-id") or uuid.uuid4().hex[:16])


def leave(token: contextvars.Token | None) -> None:
    """End what :func:`enter` began (nothing when it set nothing)."""
    if token is not None:
        request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True
