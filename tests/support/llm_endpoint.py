"""A real HTTP server on 127.0.0.1 that plays an OpenAI-compatible endpoint and misbehaves
on purpose: the far end of the advisor's connection in the fault tests.

``behaviour``: ``ok`` (a chat completion whose content is ``content``), ``hang`` (reads the
request, never answers), ``garbage`` (200 with a body that is not JSON), ``status`` (HTTP
500), ``drop`` (closes the connection without a word), ``half`` (sends half of a promised
body, then closes), ``trickle`` (answers one byte a second); ``delay`` seconds before any answer. Every request body is kept.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LLMEndpoint:
    def __init__(self, behaviour: str = "ok", content: str = '{"vms": []}', delay: float = 0.0) -> None:
        self.behaviour, self.content, self.delay = behaviour, content, delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(n)
                outer.headers.append(dict(self.headers))
                try:
                    outer.requests.append(json.loads(body))
                except ValueError:
                    outer.requests.append({"raw": body})
                outer._answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LLMEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        if self.delay and self._closing.wait(self.delay):
            return
        if b == "hang":
            self._closing.wait(60)
            return
        if b == "drop":
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if b == "status":
            self._send(h, 500, b'{"error": "overloaded"}')
            return
        if b == "garbage":
            self._send(h, 200, b"\x00\xffnot json at all <html>")
            return
        doc = {"id": "x", "object": "chat.completion", "model": "fake",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": self.content}}]}
        body = json.dumps(doc).encode()
        if b == "half":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if b == "trickle":
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for i in range(len(body)):
                if self._closing.wait(1.0):
                    return
                try:
                    h.wfile.write(body[i:i + 1])
                    h.wfile.flush()
                except OSError:
                    return
            return
        self._send(h, 200, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def wait_until(pred, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
