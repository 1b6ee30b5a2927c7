"""Connection settings shared by the sync and async clients: credentials, metadata, retries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import grpc

from tessera.client.errors import ServiceError, error_for

# Calls that may be repeated safely when the server was unreachable (UNAVAILABLE).
IDEMPOTENT = frozenset(
    {
        "ListCollections",
        "DescribeCollection",
        "Get",
        "Search",
        "BatchSearch",
        "Rerank",
        "Stats",
        "Upsert",
        "Delete",
    }
)


def _bytes(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass
class Connection:
    target: str
    api_key: str | None = None
    tls: bool = False
    root_certificates: bytes | str | Path | None = None  # PEM (bytes) or a file; None: system roots
    client_certificate: bytes | str | Path | None = None  # mutual TLS
    client_key: bytes | str | Path | None = None
    timeout: float | None = 30.0  # default per call, seconds
    max_retries: int = 3
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_message_bytes: int = 32 * 1024 * 1024

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.root_certificates or self.client_certificate):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_bytes(self.root_certificates),
            private_key=_bytes(self.client_key),
            certificate_chain=_bytes(self.client_certificate),
        )

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            # reconnect soon after a failure, so that our own retries find a server that came back
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(self.max_backoff_s * 1000)),
        ]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter before retry number ``attempt`` (0-based)."""
        return min(self.backoff_s * 2**attempt, self.max_backoff_s) * random.uniform(0.5, 1.0)

    def retryable(self, method: str, exc: grpc.RpcError, attempt: int) -> bool:
        return (
            method in IDEMPOTENT and exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.max_retries
        )


def map_error(exc: grpc.RpcError) -> ServiceError:
    """The client error for a failed call (request id from the trailing metadata when present)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    request_id = None
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "x-request-id":
                request_id = value
    except Exception:  # noqa: BLE001 - metadata is optional
        pass
    return error_for(code.name if code else "UNKNOWN", details or code.name, request_id)
