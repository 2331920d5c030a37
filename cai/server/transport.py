"""uvicorn's HTTP/1.1 protocols (httptools, else h11) with a deadline for request headers,
and an access log without query strings.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but neither the time a
client takes to send its headers nor a connection that trickles bytes: neither parser has a
header timeout, and every received byte cancels uvicorn's keep-alive timer. Here a
connection whose headers are not complete within ``header_timeout`` of it opening (or of the
previous response ending) is closed. The body's deadline is the app's (``GuardMiddleware``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol: a connection must deliver each request's headers in
    time (a trickle of bytes does not extend it)."""

    header_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline(self.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            # the next request's headers, after up to the keep-alive idle time
            self._arm_header_deadline(self.timeout_keep_alive + self.header_timeout)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_in()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_header_deadline(self, seconds: float) -> None:
        self._headers_in()
        self._header_deadline = self.loop.call_later(seconds, self._header_deadline_passed)  # type: ignore[attr-defined]

    def _headers_in(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]


class H11HeaderDeadline(_HeaderDeadline, H11Protocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._headers_in()


def _httptools_protocol() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn uses h11 too
        return None

    class HttpToolsHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            self._headers_in()
            super().on_headers_complete()

    return HttpToolsHeaderDeadline


def uvicorn_options(limits: Any) -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` options for a config's ``limits`` (LimitsConfig)."""
    base = _httptools_protocol() or H11HeaderDeadline  # httptools when installed, as uvicorn's "auto"
    protocol = type(base.__name__, (base,), {"header_timeout": limits.header_timeout_s})
    return {"http": protocol, "timeout_keep_alive": limits.keep_alive_s}


class PathOnlyAccessLog(logging.Filter):
    """uvicorn's access log line without the query string (a key sent as ``?api_key=`` must
    not land in the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


@functools.cache
def install_access_log_filter() -> None:
    logging.getLogger("uvicorn.access").addFilter(PathOnlyAccessLog())
