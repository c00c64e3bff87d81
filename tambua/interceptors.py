"""The server's interceptor chain, outermost first: :class:`RequestIds` (every log line of a
call carries its id), :class:`CallMetrics` (every call counted by method and final status,
and timed, refused ones included), then authentication, authorisation and audit
(:class:`tambua.auth.AuthInterceptor`), then the servicer, whose one error mapping turns
domain errors into statuses. :func:`rewrap` is how each of them wraps a method's
behaviour, unary or streaming alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from tambua.context import new_request_id, request_id

MATCHER_SERVICE = "/tambua.v1.Matcher/"
# Open to every caller and not counted: liveness probes would drown the call metrics.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def method_name(full: str) -> str | None:
    """``Enroll`` for ``/tambua.v1.Matcher/Enroll``; None for other services."""
    return full[len(MATCHER_SERVICE):] if full.startswith(MATCHER_SERVICE) else None


def rewrap(handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable,
           deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped: ``unary(behaviour)`` for calls that answer
    once, ``stream(behaviour)`` for calls that answer with a stream (their behaviour is a
    generator); ``deserializer`` replaces the request's when given."""
    request = deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), request, handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), request,
                                                    handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), request,
                                                     handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), request, handler.response_serializer)


class RequestIds(grpc.ServerInterceptor):
    """Gives each call its request id (the caller's ``x-request-id``, else a new one) for
    as long as any of its code runs; for a streaming answer, around each step of it (a
    stream's steps may run on different threads)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def unary(behaviour):
            def call(request, context):
                token = request_id.set(new_request_id(context))
                try:
                    return behaviour(request, context)
                finally:
                    request_id.reset(token)
            return call

        def stream(behaviour):
            def call(request, context):
                rid = new_request_id(context)
                token = request_id.set(rid)
                try:
                    answers = behaviour(request, context)
                finally:
                    request_id.reset(token)
                try:
                    while True:
                        token = request_id.set(rid)
                        try:
                            answer = next(answers)
                        except StopIteration:
                            return
                        finally:
                            request_id.reset(token)
                        yield answer
                finally:
                    answers.close()
            return call

        return rewrap(handler, unary, stream)


class CallMetrics(grpc.ServerInterceptor):
    """Counts every call but health checks by method and the status it ended with, and
    times it, calls refused before the servicer included.

    Args:
        calls: a prometheus Counter labelled (method, modality, code).
        latency: a prometheus Histogram labelled (method, modality).

    ``modality``: the request's samples' modalities (``face``, ``finger+iris``, ...; ``none``
    for a request without samples): a bounded label, seven combinations at most.
    """

    def __init__(self, calls, latency) -> None:
        self.calls, self.latency = calls, latency

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or full.startswith(OPEN_SERVICES):
            return handler
        name = method_name(full) or "other"

        def unary(behaviour):
            def call(request, context):
                start, code = time.perf_counter(), None
                try:
                    response = behaviour(request, context)
                    code = grpc.StatusCode.OK
                    return response
                finally:
                    modality = modality_of(request)
                    self.calls.labels(name, modality, (code or final_code(context)).name).inc()
                    self.latency.labels(name, modality).observe(time.perf_counter() - start)
            return call

        def stream(behaviour):
            def call(request, context):
                start, code = time.perf_counter(), None
                try:
                    yield from behaviour(request, context)
                    code = grpc.StatusCode.OK
                except GeneratorExit:  # the client left mid-stream
                    code = grpc.StatusCode.CANCELLED
                    raise
                finally:
                    self.calls.labels(name, "none", (code or final_code(context)).name).inc()
                    self.latency.labels(name, "none").observe(time.perf_counter() - start)
            return call

        return rewrap(handler, unary, stream)


def modality_of(request) -> str:
    """``face``, ``finger+iris``, ...: the modalities of a request's samples (``none``)."""
    names = set()
    for sample in getattr(request, "samples", ()):
        value = sample.DESCRIPTOR.fields_by_name["modality"].enum_type.values_by_number.get(sample.modality)
        names.add(value.name.lower() if value is not None and value.number else "unknown")
    return "+".join(sorted(names)) or "none"


def final_code(context) -> grpc.StatusCode:
    """The status a failed call ended with (what ``abort`` set); INTERNAL for an error
    nothing mapped."""
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.INTERNAL
