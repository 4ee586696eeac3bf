"""Limits on connections that uvicorn does not enforce itself: a deadline for the headers, a deadline for the
body, and a cap on open connections, added to uvicorn's httptools protocol (uvicorn keeps its keep-alive timeout).

uvicorn 0.3x-0.5x arms a timer only between requests (timeout_keep_alive); a connection that sends half its
headers, or a body one byte at a time, is held until the client gives up, and its `limit_concurrency` answers
503 only after the headers have arrived, so it does not bound sockets. `guarded_protocol` returns the protocol
class that does, for `uvicorn.Config(http=...)`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .options import ConnectionLimits

HEADER_TIMEOUT, BODY_TIMEOUT, CONNECTION_LIMIT = "header_timeout", "body_timeout", "connection_limit"
_CLOSE_RESPONSES = {
    HEADER_TIMEOUT: b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s",
    BODY_TIMEOUT: b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s",
    CONNECTION_LIMIT: b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                      b"connection: close\r\ncontent-length: %d\r\n\r\n%s",
}
_CLOSE_MESSAGES = {
    HEADER_TIMEOUT: b'{"error":"the request headers did not arrive within --header-timeout; send the whole request '
                    b'at once"}',
    BODY_TIMEOUT: b'{"error":"the request body did not arrive within --body-timeout; send the whole body at once"}',
    CONNECTION_LIMIT: b'{"error":"the server holds --max-connections open connections; retry after the Retry-After '
                      b'seconds"}',
}


@dataclass
class ConnectionGuard:
    """What every connection of one server shares: its limits, and a callback told why a connection was cut
    (HEADER_TIMEOUT, BODY_TIMEOUT or CONNECTION_LIMIT), for the metrics. Touched only from the event loop."""

    limits: ConnectionLimits
    on_cut: Callable[[str], None] = lambda reason: None
    open_connections: int = 0
    cut: dict[str, int] = field(default_factory=lambda: {HEADER_TIMEOUT: 0, BODY_TIMEOUT: 0, CONNECTION_LIMIT: 0})

    def record_cut(self, reason: str) -> None:
        self.cut[reason] += 1
        self.on_cut(reason)


def guarded_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with `guard`'s limits: give it to `uvicorn.Config(http=...)`."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _counted = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if guard.open_connections >= guard.limits.max_connections:
                self._cut(CONNECTION_LIMIT)
                return
            guard.open_connections += 1
            self._counted = True
            # Headers are timed from the accept: a client that connects and sends nothing is a half-sent request.
            self._arm(guard.limits.header_timeout_s, HEADER_TIMEOUT)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._counted:
                guard.open_connections -= 1
                self._counted = False
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # the next request on a kept-alive connection: time its headers too
                self._arm(guard.limits.header_timeout_s, HEADER_TIMEOUT)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            # The body's deadline runs until on_message_complete, which for a body-less request follows at once.
            self._arm(guard.limits.body_timeout_s, BODY_TIMEOUT)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._cut, reason)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _cut(self, reason: str) -> None:
            """Answer 408 (or 503) unless a response has begun, and close: the app, if it was reading the body,
            sees the client as gone and drops the request before it reaches an engine."""
            self._deadline = None
            if self.transport.is_closing():
                return
            guard.record_cut(reason)
            if self.cycle is None or not self.cycle.response_started:
                message = _CLOSE_MESSAGES[reason]
                self.transport.write(_CLOSE_RESPONSES[reason] % (len(message), message))
            self.transport.close()

    return GuardedHttpToolsProtocol
