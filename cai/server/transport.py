"""uvicorn's HTTP/1.1 protocol with a deadline for request headers, and an access log
without query strings.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but neither the time a
client takes to send its headers nor a connection that trickles bytes: h11 has no header
timeout of its own, and every received byte cancels uvicorn's keep-alive timer. Here a
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


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline(self.header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request's headers, after keep-alive idling
            self._arm_header_deadline(self.timeout_keep_alive + self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self, seconds: float) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(seconds, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        handle = getattr(self, "_header_deadline", None)
        if handle is not None:
            handle.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(limits: Any) -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` options for a config's ``limits`` (LimitsConfig)."""
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": limits.header_timeout_s})
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
