"""`cai serve` against hostile clients: slow headers/bodies and idle keep-alive (raw sockets),
authentication before parsing, no schema without a key, keys kept out of the access log and
out of upstream error relays, and '#' inside a key."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest

from cai.models import ScriptedModel
from cai.server.auth import _digest, parse_keys
from cai.server.transport import PathOnlyAccessLog
from tests.test_server_util import serve

ALL = {"authorization": "Bearer sk-all"}
CHAT = {"model": "cai", "messages": [{"role": "user", "content": "Hi"}]}
LIMITS = {
    "limits.max_concurrency": 2,
    "limits.header_timeout_s": 1.0,
    "limits.body_timeout_s": 1.0,
    "limits.keep_alive_s": 1.0,
}


@pytest.fixture(scope="module")
def server():
    with serve(ScriptedModel(lambda messages, params: "fine"), overrides=LIMITS) as s:
        yield s


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes the socket; (closed in time, what it sent)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return True, data
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        return True, data


def test_clients_that_never_send_the_body_hold_no_slot_and_get_408(server):
    stalled = []
    for _ in range(4):  # twice max_concurrency
        sock = _connect(server)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-all\r\n"
            b"content-type: application/json\r\ncontent-length: 400\r\n\r\n"
        )
        stalled.append(sock)
    time.sleep(0.2)
    ok = httpx.post(server.base_url + "/chat/completions", json=CHAT, headers=ALL, timeout=10)
    assert ok.status_code == 200, ok.text  # was 429 while the stalled sockets were open
    for sock in stalled:
        closed, data = _closed_within(sock, 5)
        assert closed and data.startswith(b"HTTP/1.1 408"), data[:80]
        sock.close()


def test_slow_headers_and_idle_keep_alive_are_closed(server):
    slow = _connect(server)
    slow.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
    start = time.monotonic()
    for _ in range(3):  # a trickle of bytes must not extend the deadline
        time.sleep(0.3)
        try:
            slow.sendall(b"x-pad: 1\r\n")
        except OSError:
            break
    closed, _ = _closed_within(slow, 5)
    assert closed and time.monotonic() - start < 4
    idle = _connect(server)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    start = time.monotonic()
    closed, data = _closed_within(idle, 6)
    assert closed and data.startswith(b"HTTP/1.1 200") and time.monotonic() - start < 5


def test_key_is_checked_before_the_body_is_parsed_and_no_schema_without_key(server):
    bad = httpx.post(
        server.base_url + "/chat/completions",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 401, bad.text  # was 400: the body was parsed first
    assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 404
    wrong_route = httpx.post(
        server.base_url + "/reward", content=b"{", timeout=10, headers={"authorization": "Bearer sk-chat"}
    )
    assert wrong_route.status_code == 403


def test_upstream_error_text_never_reaches_the_client():
    def leaky(messages, params):
        from cai.models import TransientModelError

        raise TransientModelError(
            "Error code: 500 - auth header 'Bearer sk-upstream-SECRET' at llm.internal.corp", reason="server_error"
        )

    with serve(ScriptedModel(leaky)) as s:
        r = httpx.post(s.base_url + "/chat/completions", json=CHAT, headers=ALL, timeout=10)
    assert r.status_code == 502
    assert "SECRET" not in r.text and "internal" not in r.text and "server_error" in r.text


def test_access_log_drops_query_strings():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/models?api_key=sk-in-query", "1.1", 401),
        None,
    )
    PathOnlyAccessLog().filter(record)
    assert "sk-in-query" not in record.getMessage() and "/v1/models" in record.getMessage()


def test_hash_inside_a_key_is_part_of_the_key():
    keys = parse_keys("sk-ab#cd\n# a comment line\nsk-ef chat  # a trailing comment\n", "keys.txt")
    assert [k.digest for k in keys] == [_digest("sk-ab#cd"), _digest("sk-ef")]
    assert keys[1].routes == {"chat"}
