"""Bearer API keys. Keys are held as SHA-256 digests and compared in constant time; a key
maps to the routes it may call. Keys never appear in logs, errors or metrics."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from cai.server.config import ROUTES, AuthConfig, ConfigError
from cai.server.errors import APIError

ALL = frozenset(ROUTES)
# a comment starts a line or follows whitespace; a '#' inside a key is part of the key
_COMMENT = re.compile(r"(^|\s)#.*$")


@dataclass(frozen=True)
class _Key:
    digest: bytes
    routes: frozenset[str]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str, where: str, sep: str = "\n") -> list[_Key]:
    """Entries "KEY" (every route) or "KEY route1,route2" ('*' = every route); ``#`` at the start
    of a line or after whitespace begins a comment."""
    keys = []
    for lineno, line in enumerate(text.split(sep), 1):
        line = _COMMENT.sub("", line).strip()
        if not line:
            continue
        key, _, routes_text = line.partition(" ")
        names = {r.strip() for r in routes_text.replace(" ", ",").split(",") if r.strip()}
        unknown = names - ALL - {"*"}
        if unknown:
            # the key itself is never echoed
            raise ConfigError(f"{where}:{lineno}: unknown route(s) {sorted(unknown)}; known: {', '.join(ROUTES)}")
        keys.append(_Key(_digest(key), ALL if not names or "*" in names else frozenset(names)))
    return keys


class KeyStore:
    def __init__(self, keys: list[_Key], *, enabled: bool = True):
        self._keys = keys
        self.enabled = enabled

    @classmethod
    def from_config(cls, auth: AuthConfig) -> KeyStore:
        keys: list[_Key] = []
        if auth.keys_file:
            path = Path(auth.keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read API keys file: {exc.strerror}") from exc
            keys += parse_keys(text, str(path))
        if auth.keys:
            keys += parse_keys(auth.keys, "auth.keys (CAI_SERVE_AUTH__KEYS)", sep=";")
        if not keys and not auth.allow_unauthenticated:
            raise ConfigError("no API keys found; set auth.allow_unauthenticated to run without")
        return cls(keys, enabled=bool(keys))

    def routes_for(self, token: str) -> frozenset[str] | None:
        """Allowed routes for a presented key, None when it matches no key. Every stored key is
        compared, so timing does not reveal which (or whether a prefix) matched."""
        presented = _digest(token)
        found: frozenset[str] | None = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.digest):
                found = key.routes
        return found


def key_problem(keys: KeyStore, auth: AuthConfig, route: str, header: str) -> APIError | None:
    """Why an ``Authorization`` header may not call ``route`` (401/403), None when it may.
    ``route`` "other" (an unknown /v1 path) needs any valid key."""
    if not keys.enabled or (route == "metrics" and auth.public_metrics):
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return APIError(
            401,
            "missing bearer API key (Authorization: Bearer <key>)",
            code="invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )
    routes = keys.routes_for(token.strip())
    if routes is None:
        return APIError(401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"})
    if route != "other" and route not in routes:
        return APIError(403, f"this API key may not call the {route!r} route", code="forbidden")
    return None
