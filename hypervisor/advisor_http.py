"""The advisor's HTTP client: one chat completion from an OpenAI-compatible endpoint.

Every way the endpoint can fail becomes ``AdvisorRejected`` with a typed ``Reason``: no
answer within the deadline (TIMEOUT, over the whole exchange, not per read), refused or
dropped connections (CONNECTION), an error status (HTTP_STATUS), a body that is not a chat
completion (INVALID_JSON). The body is read up to MAX_RESPONSE_BYTES. The API key is
sent in the Authorization header and kept out of every repr, log line and error.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from scheduler.advisor import AdvisorRejected, Reason

from .errors import ConfigError

#: Most bytes of an HTTP answer read (a chat completion of a few hundred tokens is ~2 KiB).
MAX_RESPONSE_BYTES = 256 * 1024
_CHUNK = 16 * 1024


def read_api_key(api_key_file: str | None, api_key_env: str | None) -> str | None:
    """The key from the file or the environment variable the config names (None: no key)."""
    if api_key_file:
        try:
            key = Path(api_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"advisor.api_key_file {api_key_file}: cannot read: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"advisor.api_key_file {api_key_file} is empty")
        return key
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise ConfigError(f"advisor.api_key_env: ${api_key_env} is not set")
        return key
    return None


class EndpointClient:
    def __init__(self, endpoint: str, model: str, *, timeout: float, max_tokens: int,
                 response_format: str = "json_object", api_key: str | None = None) -> None:
        u = urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"advisor.endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint, self.model = endpoint, model
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname, u.port or (443 if self._https else 80)
        self._path = u.path.rstrip("/") + "/chat/completions"
        self.timeout, self.max_tokens, self.response_format = timeout, max_tokens, response_format
        self.__key = api_key
        self._conn: http.client.HTTPConnection | None = None  # the request in flight, for abort()

    def __repr__(self) -> str:  # the key never appears
        return f"EndpointClient({self.endpoint!r}, model={self.model!r}, key={'set' if self.__key else 'none'})"

    def body(self, messages: list[dict], schema: dict) -> dict:
        if self.response_format == "json_schema":
            fmt = {"type": "json_schema", "json_schema": {"name": "advice", "strict": True, "schema": schema}}
        else:
            fmt = {"type": "json_object", "schema": schema}
        return {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                "temperature": 0, "stream": False, "response_format": fmt}

    def complete(self, messages: list[dict], schema: dict) -> str:
        """The assistant message's text; raises AdvisorRejected."""
        deadline = time.monotonic() + self.timeout
        payload = json.dumps(self.body(messages, schema)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        self._conn = conn
        try:
            conn.request("POST", self._path, body=payload, headers=headers)
            self._settimeout(conn, deadline)
            resp = conn.getresponse()
            raw = self._read(conn, resp, deadline)
            status = resp.status
        except TimeoutError:
            raise AdvisorRejected(Reason.TIMEOUT, f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdvisorRejected(Reason.CONNECTION, f"{type(exc).__name__}: {exc}"[:200]) from None
        finally:
            self._conn = None
            conn.close()
        if status != 200:
            raise AdvisorRejected(Reason.HTTP_STATUS, f"HTTP {status}: {raw[:120]!r}")
        return _message_text(raw)

    def abort(self) -> None:
        """End the request in flight now (the daemon is stopping): it fails as CONNECTION."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _settimeout(conn: http.client.HTTPConnection, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if conn.sock is not None:
            conn.sock.settimeout(left)

    def _read(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        parts, n = [], 0
        while True:
            self._settimeout(conn, deadline)  # an endpoint trickling bytes still meets the deadline
            chunk = resp.read1(_CHUNK) if hasattr(resp, "read1") else resp.read(_CHUNK)
            if not chunk:
                if resp.length:  # the connection ended before the promised Content-Length
                    raise http.client.IncompleteRead(b"".join(parts), resp.length)
                break
            n += len(chunk)
            if n > MAX_RESPONSE_BYTES:
                raise AdvisorRejected(Reason.INVALID_JSON, f"answer longer than {MAX_RESPONSE_BYTES} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _message_text(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        text = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AdvisorRejected(Reason.INVALID_JSON, f"not a chat completion: {raw[:120]!r}") from None
    if not isinstance(text, str):
        raise AdvisorRejected(Reason.INVALID_JSON, "the message content is not text")
    return text
