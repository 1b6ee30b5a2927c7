"""One gRPC server interceptor for every Tessera call: request ids, API keys, the in-flight limit,
request parsing errors (invalid UTF-8 named by field), error mapping (no traceback ever reaches a
client), metrics and one structured log line per call."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tessera.client.errors import InvalidArgument, ServiceError
from tessera.service.utf8 import invalid_utf8_field

log = logging.getLogger("tessera.service.requests")

SERVICE = "tessera.v1.Tessera"
READ_METHODS = frozenset(
    {"ListCollections", "DescribeCollection", "Get", "Search", "BatchSearch", "Rerank", "Stats"}
)
CODES = {code.name: code for code in grpc.StatusCode}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")  # a client's own id is kept only if it looks like one


@dataclass(frozen=True)
class BadRequest:
    """Stands in for a request message that could not be parsed."""

    message: str
    field: str | None = None


def _deserializer(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    cls = getattr(parse, "__self__", None)
    full_name = cls.DESCRIPTOR.full_name if cls is not None else ""

    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            where = invalid_utf8_field(full_name, data) if full_name else None
            if where:
                return BadRequest("is not valid UTF-8", where)
            return BadRequest(f"the request could not be parsed: {exc}")

    return deserialize


def _check_parsed(request) -> None:
    if isinstance(request, BadRequest):
        raise InvalidArgument(request.message, field=request.field)


class Keys:
    """API keys: read-write keys may call everything, read-only keys only the read methods."""

    def __init__(self, read_write: Iterable[str] = (), read_only: Iterable[str] = ()) -> None:
        self.read_write = [k.encode() for k in read_write if k]
        self.read_only = [k.encode() for k in read_only if k]

    @property
    def enabled(self) -> bool:
        return bool(self.read_write or self.read_only)

    def role(self, presented: str | None) -> str | None:
        if not presented:
            return None
        token = presented.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        raw = token.encode()
        role = None
        # compare against every key (constant time per key) so timing does not reveal which matched
        for key in self.read_write:
            if hmac.compare_digest(raw, key):
                role = "rw"
        for key in self.read_only:
            if hmac.compare_digest(raw, key) and role is None:
                role = "ro"
        return role


class TesseraInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: Keys, max_in_flight: int, metrics=None) -> None:
        self.keys = keys
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.in_flight = 0

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        path = details.method or ""
        if handler is None or not path.startswith(f"/{SERVICE}/"):
            return handler  # health, reflection: no auth, no limits
        method = path.rsplit("/", 1)[1]
        metadata = {k: v for k, v in (details.invocation_metadata or ())}
        deserialize = _deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                return await self._guard(method, metadata, context, lambda: _unary(inner, request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=deserialize, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_s = handler.stream_unary

            async def stream(request_iterator, context):
                return await self._guard(
                    method, metadata, context, lambda: inner_s(_checked(request_iterator), context)
                )

            return grpc.stream_unary_rpc_method_handler(
                stream, request_deserializer=deserialize, response_serializer=handler.response_serializer
            )
        return handler

    def _authorize(self, method: str, metadata: Mapping[str, str]) -> None:
        if not self.keys.enabled:
            return
        role = self.keys.role(metadata.get("authorization"))
        if role is None:
            raise _Abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown API key: send it in the 'authorization' metadata (Bearer <key>)",
            )
        if role == "ro" and method not in READ_METHODS:
            raise _Abort(
                grpc.StatusCode.PERMISSION_DENIED, f"this API key is read-only and cannot call {method}"
            )

    async def _guard(self, method: str, metadata: Mapping[str, str], context, call):
        request_id = metadata.get("x-request-id") or ""
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex[:16]
        trailer = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailer)
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        message = None
        counted = False
        try:
            self._authorize(method, metadata)
            if self.in_flight >= self.max_in_flight:
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.in_flight} requests in flight "
                    f"(limit {self.max_in_flight}); retry later",
                )
            self.in_flight += 1
            counted = True
            if self.metrics is not None:
                self.metrics.in_flight.inc()
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started")
            return await call()
        except _Abort as exc:
            code, message = exc.code, exc.message
        except ServiceError as exc:
            code, message = CODES.get(exc.code, grpc.StatusCode.UNKNOWN), str(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id, "method": method})
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
        finally:
            if counted:
                self.in_flight -= 1
                if self.metrics is not None:
                    self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            if self.metrics is not None:
                self.metrics.observe_request(method, code_name, elapsed)
            log.info(
                "%s %s %.1f ms",
                method,
                code_name,
                elapsed * 1000,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "code": code_name,
                    "duration_ms": round(elapsed * 1000, 3),
                    "peer": context.peer() if hasattr(context, "peer") else None,
                    **({"error": message} if message else {}),
                },
            )
        await context.abort(code, message or "", trailer)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _unary(inner, request, context):
    _check_parsed(request)
    return await inner(request, context)


async def _checked(request_iterator):
    async for request in request_iterator:
        _check_parsed(request)
        yield request
