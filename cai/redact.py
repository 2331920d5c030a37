"""One scrub for secrets in text that is stored, logged or sent to a client: the API keys
this process was configured with (registered by the backends that hold them, plus the values
of ``*_API_KEY`` / ``*_TOKEN`` environment variables) and anything shaped like a key:
``sk-...``, ``Bearer ...``, ``Basic ...`` and ``user:password@`` in URLs."""

from __future__ import annotations

import os
import re
import threading

REDACTED = "[redacted]"
_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_\-.]{4,}"  # OpenAI-style keys (sk-..., sk-proj-...)
    r"|(?<=\bBearer )[^\s\"',;}]+|(?<=\bBasic )[A-Za-z0-9+/=]{8,}"
    r"|(?<=://)[^/\s:@\"']+:[^/\s@\"']+(?=@)",  # URL credentials
    re.IGNORECASE,
)
_ENV_NAMES = re.compile(r"(_API_KEY|_TOKEN|_SECRET|^CAI_SERVE_AUTH__KEYS)$")
_lock = threading.Lock()
_known: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a configured secret so that ``scrub`` removes it wherever it turns up."""
    if value and len(value) >= 4 and value != "EMPTY":
        with _lock:
            _known.add(value)


def _secrets() -> list[str]:
    env = [v for k, v in os.environ.items() if _ENV_NAMES.search(k) and len(v) >= 4]
    with _lock:
        found = _known | set(env)
    return sorted(found, key=len, reverse=True)  # longest first: a key containing another


def scrub(text: str, limit: int | None = None) -> str:
    """``text`` without secrets; ``limit`` cuts it to that many characters (after scrubbing)."""
    for secret in _secrets():
        text = text.replace(secret, REDACTED)
    text = _SHAPES.sub(REDACTED, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
